"""Module hooks inside a ``with`` block: the one way gradviz registers them.

The model object is shared between sessions and threads (``st.cache_resource``). Hooks therefore
live only inside the block, under the model's re-entrant ``lock`` (another thread's forward never
runs through them), and are always removed, even when the forward raises.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Mapping

from torch import nn

__all__ = ["forward_hooks"]


@contextmanager
def forward_hooks(model: nn.Module, hooks: Mapping[nn.Module, Callable] | None = None,
                  pre_hooks: Mapping[nn.Module, Callable] | None = None) -> Iterator[None]:
    """Within the block, ``hooks[m]`` runs after every forward of module ``m`` (it may return a
    replacement output) and ``pre_hooks[m]`` before it; ``model.lock`` is held throughout."""
    with getattr(model, "lock", nullcontext()):
        handles = []
        try:
            for module, fn in (hooks or {}).items():
                handles.append(module.register_forward_hook(fn))
            for module, fn in (pre_hooks or {}).items():
                handles.append(module.register_forward_pre_hook(fn))
            yield
        finally:
            for handle in handles:
                handle.remove()
