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
MAX_CARD_BYTES = 8 * 1024**2  # a card with 100,000 class names fits well within this
# Normalisation the model applies to images in [0, 1]: (x - mean) / std in float32. Within these bounds
# every normalised pixel stays below 1e9 in magnitude (finite, and far from float32's limit).
MAX_ABS_MEAN = 1e4
STD_RANGE = (1e-4, 1e4)
_TEXT_FIELDS = ("name", "architecture", "description")
_OPTIONAL_TEXT_FIELDS = ("training_command", "weights")


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
        path = Path(path)
        if path.stat().st_size > MAX_CARD_BYTES:
            raise ModelError(f"model card {path.name} is larger than {MAX_CARD_BYTES // 1024**2} MiB")
        return cls.from_json_text(path.read_bytes(), path.name)

    @classmethod
    def from_json_text(cls, text: str | bytes, source: str = "model card") -> "ModelCard":
        """A card from JSON text (a file or an upload), checked like :meth:`from_dict`."""
        if len(text) > MAX_CARD_BYTES:
            raise ModelError(f"{source} is larger than {MAX_CARD_BYTES // 1024**2} MiB; a model card is a small JSON file")
        try:
            data = json.loads(text)
        except RecursionError:  # e.g. 100,000 nested brackets: json's parser stops at the recursion limit
            raise ModelError(f"{source}: refused — its JSON is nested too deeply for a model card (an object with "
                             "input_size, mean, std and class_names)") from None
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or a number with too many digits
            raise ModelError(f"{source} is not valid JSON: {str(exc)[:160]}") from None
        try:
            return cls.from_dict(data)
        except TypeError as exc:  # a field of the wrong kind that the dataclass could not take
            raise ModelError(f"{source}: {exc}") from None

    def validate(self) -> "ModelCard":
        """Raise :class:`ModelError` naming the first problem (field types, shape, normalisation, classes);
        return self. Mean and std are checked as the model uses them (float32)."""
        for key in _TEXT_FIELDS:
            if not isinstance(getattr(self, key), str):
                raise ModelError(f"{key} must be text, got {type(getattr(self, key)).__name__}")
        for key in _OPTIONAL_TEXT_FIELDS:
            if not isinstance(getattr(self, key), (str, type(None))):
                raise ModelError(f"{key} must be text or null, got {type(getattr(self, key)).__name__}")
        acc = self.test_accuracy
        if acc is not None and not (_is_number(acc) and math.isfinite(acc) and 0 <= acc <= 100):
            raise ModelError(f"test_accuracy must be null or a number between 0 and 1 (or a percentage), got {acc!r}")
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
            if not (isinstance(values, tuple) and all(_is_number(v) for v in values)):
                raise ModelError(f"{key} must be a list of numbers, got {_short(values)}")
            if len(values) != c:
                raise ModelError(f"{key} has {len(values)} value(s) but the input has {c} channel(s)")
            if not all(math.isfinite(v) for v in values):
                raise ModelError(f"{key} holds a NaN or infinite value")
        if any(v <= 0 for v in self.std):
            raise ModelError(f"std must be positive, got {list(self.std)}")
        _check_normalisation(self.mean, self.std)
        names = self.class_names
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ModelError("class_names must be a non-empty list of non-empty names")
        if len(names) > MAX_CLASSES:
            raise ModelError(f"class_names lists {len(names):,} classes; at most {MAX_CLASSES:,}")
        if not isinstance(self.interpolation, str) or self.interpolation not in INTERPOLATIONS:
            raise ModelError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {_short(self.interpolation)}")
        if not isinstance(self.extra, dict):
            raise ModelError("extra must be a JSON object")
        return self


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(value, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


def _check_normalisation(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Mean and std as the model applies them, in float32 to images in [0, 1]: a std of 1e-46 is 0 in float32
    and a mean of 1e308 is inf, and either turns every normalised pixel into NaN or inf."""
    import numpy as np

    low, high = STD_RANGE
    with np.errstate(all="ignore"):  # 1e308 overflows to inf in the cast: that is what is checked below
        m32 = np.asarray(mean, dtype=np.float64).astype(np.float32)
        s32 = np.asarray(std, dtype=np.float64).astype(np.float32)
        ends = (np.array([[0.0], [1.0]], dtype=np.float32) - m32) / s32
    hint = "give the per-channel values of the training images scaled to [0, 1], e.g. mean 0.485 and std 0.229"
    if not (np.isfinite(m32).all() and (np.abs(m32) <= MAX_ABS_MEAN).all()):
        raise ModelError(f"mean must lie within ±{MAX_ABS_MEAN:g}, got {_short(list(mean))}; {hint}")
    if not (np.isfinite(s32).all() and (s32 >= low).all() and (s32 <= high).all()):
        raise ModelError(f"std must lie between {low:g} and {high:g} (a smaller one is 0 in float32 or blows the "
                         f"inputs up, a larger one flattens them), got {_short(list(std))}; {hint}")
    if not np.isfinite(ends).all():  # cannot happen within the bounds above; kept as the check that matters
        raise ModelError(f"mean {_short(list(mean))} and std {_short(list(std))} do not give finite inputs in float32")


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
