"""The model card: the one source of truth for a model's preprocessing and classes."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gradviz.errors import ModelError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
MAX_SIDE = 1024  # pixels per side a card may ask for (bounds the memory of every resized set)
MAX_CLASSES = 100_000


@dataclass
class ModelCard:
    """What a model expects and what it is.

    Images handed to a :class:`~gradviz.models.GradvizModel` are float tensors in [0, 1]
    of shape (B, *input_size); the model normalises them with ``mean``/``std`` itself.
    ``interpolation`` is how images of another size are resized to ``input_size``.
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
    interpolation: str = "bilinear"

    @property
    def channels(self) -> int:
        return int(self.input_size[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        """A card from a mapping (a card JSON), checked: one :class:`ModelError` names what is wrong."""
        if not isinstance(data, dict):
            raise ModelError("a model card must be a JSON object with input_size, mean, std and class_names")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"unknown key(s) in the model card: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        missing = [k for k in ("input_size", "mean", "std", "class_names") if k not in data]
        if missing:
            raise ModelError(f"the model card lacks {', '.join(missing)}")
        data = {"name": "custom", "architecture": "", **data}
        data["input_size"] = tuple(data["input_size"]) if isinstance(data["input_size"], (list, tuple)) else data["input_size"]
        for key in ("mean", "std"):
            if isinstance(data[key], (list, tuple)):
                data[key] = tuple(data[key])
        card = cls(**data)
        card.validate()
        return card

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelCard":
        return cls.from_json_text(Path(path).read_text(), Path(path).name)

    @classmethod
    def from_json_text(cls, text: str | bytes, source: str = "model card") -> "ModelCard":
        """A card from JSON text (a file or an upload), checked like :meth:`from_dict`."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{source} is not valid JSON: {exc}") from None
        try:
            return cls.from_dict(data)
        except TypeError as exc:  # a field of the wrong kind that the dataclass could not take
            raise ModelError(f"{source}: {exc}") from None

    def validate(self) -> "ModelCard":
        """Raise :class:`ModelError` naming the first problem (shape, normalisation, classes); return self."""
        size = self.input_size
        if not (isinstance(size, tuple) and len(size) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
            raise ModelError(f"input_size must be three integers (channels, height, width), got {size!r}")
        c, h, w = size
        if c not in (1, 3):
            raise ModelError(f"input_size: {c} channels; gradviz takes 1 (grey) or 3 (RGB)")
        if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise ModelError(f"input_size: height and width must lie in 1–{MAX_SIDE} pixels, got {h}×{w}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if not (isinstance(values, tuple) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
                raise ModelError(f"{key} must be a list of numbers, got {values!r}")
            if len(values) != c:
                raise ModelError(f"{key} has {len(values)} value(s) but the input has {c} channel(s)")
            if not all(math.isfinite(v) for v in values):
                raise ModelError(f"{key} holds a NaN or infinite value")
        if any(v <= 0 for v in self.std):
            raise ModelError(f"std must be positive, got {list(self.std)}")
        names = self.class_names
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ModelError("class_names must be a non-empty list of non-empty names")
        if len(names) > MAX_CLASSES:
            raise ModelError(f"class_names lists {len(names):,} classes; at most {MAX_CLASSES:,}")
        if self.interpolation not in INTERPOLATIONS:
            raise ModelError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if not isinstance(self.extra, dict):
            raise ModelError("extra must be a JSON object")
        return self


def parse_numbers(text: str, what: str) -> tuple[float, ...]:
    """``"0.485, 0.456, 0.406"`` -> (0.485, 0.456, 0.406); a clear error for anything else."""
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ModelError(f"{what}: expected numbers separated by commas, got {text!r}") from None
    if not values:
        raise ModelError(f"{what}: no numbers given")
    return values


def parse_class_names(text: str) -> list[str]:
    """Class names, one per line or comma-separated (a name may hold spaces)."""
    text = str(text).strip()
    sep = "\n" if "\n" in text else ","
    return [n.strip() for n in text.split(sep) if n.strip()]


def card_from_form(base: ModelCard, input_size: str = "", mean: str = "", std: str = "", class_names: str = "") -> ModelCard:
    """``base`` with the fields a user typed replaced (empty = keep), checked."""
    data = asdict(base)
    if input_size.strip():
        sizes = parse_numbers(input_size.replace("x", ",").replace("×", ","), "input size")
        if len(sizes) == 2:  # "H, W": keep the channels
            sizes = (base.channels, *sizes)
        if len(sizes) != 3 or any(s != int(s) for s in sizes):
            raise ModelError(f"input size: expected 'channels, height, width' (e.g. 1, 28, 28), got {input_size!r}")
        data["input_size"] = tuple(int(s) for s in sizes)
    for key, text in (("mean", mean), ("std", std)):
        if text.strip():
            data[key] = parse_numbers(text, key)
    if class_names.strip():
        data["class_names"] = parse_class_names(class_names)
    channels = data["input_size"][0]
    for key in ("mean", "std"):  # one value for every channel, e.g. a grey card's (0.5,) on an RGB input
        if len(data[key]) == 1 and channels == 3:
            data[key] = data[key] * 3
    return ModelCard.from_dict(data)
