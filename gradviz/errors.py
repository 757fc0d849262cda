"""The project's own error types: every bad input ends in one of these, with a message
a person can act on (pages show it with ``st.error``, the CLI prints it and exits 2)."""


class GradvizError(Exception):
    """Base class: a clear, user-facing error (never a bug)."""


class ImageError(GradvizError):
    """An uploaded or on-disk file is not a usable image (or breaks a limit)."""


class ModelError(GradvizError):
    """A model name, weights file or architecture could not be used."""


class DatasetError(GradvizError):
    """A dataset spec is unknown, empty, offline or outside the allowed roots."""


class MethodError(GradvizError):
    """An uncertainty method name or parameter is invalid."""
