"""Split scoring over processes/GPUs with ``torchrun`` (torch.distributed).

    torchrun --nproc_per_node=2 -m gradviz score --shard --id mnist --ood letters --out results/

Each rank scores every ``world_size``-th sample of every dataset (its shard), the shards
are gathered on rank 0 and put back in dataset order, so the merged table is identical to a
single-process run. Backend: NCCL when every rank has a GPU (``--device cuda``), else gloo.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from gradviz.data import load_dataset
from gradviz.errors import GradvizError
from gradviz.methods.registry import resolve_methods
from gradviz.models import load_model
from gradviz.scoring import Progress, RunConfig, ScoreResult, invalid_rows, score_dataset
from gradviz.runtime.store import ResultStore


def _init() -> tuple[int, int, bool]:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise GradvizError("--shard needs torchrun (e.g. torchrun --nproc_per_node=2 -m gradviz score --shard ...)")
    created = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("GRADVIZ_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
        created = True
    return dist.get_rank(), dist.get_world_size(), created


def run_sharded(cfg: RunConfig, store: ResultStore | None = None,
                progress: Progress | None = None) -> ScoreResult | None:
    """Score this rank's shard; rank 0 returns the merged result, other ranks return None."""
    from gradviz.analysis.metrics import metrics_table

    rank, world, created = _init()
    try:
        device = cfg.device
        if device.startswith("cuda") and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
        model = load_model(cfg.model, cfg.weights, device)
        infos = resolve_methods(cfg.methods)
        frames: list[pd.DataFrame] = []
        for role, spec in [("id", cfg.id)] + [("ood", s) for s in cfg.ood]:
            data = load_dataset(spec, model.card, limit=cfg.limit, seed=cfg.seed)
            idx = np.arange(rank, len(data), world)
            part = score_dataset(model, data.subset(idx), role, infos, params=cfg.params, fit_set=cfg.fit_set,
                                 seed=cfg.seed, batch_size=cfg.batch_size, store=store,
                                 progress=progress if rank == 0 else None)
            part["index"] = idx
            part["_order"] = len(frames)
            frames.append(part)
        mine = pd.concat(frames, ignore_index=True)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, mine)
        if rank != 0:
            return None
        scores = (pd.concat(gathered, ignore_index=True).sort_values(["_order", "index"], kind="stable")
                  .drop(columns="_order").reset_index(drop=True))
        names = [i.name for i in infos]
        metrics = metrics_table(scores, names) if cfg.ood else pd.DataFrame()
        return ScoreResult(scores, metrics, cfg, invalid_rows(scores, names))
    finally:
        if created:
            dist.destroy_process_group()
