"""Errors a user sees. Each message is one line that names the file or argument and the reason."""


class ImgclfError(Exception):
    """Base class: the CLI prints `error: <message>` and exits with `exit_code`."""

    exit_code = 1


class UsageError(ImgclfError):
    """A bad argument or combination of arguments."""

    exit_code = 2


class WeightsUnavailable(UsageError):
    """Pretrained weights that have to be downloaded cannot be (offline, no cached copy)."""


class DataError(ImgclfError):
    """The dataset cannot be used (missing folder, no images, a single class, ...)."""


class ImageError(ImgclfError):
    """A file we could not use: `.path` and `.reason`. Raised by the decoder, and the one record of a
    skipped file everywhere (scan's problems, the pixel cache, augment, predict's error rows)."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ModelNotFound(ImgclfError):
    """An unknown model name, version or path."""


class ModelError(ImgclfError):
    """A model that exists but cannot be used as saved (e.g. preprocessing this version cannot honour)."""


class ExportError(ImgclfError):
    """ONNX export failed or the exported model disagrees with Keras."""


class QuantizeError(ExportError):
    """Quantization failed, or the int8 file did not pass the agreement check (exit code 1)."""


class Interrupted(ImgclfError):
    """Training was interrupted (Ctrl-C): the run is kept for --resume when an epoch completed."""

    exit_code = 130


class ClusterError(ImgclfError):
    """The cluster failed: a worker is missing, died, or sees other data."""


class GateRefused(ImgclfError):
    """`imgclf models tag --gate`: the candidate did not pass the comparison; the tag is unchanged."""
