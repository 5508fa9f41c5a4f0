"""A hostile-file corpus built from the committed images (examples/images, tests/fixtures) with a fixed seed.

Used by tests/test_fuzz.py (and bench/reliability.py). :func:`build_corpus` writes every case into one
folder and returns what each entry is, so a test can tell which inputs must give a prediction.
"""
from __future__ import annotations

import csv
import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
FER_FIXTURE = ROOT / "tests" / "fixtures" / "fer2013_small.csv.gz"
SEED = 15
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Case:
    """One corpus entry: its file name in the corpus folder and the kind of hostility."""

    name: str
    kind: str


def _fixture_face(row: int = 0) -> np.ndarray:
    with gzip.open(FER_FIXTURE, "rt", encoding="utf-8") as f:
        for i, r in enumerate(csv.DictReader(f)):
            if i == row:
                return np.array(r["pixels"].split(), np.uint8).reshape(48, 48)
    raise IndexError(row)


def _encode(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok, ext
    return buf.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of_zeros(width: int, height: int, channels: int = 1) -> bytes:
    """A valid 8-bit gray (``channels=1``) or RGB (3) PNG of ``width`` x ``height`` black pixels, built row by row
    (a small file, a huge image)."""
    comp = zlib.compressobj(1)
    row = b"\0" * (width * channels + 1)  # filter byte + pixels
    parts = [comp.compress(row) for _ in range(height)]
    idat = b"".join(parts) + comp.flush()
    color = {1: 0, 3: 2}[channels]
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) claims ``width`` x ``height`` but whose data is a few bytes."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its SOF0/SOF2 frame header patched to claim ``width`` x ``height``."""
    data = bytearray(jpeg)
    i = 2
    while i + 9 < len(data):
        assert data[i] == 0xFF, "unexpected JPEG layout"
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise ValueError("no SOF marker")


def _bmp_with_size(bmp: bytes, width: int, height: int) -> bytes:
    data = bytearray(bmp)
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def build_corpus(folder: Path, seed: int = SEED) -> list[Case]:
    """Write the corpus into ``folder`` (created) and return its cases in name order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases: list[Case] = []

    def put(name: str, data: bytes, kind: str) -> None:
        (folder / name).write_bytes(data)
        cases.append(Case(name, kind))

    face = _fixture_face(0)
    bgr = cv2.cvtColor(cv2.resize(face, (96, 96)), cv2.COLOR_GRAY2BGR)
    sources = {
        "png": (EXAMPLES / "happy_0.png").read_bytes(),
        "jpg": (EXAMPLES / "photo_one_face.jpg").read_bytes(),
        "bmp": _encode(".bmp", bgr),
        "webp": _encode(".webp", bgr),
        "tif": _encode(".tif", face),
    }
    # valid originals
    for ext, data in sources.items():
        put(f"valid.{ext}", data, "valid")
    # truncations: empty, 1 byte, inside the header, and at fractions of the file
    for ext, data in sources.items():
        for cut in (0, 1, 12, 40, len(data) // 10, len(data) // 2, len(data) - 7):
            put(f"trunc_{cut}.{ext}", data[:cut], "truncated")
    # bit flips: 1 to 16 random bits anywhere after the first byte
    for ext, data in sources.items():
        for k in range(8):
            buf = bytearray(data)
            for pos in rng.integers(1, len(buf), int(rng.integers(1, 17))):
                buf[pos] ^= 1 << int(rng.integers(0, 8))
            put(f"flip_{k}.{ext}", bytes(buf), "bitflip")
    # random bytes under every image extension
    for ext in EXTENSIONS:
        for k in range(2):
            put(f"random_{k}{ext}", rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8).tobytes(), "random")
    # wrong magic numbers: another format's magic on this one's body, zeroed magic, right content wrong suffix
    put("png_magic_on_jpeg.jpg", b"\x89PNG\r\n\x1a\n" + sources["jpg"][8:], "magic")
    put("jpeg_magic_on_png.png", b"\xff\xd8\xff\xe0" + sources["png"][4:], "magic")
    put("zero_magic.png", b"\0" * 8 + sources["png"][8:], "magic")
    put("zero_magic.jpg", b"\0\0" + sources["jpg"][2:], "magic")
    put("bmp_magic_on_tif.tif", b"BM" + sources["tif"][2:], "magic")
    put("png_named.jpg", sources["png"], "valid")  # right content, wrong suffix: still an image
    put("text.png", b"this is not an image\n" * 3, "magic")
    # huge dimensions in valid headers
    put("huge_ihdr_60000.png", _png_header_only(60000, 60000), "huge")
    put("huge_ihdr_1x2e9.png", _png_header_only(1, 2_000_000_000), "huge")
    put("huge_sof_65000.jpg", _jpeg_with_size(sources["jpg"], 65000, 65000), "huge")
    put("huge_bmp_50000.bmp", _bmp_with_size(sources["bmp"], 50000, 50000), "huge")
    put("huge_20000.png", png_of_zeros(20000, 20000), "huge")  # fully valid, 400 MP
    # odd shapes and depths
    put("one_by_one.png", _encode(".png", np.array([[128]], np.uint8)), "odd")
    put("one_by_500.png", _encode(".png", rng.integers(0, 256, (1, 500), dtype=np.uint8)), "odd")
    put("500_by_one.png", _encode(".png", rng.integers(0, 256, (500, 1), dtype=np.uint8)), "odd")
    put("sixteen_bit.png", _encode(".png", face.astype(np.uint16) * 257), "odd")
    put("sixteen_bit.tif", _encode(".tif", face.astype(np.uint16) * 257), "odd")
    put("float32.tif", _encode(".tif", face.astype(np.float32) / 255.0), "odd")
    put("bgra.png", _encode(".png", np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)])), "odd")
    put("bgra.webp", _encode(".webp", np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)])), "odd")
    put("black.png", _encode(".png", np.zeros((48, 48), np.uint8)), "odd")
    # names: spaces, non-ASCII, a newline, CSV metacharacters, a leading dash
    for name in ("with space.png", "visage été 😀.png", "line\nbreak.png", 'comma,"quote".png', "-dash.png",
                 "UPPER.PNG"):
        put(name, sources["png"], "name")
    # links and things that are not files
    os.symlink("valid.png", folder / "link_to_valid.png")
    cases.append(Case("link_to_valid.png", "valid"))
    os.symlink("does_not_exist.png", folder / "dangling.png")
    cases.append(Case("dangling.png", "dangling"))
    os.symlink("loop.png", folder / "loop.png")
    cases.append(Case("loop.png", "loop"))
    os.symlink("loop_b.png", folder / "loop_a.png")
    os.symlink("loop_a.png", folder / "loop_b.png")
    cases += [Case("loop_a.png", "loop"), Case("loop_b.png", "loop")]
    (folder / "dir.png").mkdir()
    cases.append(Case("dir.png", "directory"))
    os.mkfifo(folder / "fifo.png")
    cases.append(Case("fifo.png", "fifo"))
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "up")  # a folder loop: must not be followed
    (folder / "notes.txt").write_text("not an image suffix: skipped, not an input\n")
    return sorted(cases, key=lambda c: c.name)
