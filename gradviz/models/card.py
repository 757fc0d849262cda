"""The model card: the one source of truth for a model's preprocessing and classes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class ModelCard:
    """What a model expects and what it is.

    Images handed to a :class:`~gradviz.models.GradvizModel` are float tensors in [0, 1]
    of shape (B, *input_size); the model normalises them with ``mean``/``std`` itself.
    """

    name: str
    architecture: str
    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    description: str = ""
    test_accuracy: float | None = None
    training_command: str | None = None
    weights: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.input_size[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelCard":
        data = json.loads(Path(path).read_text())
        data["input_size"] = tuple(data["input_size"])
        data["mean"] = tuple(data["mean"])
        data["std"] = tuple(data["std"])
        return cls(**data)
