"""Image decoding and normalisation: files to 8-bit arrays, any array to the model's 48x48 gray input.

Only numpy and OpenCV. File I/O goes through ``np.fromfile``/``cv2.imdecode`` and
``cv2.imencode(...).tofile`` so that non-ASCII paths work on every platform.
"""
from __future__ import annotations

import errno
import io
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.choices import DEFAULT_MAX_PIXELS
from fer_runtime.decoder_log import quiet_decoders
from fer_runtime.errors import ImageTooLargeError, InvalidImageError, last_line
from fer_runtime.labels import IMAGE_SIZE

# Suffixes the CLI picks up from folders and globs (lower case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# ANYDEPTH keeps 16-bit data (we scale it ourselves), ANYCOLOR keeps gray as gray and drops alpha;
# unlike IMREAD_UNCHANGED this also applies the EXIF orientation of photos.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def is_image_path(path: str | PathLike[str]) -> bool:
    """True if the file name has one of the supported image suffixes."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _round_uint8(f: np.ndarray) -> np.ndarray:
    """Float 0..255 values to the nearest uint8 (the one rounding rule of every 8-bit conversion here)."""
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as uint8 0..255 with the same channels (16-bit is scaled, floats in 0..1 are stretched)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:  # a photo-sized 16-bit image: no float copies of the whole of it
        return _uint16_to_uint8(image)
    return _round_uint8(_to_float255(image))


def _uint16_to_uint8(image: np.ndarray, rows: int = 256) -> np.ndarray:
    """``rint(x * 255 / 65535)`` exactly (x / 257 is never halfway between integers), in strips of ``rows`` rows
    so that the extra memory is a strip's, not the image's."""
    out = np.empty(image.shape, np.uint8)
    for i in range(0, max(len(image), 1), rows):
        strip = image[i:i + rows].astype(np.uint32)
        strip += 128
        strip //= 257
        out[i:i + rows] = strip
    return out


def read_image(path: str | PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               quiet: bool = True) -> np.ndarray:
    """Decode an image file to uint8: HxW (gray) or HxWx3 (BGR).

    16-bit images are scaled to 8 bit, alpha is dropped, EXIF orientation is applied. An image whose
    header declares more than ``max_pixels`` pixels (None: no limit of ours) is refused before it is
    decoded. ``quiet`` keeps OpenCV's and the codecs' own messages off stderr
    (see :mod:`fer_runtime.decoder_log`). Raises :class:`InvalidImageError` for anything that is not a
    readable image (:class:`ImageTooLargeError` for one above the limit); never blocks on a FIFO.
    """
    return decode_image(_read_bytes(Path(path)), max_pixels=max_pixels, quiet=quiet)


def decode_image(data: bytes | np.ndarray, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 quiet: bool = True) -> np.ndarray:
    """Decode the bytes of an image file as :func:`read_image` does."""
    raw = bytes(data) if not isinstance(data, (bytes, np.ndarray)) else data
    buf = np.frombuffer(raw, np.uint8) if isinstance(raw, bytes) else np.ascontiguousarray(raw, np.uint8).ravel()
    if buf.size == 0:
        raise InvalidImageError("not a readable image (empty file)")
    check_pixel_limit(raw if isinstance(raw, bytes) else buf.tobytes(), max_pixels)
    try:
        with quiet_decoders(quiet):
            image = cv2.imdecode(buf, _DECODE_FLAGS)
    except cv2.error as e:  # e.g. a header promising more pixels than OpenCV allows
        raise InvalidImageError(f"not a readable image ({last_line(e)})") from None
    if image is None or image.size == 0:
        raise InvalidImageError("not a readable image (unknown format, truncated or corrupt)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:  # some decoders ignore ANYCOLOR's alpha drop
        image = image[:, :, :3]
    return to_uint8(image)


def header_size(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int] | None:
    """(width, height) from the image header alone (Pillow reads the header, not the pixels); None if unknown.

    Raises :class:`ImageTooLargeError` if Pillow itself refuses the size (more than
    2 x ``PIL.Image.MAX_IMAGE_PIXELS``, its decompression-bomb limit) and ``max_pixels`` does not go above it.
    """
    from PIL import Image

    try:
        with _pillow_limit(max_pixels), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # only a probe: its bomb and corrupt-EXIF warnings are noise here
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError as e:
        reason = str(e).split(", could be")[0]  # "Image size (N pixels) exceeds limit of M pixels"
        raise ImageTooLargeError(f"image too large: {reason} (Pillow's decompression-bomb limit, "
                                 "2 x PIL.Image.MAX_IMAGE_PIXELS)") from None
    except Exception:  # anything Pillow cannot identify is left to OpenCV, which refuses > 2^30 pixels itself
        return None
    return int(w), int(h)


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _pillow_limit(max_pixels: int | None) -> Iterator[None]:
    """Pillow's bomb check off while a header is probed for a ``max_pixels`` above its limit (ours applies)."""
    from PIL import Image

    if max_pixels is not None and max_pixels <= DEFAULT_MAX_PIXELS:
        yield
        return
    with _PILLOW_LIMIT:  # a module global: one raised probe at a time, and put back after it
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def check_pixel_limit(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Raise :class:`ImageTooLargeError` if the header of ``data`` declares more than ``max_pixels`` pixels."""
    if max_pixels is None:
        return
    size = header_size(data, max_pixels)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(f"image too large: {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, "
                                 f"the limit is {max_pixels:,} (raise it with --max-pixels / max_pixels=)")


def _read_bytes(p: Path) -> bytes:
    """The file's bytes; a typed error for a missing file, a dangling link, a folder, a FIFO or a device."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise InvalidImageError(f"{'dangling symbolic link' if p.is_symlink() else 'no such file'}: {p}") from None
    except IsADirectoryError:
        raise InvalidImageError(f"is a directory: {p}") from None
    except PermissionError:
        raise InvalidImageError(f"permission denied: {p}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InvalidImageError(f"symbolic link loop: {p}") from None
        raise InvalidImageError(f"cannot read file: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise InvalidImageError(f"is a directory: {p}")
        raise InvalidImageError(f"not a regular file (a FIFO, socket or device): {p}")
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read()
        except OSError as e:
            raise InvalidImageError(f"cannot read file: {e.strerror or e}") from None


def write_image(path: str | PathLike[str], image: np.ndarray) -> None:
    """Encode ``image`` by the suffix of ``path`` and write it atomically (non-ASCII paths work): a failed write
    leaves what was at ``path`` before."""
    from fer_runtime.atomic import atomic_write

    p = Path(path)
    ok, buf = cv2.imencode(p.suffix or ".png", image)
    if not ok:
        raise InvalidImageError(f"cannot encode image as {p.suffix or '.png'}")
    atomic_write(p, buf.tobytes())


def _checked_shape(image: np.ndarray) -> np.ndarray:
    """``image`` as an array of a supported, non-empty shape (HxWx1 as HxW); else InvalidImageError."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise InvalidImageError(f"expected an HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA) image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"empty image of shape {image.shape}")
    return image


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Any supported image (HxW, HxWx1, BGR, BGRA; any dtype :func:`to_uint8` takes) as uint8 HxWx3 BGR."""
    img = to_uint8(_checked_shape(image))
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR) if img.shape[2] == 4 else img


def _to_float255(image: np.ndarray) -> np.ndarray:
    """Any supported dtype to float32 on the 0..255 scale (channels unchanged)."""
    dt = image.dtype
    if dt == np.uint8:
        return image.astype(np.float32)
    if dt == np.uint16:
        return image.astype(np.float32) * np.float32(255.0 / 65535.0)
    if dt == np.bool_:
        return image.astype(np.float32) * np.float32(255.0)
    if np.issubdtype(dt, np.integer):
        lo, hi = int(image.min()), int(image.max())
        if lo < 0 or hi > 255:
            raise InvalidImageError(f"integer image of dtype {dt} has values {lo}..{hi}; expected 0..255 "
                                    "(or pass uint16 / float data)")
        return image.astype(np.float32)
    if np.issubdtype(dt, np.floating):
        if not np.isfinite(image).all():
            raise InvalidImageError("float image contains NaN or infinity")
        # Floats whose maximum is <= 1 in float32 are taken as 0..1 (so 1 + 1e-16 from float64 rounding still is),
        # anything else as 0..255. Clipped before the cast, so a float64 beyond float32's range is white, not inf.
        unit = bool(np.float32(min(float(image.max(initial=0.0)), 2.0)) <= 1.0)
        f = np.clip(image, 0.0, 1.0 if unit else 255.0).astype(np.float32, copy=False)
        return f * np.float32(255.0) if unit else f
    raise InvalidImageError(f"unsupported image dtype {dt}")


def to_gray(image: np.ndarray) -> np.ndarray:
    """Any face image (HxW, HxWx1, BGR, BGRA; uint8, uint16, int, bool or float) to float32 HxW gray 0..255."""
    image = _checked_shape(image)
    if image.ndim == 3 and image.dtype in (np.uint8, np.uint16) and image.size > _STRIP_PIXELS:
        return _to_gray_in_strips(image)
    f = _to_float255(image)
    if f.ndim == 3:
        f = cv2.cvtColor(f, cv2.COLOR_BGRA2GRAY if f.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return f


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
    """:func:`to_gray` rounded to uint8 HxW (what OpenCV's Haar detector takes)."""
    return _round_uint8(to_gray(image))


_STRIP_PIXELS = 1 << 22  # colour images above this many values are converted a strip of rows at a time


def _to_gray_in_strips(image: np.ndarray) -> np.ndarray:
    """:func:`to_gray` of a large 8/16-bit colour image, without its float32 colour copy (4x the decoded size):
    the same per-pixel arithmetic, a strip of rows at a time, so a 179 MP photo needs 0.7 GB here, not 2.9 GB."""
    code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    out = np.empty(image.shape[:2], np.float32)
    rows = max(1, _STRIP_PIXELS // (image.shape[1] * image.shape[2]))
    for top in range(0, image.shape[0], rows):
        out[top:top + rows] = cv2.cvtColor(_to_float255(image[top:top + rows]), code)
    return out


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with INTER_AREA when shrinking and INTER_LINEAR when enlarging (or keep the array if the size matches)."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    shrink = width * height < w * h
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def face_pixels(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """One face as every model sees it, in training and at run time: ``size x size`` gray uint8.

    Gray conversion (:func:`to_gray`), resizing (:func:`resize`: INTER_AREA when shrinking, INTER_LINEAR
    when enlarging) and rounding to the 8-bit grid of the training data. ``fer_train.data`` reads image
    folders with it and :func:`preprocess` (the Predictor's input) is its float32 copy.
    """
    gray = resize(to_gray(image), size, size)  # float32 on the 0..255 scale
    return _round_uint8(gray)


def preprocess(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """One face to the model input: :func:`face_pixels` as float32 0..255 (the graph does its own scaling)."""
    return np.ascontiguousarray(face_pixels(image, size), dtype=np.float32)


def as_image_list(images: object) -> list[np.ndarray]:
    """Split a predict/saliency argument into single images.

    A list/tuple is a list of images. A numpy array is one image if it is 2-D, or 3-D with a last axis
    of 1, 3 or 4 (HxWxC); a batch if it is 3-D otherwise (NxHxW gray) or 4-D (NxHxWxC). A path (``str`` or
    ``os.PathLike``), alone or in the list, is read with :func:`read_image`.
    """
    if isinstance(images, (str, PathLike)):
        return [_read_named(images)]
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4)):
            return [images]
        if images.ndim in (3, 4):
            return list(images)
        raise InvalidImageError(f"cannot interpret an array of shape {images.shape} as images")
    if isinstance(images, (list, tuple)):
        return [_read_named(im) if isinstance(im, (str, PathLike)) else np.asarray(im) for im in images]
    raise InvalidImageError(f"expected a numpy array, a path or a list of them, got {type(images).__name__}")


def _read_named(path: str | PathLike[str]) -> np.ndarray:
    """:func:`read_image`, with the path in the error message."""
    try:
        return read_image(path)
    except InvalidImageError as e:
        if str(path) in str(e):
            raise
        raise type(e)(f"{path}: {e}") from None
