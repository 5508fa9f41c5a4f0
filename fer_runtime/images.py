"""Image decoding and normalisation: files to 8-bit arrays, any array to the model's 48x48 gray input.

Only numpy and OpenCV. File I/O goes through ``np.fromfile``/``cv2.imdecode`` and
``cv2.imencode(...).tofile`` so that non-ASCII paths work on every platform.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.errors import InvalidImageError
from fer_runtime.labels import IMAGE_SIZE

# Suffixes the CLI picks up from folders and globs (lower case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# ANYDEPTH keeps 16-bit data (we scale it ourselves), ANYCOLOR keeps gray as gray and drops alpha;
# unlike IMREAD_UNCHANGED this also applies the EXIF orientation of photos.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def is_image_path(path: str | PathLike[str]) -> bool:
    """True if the file name has one of the supported image suffixes."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as uint8 0..255 with the same channels (16-bit is scaled, floats in 0..1 are stretched)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(_to_float255(image)), 0, 255).astype(np.uint8)


def read_image(path: str | PathLike[str]) -> np.ndarray:
    """Decode an image file to uint8: HxW (gray) or HxWx3 (BGR).

    16-bit images are scaled to 8 bit, alpha is dropped, EXIF orientation is applied.
    Raises :class:`InvalidImageError` for anything that is not a readable image.
    """
    p = Path(path)
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except FileNotFoundError:
        raise InvalidImageError(f"no such file: {p}") from None
    except IsADirectoryError:
        raise InvalidImageError(f"is a directory: {p}") from None
    except OSError as e:
        raise InvalidImageError(f"cannot read file: {e.strerror or e}") from None
    if data.size == 0:
        raise InvalidImageError("not a readable image (empty file)")
    try:
        image = cv2.imdecode(data, _DECODE_FLAGS)
    except cv2.error as e:  # e.g. a header promising more pixels than OpenCV allows
        raise InvalidImageError(f"not a readable image ({str(e).strip().splitlines()[-1]})") from None
    if image is None or image.size == 0:
        raise InvalidImageError("not a readable image (unknown format, truncated or corrupt)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:  # some decoders ignore ANYCOLOR's alpha drop
        image = image[:, :, :3]
    return to_uint8(image)


def write_image(path: str | PathLike[str], image: np.ndarray) -> None:
    """Encode ``image`` by the suffix of ``path`` and write it (non-ASCII paths work)."""
    p = Path(path)
    ok, buf = cv2.imencode(p.suffix or ".png", image)
    if not ok:
        raise InvalidImageError(f"cannot encode image as {p.suffix or '.png'}")
    buf.tofile(p)


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
        f = image.astype(np.float32)
        if not np.isfinite(f).all():
            raise InvalidImageError("float image contains NaN or infinity")
        # Floats whose maximum is <= 1 are taken as 0..1, anything else as 0..255.
        if f.max(initial=0.0) <= 1.0:
            f = f * np.float32(255.0)
        return np.clip(f, 0.0, 255.0)
    raise InvalidImageError(f"unsupported image dtype {dt}")


def to_gray(image: np.ndarray) -> np.ndarray:
    """Any face image (HxW, HxWx1, BGR, BGRA; uint8, uint16, int, bool or float) to float32 HxW gray 0..255."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise InvalidImageError(f"expected an HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA) image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"empty image of shape {image.shape}")
    f = _to_float255(image)
    if f.ndim == 3:
        f = cv2.cvtColor(f, cv2.COLOR_BGRA2GRAY if f.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return f


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with INTER_AREA when shrinking and INTER_LINEAR when enlarging (or keep the array if the size matches)."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    shrink = width * height < w * h
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def preprocess(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """One face to the model input: float32 ``size x size`` gray, raw 0..255 (the graph does its own scaling)."""
    return np.ascontiguousarray(resize(to_gray(image), size, size), dtype=np.float32)


def as_image_list(images: object) -> list[np.ndarray]:
    """Split a predict/saliency argument into single images.

    A list/tuple is a list of images. A numpy array is one image if it is 2-D, or 3-D with a last axis
    of 1, 3 or 4 (HxWxC); a batch if it is 3-D otherwise (NxHxW gray) or 4-D (NxHxWxC).
    """
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4)):
            return [images]
        if images.ndim in (3, 4):
            return list(images)
        raise InvalidImageError(f"cannot interpret an array of shape {images.shape} as images")
    if isinstance(images, (list, tuple)):
        return [np.asarray(im) for im in images]
    raise InvalidImageError(f"expected a numpy array or a list of arrays, got {type(images).__name__}")
