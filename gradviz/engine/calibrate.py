"""Which strategy (and chunk size) forms a dense layer's per-sample gradients fastest.

Timed once per layer signature (shapes, dtype, device, job, and the batch rounded up to a power of
two: :func:`batch_bucket`) on the layer's first chunk, inside the first backward that meets it: each
candidate (strategy, chunk) runs up to three times (the first call of a shape pays set-up costs; the
best of the others resists a busy core), charged with what its strategy builds once per layer; the
cheapest for the whole layer serves every later chunk, and every later batch of the same bucket (its
chunk capped at that batch). A batch of one and a batch of 32 are timed apart: the chunks that suit
one image are not those that suit many. A smaller batch for which nothing was timed (a run's last, partial
batch) takes the choice of the nearest larger bucket already timed, its chunk capped: its layers are not
timed again for the one or two images left. A plan clearly slower than the best after its warm-up run
is not timed a third time, its strategy is not tried at other chunk sizes, and a set-up that alone
costs more than the best plan is skipped (estimated from an eighth of the batch).

The table is shared by every thread (guarded by a lock). For reproducible runs and tests,
:meth:`Calibration.forced` fixes the strategy (and chunk size) instead of timing.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from gradviz.engine.reduce import Parts, Totals
from gradviz.errors import GradvizError

__all__ = ["Calibration", "CALIBRATION", "CALIBRATION_MARGIN", "batch_bucket"]

# A plan that costs this many times the best so far after its warm-up run is not timed again;
# a strategy at twice that is not tried with other chunk sizes.
CALIBRATION_MARGIN = 1.3


def batch_bucket(batch: int) -> int:
    """The power of two at or above ``batch`` (1, 2, 4, 8, …): the part of a layer's calibration key that
    says how many samples its backward holds (``batch_bucket(24) == batch_bucket(32) == 32``)."""
    return 1 << max(0, int(batch) - 1).bit_length()


class Calibration:
    """The chosen (strategy, samples per chunk) per layer signature."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._choice: dict[tuple, tuple[str, int]] = {}  # (layer signature, batch bucket) -> (strategy, chunk)
        self._forced: tuple[str, int | None] | None = None

    @staticmethod
    def _key(plan) -> tuple:
        return plan.signature(), batch_bucket(plan.batch)

    def known(self, plan) -> tuple[str, int] | None:
        """The plan that will serve ``plan``'s layer, if already decided (forced or calibrated): the choice for
        its batch's bucket, else (a smaller batch, e.g. a run's last) that of the nearest larger bucket timed."""
        forced = self._forced_plan(plan)
        if forced is not None:
            return forced
        signature, bucket = self._key(plan)
        with self._lock:
            chosen = self._choice.get((signature, bucket))
            if chosen is None:
                larger = [b for s, b in self._choice if s == signature and b > bucket]
                chosen = self._choice[(signature, min(larger))] if larger else None
        return None if chosen is None else (chosen[0], min(chosen[1], plan.batch))

    def reset(self) -> None:
        """Forget every choice (they are timed again on the next call)."""
        with self._lock:
            self._choice.clear()

    def choices(self) -> dict[tuple, tuple[str, int]]:
        with self._lock:
            return dict(self._choice)

    @contextmanager
    def forced(self, strategy: str, samples: int | None = None) -> Iterator[None]:
        """Within the block every dense layer that can use ``strategy`` does, in chunks of ``samples``
        (default: as many as the memory budget allows); nothing is timed or remembered."""
        with self._lock:
            before, self._forced = self._forced, (strategy, samples)
        try:
            yield
        finally:
            with self._lock:
                self._forced = before

    def _forced_plan(self, plan) -> tuple[str, int] | None:
        forced = self._forced
        if forced is None or forced[0] not in plan.candidates:
            return None
        strategy, samples = forced
        return strategy, min(plan.batch, samples) if samples else plan.chunk(strategy)

    def run(self, plan, tick: Callable[[], None]) -> Parts:
        """The layer's partial sums {part: (B,) float64}, chunk by chunk, with its chosen plan."""
        chosen = self.known(plan)
        candidates = plan.plans()
        totals, start = Totals(plan.batch, plan.need), 0
        if chosen is None and len(candidates) > 1:
            chosen, first = self._calibrate(plan, candidates)
            totals.put(first)
            start = chosen[1]
            tick()
        strategy, step = chosen or candidates[0]
        if strategy not in plan.candidates:
            raise GradvizError(f"strategy {strategy!r} cannot serve this layer; candidates: {plan.candidates}")
        buf = plan.buffer(strategy, step)
        for i in range(start, plan.batch, step):
            totals.put(plan.parts(strategy, slice(i, i + step), buf))
            tick()
        layer_only = plan.cheap if strategy in ("bmm", "conv") else set()
        result = totals.result(plan.layer_parts(strategy), layer_only)
        plan.finish(strategy)
        return result

    def _calibrate(self, plan, candidates: list[tuple[str, int]]) -> tuple[tuple[str, int], Parts]:
        """Time the candidates on the first chunk; remember and return the best with its chunk's parts."""
        best_cost, best_parts, best = float("inf"), None, candidates[0]
        setup: dict[str, float | None] = {}
        tried: dict[str, float] = {}
        for cand in candidates:
            name, step = cand
            if name not in setup:  # a set-up that alone costs more than the best plan: skip it
                skip = best_cost < float("inf") and plan.setup_estimate(name) > CALIBRATION_MARGIN * best_cost
                t0 = time.perf_counter()
                if not skip:
                    plan.prepare(name)
                setup[name] = None if skip else time.perf_counter() - t0
            if setup[name] is None or tried.get(name, 0.0) > 2 * CALIBRATION_MARGIN * best_cost:
                continue  # another chunk size seldom makes up for that much
            sl, buf = slice(0, step), plan.buffer(name, step)
            rate, parts = float("inf"), None
            for run in range(3):
                t0 = time.perf_counter()
                parts = plan.parts(name, sl, buf)
                rate = min(rate, (time.perf_counter() - t0) / step)
                if run and setup[name] + rate * plan.batch > CALIBRATION_MARGIN * best_cost:
                    break  # clearly slower after its warm-up run: no third run
            cost = setup[name] + rate * plan.batch
            tried[name] = min(tried.get(name, float("inf")), cost)
            if cost < best_cost:
                best_cost, best_parts, best = cost, parts, cand
        with self._lock:
            self._choice[self._key(plan)] = best
        return best, best_parts


CALIBRATION = Calibration()
