"""Which plan computes each parameter group's per-sample gradient: the coverage report.

``coverage(model)`` runs one captured forward of one sample and lists, per parameter group in forward
order, its parameters, how many entries its gradient has, and the plan(s) of the uses that reach
it — ``conv2d: direct``, ``linear: bmm``, ``layer_norm``, ``broadcast (add)``, ``generic (matmul,
vmap)`` ... Parameters that the forward never reaches have gradient 0 (``unused``); parameters the
capture cannot see although the output depends on them are ``NOT COVERED`` (and the engine refuses
to report statistics for them). The CLI prints it (``gradviz layers --coverage``), the Layer
profiles page shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gradviz.engine.gradient_pass import GradientPass
from gradviz.engine.plans import Job
from gradviz.errors import GradvizError

__all__ = ["Coverage", "coverage"]


@dataclass
class Coverage:
    """The coverage report: one row per parameter group (forward order)."""

    rows: list[dict]

    @property
    def total(self) -> int:
        return sum(r["entries"] for r in self.rows)

    @property
    def covered(self) -> int:
        return sum(r["entries"] for r in self.rows if r["status"] != "NOT COVERED")

    @property
    def fraction(self) -> float:
        return self.covered / self.total if self.total else 1.0

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["group", "parameters", "entries", "kind", "path", "status"])

    def check(self) -> "Coverage":
        """Self if every parameter is covered, else a clear error naming what is not."""
        missing = [r["group"] for r in self.rows if r["status"] == "NOT COVERED"]
        if missing:
            raise GradvizError(f"per-sample gradients cannot be computed for {len(missing)} parameter group(s): "
                               f"{', '.join(missing[:8])}")
        return self

    def __str__(self) -> str:
        width = max([5] + [len(r["group"]) for r in self.rows])
        lines = [f"{'group':<{width}} {'entries':>10}  {'kind':<22} path"]
        for r in self.rows:
            lines.append(f"{r['group']:<{width}} {r['entries']:>10,}  {r['kind'][:22]:<22} {r['path']}"
                         + ("" if r["status"] == "covered" else f"  [{r['status']}]"))
        lines.append(f"{self.covered:,} of {self.total:,} parameters covered ({100 * self.fraction:.1f} %)")
        return "\n".join(lines)


def coverage(model: nn.Module, x: torch.Tensor | None = None, fold_bn: bool | None = None) -> Coverage:
    """The coverage report of ``model`` (probe input: ``x[:1]``, or a blank image of the model card's size)."""
    if x is None:
        card = getattr(model, "card", None)
        if card is None:
            raise GradvizError("coverage needs an example input x for a model without a card")
        param = next(model.parameters())
        x = torch.zeros(1, *card.input_size, dtype=param.dtype, device=param.device)
    gp = GradientPass(model, x[:1], fold_bn=fold_bn)
    plans = gp.plans(Job(("l1",), None, None))
    missing = set(gp.uncovered())
    mixed = gp.layout_violations()
    rows = []
    for group in gp.groups.values():
        uses = [gp.uses[i] for i in group.uses]
        kinds = list(dict.fromkeys(plans[u.index].kind for u in uses))
        paths = list(dict.fromkeys(plans[u.index].describe() for u in uses))
        names = [r.name for r in group.refs]
        if any(n in missing for n in names) or any(i in mixed for i in group.uses):
            status = "NOT COVERED"
        elif not uses:
            status = "unused"
        else:
            status = "covered"
        rows.append({"group": group.name, "parameters": ", ".join(r.attr for r in group.refs),
                     "entries": group.numel, "kind": " + ".join(kinds) or "-", "path": "; ".join(paths) or "-",
                     "status": status})
    return Coverage(rows)
