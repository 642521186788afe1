"""The ONLY place that turns an image file into pixels.

Training, evaluation, prediction and the parity check of the ONNX export all call `load_image`, and
the model's `PreprocessingSpec` travels with it (metadata.json and the ONNX metadata_props), so the
three can never disagree. Numeric scaling is not done here: the model takes raw 0..255 pixels and
scales them inside its graph.

Steps, in order: open by content (not by extension) -> first frame -> refuse decompression bombs (our
own MAX_PIXELS limit, checked on the header with a message naming the file; Pillow's process-wide guard,
Image.MAX_IMAGE_PIXELS, is left as the program set it: it is only stepped aside while imgclf decodes)
-> EXIF orientation -> mode to L or RGB (16-bit scaled to 8 bit, transparency composited on
`background`, CMYK/YCbCr/palette converted) -> resize to `image_size` (bilinear, stretched, no crop)
-> uint8 array of shape (height, width, channels).

Only Pillow and NumPy are imported here: the prediction path must not import TensorFlow.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

from imgclf.config import BACKGROUND, MAX_PIXELS
from imgclf.errors import ImageError

_guard_lock = threading.Lock()
_guard_users = 0
_guard_saved = None


@contextlib.contextmanager
def own_pixel_limit():
    """While imgclf opens and decodes a file: Pillow's own decompression-bomb guard stepped aside (it only
    warns up to twice its limit, and raises without naming the file above), our MAX_PIXELS check in
    open_image instead. Pillow's setting is restored as it was when the last decode in flight ends (the
    decoders run in threads, so the save/restore is counted under a lock). Re-entrant."""
    global _guard_users, _guard_saved
    with _guard_lock:
        if _guard_users == 0:
            _guard_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _guard_users += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_users -= 1
            if _guard_users == 0:
                Image.MAX_IMAGE_PIXELS = _guard_saved

#: --resize filters a spec can name (Pillow's); the image is stretched to the size, never cropped
RESAMPLE_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST,
                    "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
#: what every imgclf model takes; older metadata recorded them as spec fields, and nothing else is honoured
INPUT_LAYOUT, COLOR_ORDER = "NHWC", "RGB"


@dataclass(frozen=True)
class PreprocessingSpec:
    """How a file becomes the model's input. Stored with every model and export."""

    image_size: Tuple[int, int]            # (height, width)
    channels: int                          # 1 (grayscale) or 3 (RGB)
    resize: str = "bilinear"               # Pillow resample filter (RESAMPLE_FILTERS); stretched, not cropped
    background: Tuple[int, int, int] = BACKGROUND  # transparent pixels are composited on this colour
    input_range: Tuple[int, int] = (0, 255)  # the model takes raw RGB pixels as float32, NHWC; it scales itself
    jpeg_draft: bool = True                # JPEGs over 2x the size are first shrunk by the decoder (1/2, 1/4, 1/8)

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"preprocessing: channels must be 1 or 3, got {self.channels!r}")
        if self.resize not in RESAMPLE_FILTERS:
            raise ValueError(f"preprocessing: unknown resize filter {self.resize!r} "
                             f"(known: {', '.join(RESAMPLE_FILTERS)})")
        if tuple(self.input_range) != (0, 255):
            raise ValueError(f"preprocessing: input_range {list(self.input_range)} is not supported (0..255 only)")

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.image_size[0], self.image_size[1], self.channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["background"] = list(self.background)
        d["input_range"] = list(self.input_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessingSpec":
        """The spec saved with a model. Raises ValueError for a value this version cannot honour (so a
        model is never run with preprocessing other than the one it was trained with)."""
        for key, only in (("input_layout", INPUT_LAYOUT), ("color_order", COLOR_ORDER)):
            if d.get(key, only) != only:
                raise ValueError(f"preprocessing: {key} {d[key]!r} is not supported ({only} only)")
        return cls(image_size=tuple(d["image_size"]), channels=int(d["channels"]),
                   resize=d.get("resize", "bilinear"), background=tuple(d.get("background", BACKGROUND)),
                   input_range=tuple(d.get("input_range", (0, 255))), jpeg_draft=bool(d.get("jpeg_draft", True)))


GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"}


def is_grayscale_mode(mode: str) -> bool:
    return mode in GRAY_MODES


def _is_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


def open_image(path) -> Image.Image:
    """Open by content and check the header (at most MAX_PIXELS pixels); raise ImageError(path, reason)
    when unusable. Call it inside own_pixel_limit() (the decoders here do)."""
    p = os.fspath(path)
    # No stat before opening (one system call less per image: it shows on folders of small files);
    # the reasons that need one are worked out after a failure.
    try:
        im = Image.open(p)
    except FileNotFoundError:
        raise ImageError(p, "dangling symlink" if os.path.islink(p) else "file not found") from None
    except IsADirectoryError:
        raise ImageError(p, "is a directory") from None
    except PermissionError:
        raise ImageError(p, "permission denied") from None
    except Image.UnidentifiedImageError:
        raise ImageError(p, "empty file" if _is_empty(p) else "not an image Pillow can read") from None
    except OSError as e:
        if e.errno is not None:  # from the file system, not from Pillow's parser
            raise ImageError(p, f"cannot read file ({e.strerror or e})") from None
        raise ImageError(p, f"unreadable image ({e})") from None
    except (ValueError, SyntaxError) as e:
        raise ImageError(p, f"unreadable image ({e})") from None
    except Image.DecompressionBombError as e:  # a caller outside own_pixel_limit(), with Pillow's guard on
        raise ImageError(p, f"too large to decode safely ({e})") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise ImageError(p, f"too large to decode safely ({w}x{h} = {w * h:,} pixels, limit {MAX_PIXELS:,})")
    if w < 1 or h < 1:
        im.close()
        raise ImageError(p, f"invalid size {w}x{h}")
    return im


def _to_mode(im: Image.Image, channels: int, background=BACKGROUND) -> Image.Image:
    """Convert any Pillow mode to L (channels=1) or RGB (channels=3), correctly."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # convert("L") would clip 16-bit values to white: scale to 8 bit first.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255) else 255.0
        if mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        arr = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        im = Image.fromarray(arr, mode="L")
        mode = "L"
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        im = Image.alpha_composite(base, rgba)
    target = "L" if channels == 1 else "RGB"
    if im.mode != target:
        im = im.convert(target)
    return im


# Formats whose EXIF block Pillow puts in `im.info["exif"]` once the image is loaded: without it there is
# no orientation to apply, and exif_transpose (which parses EXIF) is 10-25% of decoding a small PNG.
# TIFF keeps its orientation among its own tags: always ask exif_transpose there.
_EXIF_IN_INFO = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    if im.format in _EXIF_IN_INFO and "exif" not in im.info:
        return im
    return ImageOps.exif_transpose(im)


def _decode(path, channels: int, background, size: Optional[Tuple[int, int]] = None,
            jpeg_draft: bool = False, resample: str = "bilinear", fit: Optional[int] = None) -> np.ndarray:
    """The one decoder: open by content, first frame, (JPEG draft), EXIF orientation, mode -> `channels`
    (alpha on `background`), optional resize to `size` = (height, width) or, with `fit`, a shrink that keeps
    the aspect ratio until the longer side is at most `fit`; uint8 HWC. Raises ImageError."""
    with own_pixel_limit():
        return _decode_open(path, channels, background, size, jpeg_draft, resample, fit)


def _decode_open(path, channels: int, background, size, jpeg_draft: bool, resample: str, fit) -> np.ndarray:
    im = open_image(path)
    try:
        with im:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            if (size or fit) and jpeg_draft and im.format == "JPEG":
                # Let the JPEG decoder scale down by 2/4/8 when the image is much larger than the target.
                im.draft("L" if channels == 1 else "RGB", (size[1] * 2, size[0] * 2) if size else (fit * 2,) * 2)
            im.load()
            im = _apply_exif_orientation(im)
            im = _to_mode(im, channels, background)
            if size and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), RESAMPLE_FILTERS[resample])
            elif fit and max(im.size) > fit:
                im.thumbnail((fit, fit), Image.Resampling.LANCZOS)
            arr = np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = str(e) or type(e).__name__
        prefix = "truncated or corrupt" if "truncated" in reason else "cannot decode"
        raise ImageError(os.fspath(path), f"{prefix}: {reason}") from None
    except MemoryError:
        raise ImageError(os.fspath(path), "out of memory while decoding") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_image(path, spec: PreprocessingSpec) -> np.ndarray:
    """Decode one file fully into a uint8 array of `spec.shape`. Raises ImageError(path, reason)."""
    return _decode(path, spec.channels, spec.background, spec.image_size, spec.jpeg_draft, spec.resize)


def peek(path) -> Tuple[int, int, str, str]:
    """(width, height, mode, format) from the header alone. Raises ImageError."""
    with own_pixel_limit():
        im = open_image(path)
        with im:
            return im.size[0], im.size[1], im.mode, im.format or "?"


def load_full(path, channels: int) -> np.ndarray:
    """Decode at the file's own size (for offline augmentation): the same decoder as `load_image`,
    without the resize."""
    return _decode(path, channels, BACKGROUND)


def load_thumbnail(path, max_side: int = 96) -> np.ndarray:
    """A picture of the file for people (the HTML report): the same decoder as `load_image` (EXIF
    orientation, modes, transparency), shrunk to at most `max_side` px on the longer side with its aspect
    ratio kept (never enlarged); uint8 HWC with 1 channel when the image is grayscale, else 3."""
    arr = _decode(path, 3, BACKGROUND, jpeg_draft=True, fit=max_side)
    if (arr[:, :, 0] == arr[:, :, 1]).all() and (arr[:, :, 1] == arr[:, :, 2]).all():
        return arr[:, :, :1]
    return arr
