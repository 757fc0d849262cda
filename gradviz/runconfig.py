"""The run configuration: everything that determines a scores table, validated in one place.

:class:`RunConfig` is what the dashboard's sidebar builds, what ``config.json`` exports hold and
what ``python -m gradviz score --config`` replays. :meth:`RunConfig.validate` checks every field
once, before anything is loaded, scored or cached, and reports every problem in one line that
names the field (``limit: expected a positive whole number up to 1,000,000, or null, got a string "fifty"``):

| field        | accepted                                                                    |
|--------------|-----------------------------------------------------------------------------|
| model        | a model name (``mnist-cnn``, ``torchvision:<arch>``)                        |
| weights      | null or a file path                                                         |
| id, fit_set  | one dataset spec                                                            |
| ood          | a list of dataset specs, or one spec as a string (``"letters"``)           |
| methods      | ``"all"``, a list of method names, or one comma-separated string            |
| limit        | null or a positive whole number up to 1,000,000 (12.0 is 12; 12.7, NaN, 1e18 are errors) |
| seed         | a whole number in [0, 2**32)                                                |
| device       | ``cpu``, ``cuda``, ``cuda:N`` or ``mps``                                    |
| batch_size   | null (the memory planner chooses) or a whole number in [1, 65536]: an upper bound |
| params       | {method: {parameter: value}}; methods and parameters known, values in range |

Unknown fields, unknown methods (in ``methods`` or ``params``), unknown dataset kinds and
``upload:`` specs (images uploaded in the dashboard, which a file cannot carry) are errors.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Collection

from gradviz.errors import GradvizError, MethodError

__all__ = ["RunConfig", "ConfigError", "MAX_CONFIG_BYTES", "MAX_LIMIT", "MAX_BATCH", "MAX_SEED"]

MAX_CONFIG_BYTES = 1_000_000
MAX_BATCH = 65_536
MAX_LIMIT = 1_000_000  # samples per set: far beyond what one run scores; a limit of 1e18 is a typo, not a request
MAX_SEED = 2**32 - 1
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d{1,2})?)$")


class ConfigError(GradvizError):
    """A run configuration with wrong fields (the message names each one)."""


_LINE_BREAKS = {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}


def _show(value: Any, n: int = 60) -> str:
    """``value`` as JSON would spell it (null, true, "fifty"), cut to ``n`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    text = text.translate(_LINE_BREAKS)  # JSON keeps these raw; each would split the one-line message
    return text if len(text) <= n else text[: n - 1] + "…"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (bools and non-integral floats are not)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


@dataclass
class RunConfig:
    """Everything that determines a result; JSON round-trips it, and the CLI replays it."""

    model: str = "mnist-cnn"
    weights: str | None = None
    id: str = "mnist"
    ood: list[str] = field(default_factory=lambda: ["letters", "noise-uniform", "corrupt:gaussian_noise:5"])
    methods: list[str] | str = "all"
    limit: int | None = 1000
    seed: int = 0
    device: str = "cpu"
    batch_size: int | None = None  # an upper bound; the memory planner (gradviz.runtime.budget) chooses each pass's batch
    fit_set: str = "mnist:train"
    params: dict[str, dict] = field(default_factory=dict)

    def method_names(self) -> list[str]:
        from gradviz.methods.registry import resolve_methods

        return [m.name for m in resolve_methods(self.methods)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def replayable(self) -> tuple["RunConfig", list[str]]:
        """(this config without the sets a file cannot carry — images uploaded in the dashboard —, those specs).

        What the dashboard exports as ``config.json``: the CLI replays it on the named datasets;
        uploaded images are not part of it (the download button says so)."""
        from gradviz.data import UPLOAD_PREFIX

        dropped = [s for s in self.ood if isinstance(s, str) and s.partition(":")[0] == UPLOAD_PREFIX]
        return replace(self, ood=[s for s in self.ood if s not in dropped], params=dict(self.params)), dropped

    @classmethod
    def from_dict(cls, data: Any) -> "RunConfig":
        """A validated config from parsed JSON (a dict); :class:`ConfigError` names every bad field."""
        if not isinstance(data, dict):
            raise ConfigError(f"a run configuration must be a JSON object with fields such as "
                              f"{', '.join(f.name for f in fields(cls)[:5])}; got {_kind(data)}"
                              + (f" ({_show(data)})" if data is not None else ""))
        known = {f.name for f in fields(cls)}
        unknown = [str(k) for k in data if k not in known]
        if unknown:
            raise ConfigError(f"unknown field(s) in run configuration: {', '.join(sorted(map(_show, unknown)))}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**data).validate()

    @classmethod
    def from_json(cls, text: str | bytes) -> "RunConfig":
        """Parse and validate a JSON run configuration (as the dashboard exports it)."""
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError(f"run configuration is {len(text):,} bytes; at most {MAX_CONFIG_BYTES:,}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"run configuration is not valid JSON: {exc}") from None
        except (RecursionError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"run configuration cannot be read as JSON ({type(exc).__name__})") from None
        return cls.from_dict(data)

    def validate(self, provided: Collection[str] = ()) -> "RunConfig":
        """Check every field (module doc) and normalise a few spellings in place; returns self.

        ``provided``: dataset specs the caller supplies already loaded (uploads), not looked up by name.
        Raises :class:`ConfigError` listing every problem, each prefixed by its field.
        """
        problems: list[str] = []

        def bad(name: str, expected: str, value: Any) -> None:
            problems.append(f"{name}: expected {expected}, got {_kind(value)}" + (f" {_show(value)}" if value is not None else ""))

        for name in ("model", "id", "fit_set"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                bad(name, "a non-empty string", value)
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights.strip()):
            bad("weights", "null or a file path", self.weights)
        if isinstance(self.ood, str):
            self.ood = [self.ood] if self.ood.strip() else []  # one set, not its characters
        if not isinstance(self.ood, list) or not all(isinstance(s, str) and s.strip() for s in self.ood):
            bad("ood", "a list of dataset specs (or one spec as a string)", self.ood)
        elif len(set(self.ood)) != len(self.ood):  # (hashable: every entry is a str here)
            problems.append(f"ood: lists a set twice ({_show(sorted({s for s in self.ood if self.ood.count(s) > 1}))})")
        ood = self.ood if isinstance(self.ood, list) else []
        for name, value in (("id", self.id), ("fit_set", self.fit_set), *(("ood", s) for s in ood)):
            if isinstance(value, str) and value.strip() and value not in provided:
                problem = _spec_problem(value)
                if problem:
                    problems.append(f"{name}: {problem}")
        problems += self._check_methods()
        if self.limit is not None:
            limit = _whole(self.limit)
            if limit is None or not 1 <= limit <= MAX_LIMIT:
                bad("limit", f"a positive whole number up to {MAX_LIMIT:,}, or null", self.limit)
            else:
                self.limit = limit
        seed = _whole(self.seed)
        if seed is None or not 0 <= seed <= MAX_SEED:
            bad("seed", f"a whole number from 0 to {MAX_SEED}", self.seed)
        else:
            self.seed = seed
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            bad("device", "cpu, cuda, cuda:N or mps", self.device)
        if self.batch_size is not None:
            batch = _whole(self.batch_size)
            if batch is None or not 1 <= batch <= MAX_BATCH:
                bad("batch_size", f"null or a whole number from 1 to {MAX_BATCH:,}", self.batch_size)
            else:
                self.batch_size = batch
        if problems:
            raise ConfigError("invalid run configuration: " + "; ".join(problems))
        return self

    def _check_methods(self) -> list[str]:
        from gradviz.methods.registry import get_method, resolve_methods

        problems = []
        methods = self.methods
        if isinstance(methods, list) and methods and all(isinstance(m, str) for m in methods):
            methods = [m.strip() for m in methods]
        if not (isinstance(methods, str) or (isinstance(methods, list) and all(isinstance(m, str) for m in methods))):
            problems.append(f"methods: expected \"all\", a list of method names or a comma-separated string, got "
                            f"{_kind(methods)} {_show(methods)}")
        else:
            try:
                resolve_methods(methods)
                self.methods = methods
            except MethodError as exc:
                problems.append(f"methods: {exc}")
        if not isinstance(self.params, dict):
            problems.append(f"params: expected an object {{method: {{parameter: value}}}}, got {_kind(self.params)} "
                            f"{_show(self.params)}")
            return problems
        for name, values in self.params.items():
            try:
                info = get_method(name)
            except MethodError as exc:
                problems.append(f"params: {exc}")
                continue
            if not isinstance(values, dict):
                problems.append(f"params.{name}: expected an object {{parameter: value}}, got {_kind(values)} "
                                f"{_show(values)}")
                continue
            try:
                info.create(**{str(k): v for k, v in values.items()})
            except MethodError as exc:
                problems.append(f"params.{name}: {exc}")
        return problems


def _spec_problem(spec: str) -> str:
    from gradviz.data import check_spec

    try:
        return check_spec(spec)
    except GradvizError as exc:
        return str(exc)
