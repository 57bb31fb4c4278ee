"""Expected, user-facing errors: each carries one clear message and never needs a traceback."""


class VlassistError(Exception):
    """Base class for errors whose message is meant for the user as is."""


class ConfigError(VlassistError):
    """An environment variable or option holds a value that cannot be used."""


class ImageError(VlassistError):
    """An uploaded file cannot be used as an image."""


class ModelNotFoundError(VlassistError):
    """The model folder is missing, incomplete or not a supported checkpoint."""


class StorageError(VlassistError):
    """The history folder cannot be read or written (read-only, full, damaged or busy)."""


class OptionError(VlassistError):
    """A generation option cannot be used with this model; `param` names the request field it came from."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def error_line(exc: BaseException) -> str:
    """An error's first line (at most 300 characters) for stats and stored answers; its type when it has none."""
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
