"""Read and decode each image once, check it, and crop with numpy views.

Items arrive sorted by image set, so a small LRU of decoded images per worker turns ~40
questions about the same images into one read, one hash and one decode.

Pixels are what the authors' reader gives, `PIL.Image.open(path).convert("RGB")`
(docs/images.md): JPEGs are decoded by libjpeg-turbo through simplejpeg with PIL's settings
(accurate DCT, smooth chroma upsampling, EXIF orientation ignored) because it is faster and,
unlike PIL, reports corrupt entropy data; everything else (and CMYK JPEGs) is decoded by PIL.

Every way an image can be bad is an `ImageError` with a reason that names it, never a hang
or a traceback: a path outside the image root is never opened, a FIFO or device is refused
before any read, the pixel count is checked from the header before decoding, and the read
of one image has a deadline."""
from __future__ import annotations

import errno
import io
import os
import queue
import stat
import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import simplejpeg
from PIL import Image

from geoxray.bench.index import content_hash, path_problem
from geoxray.bench.tasks import NO_CROP, crop_box

# 50 MP: 24x the largest GeoX-Bench image (a 2048x1024 panorama), 150 MB decoded. A
# 20000x20000 PNG of 424 KB would otherwise cost ~2.75 GB per worker (issue 10).
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_READ_TIMEOUT_S = 60.0
# Formats PIL may open: the ones image datasets use. Never EPS/PDF-like formats whose
# plugins run external programs.
Image.init()  # register every plugin, then keep only these
PIL_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF")
                    if f in Image.OPEN)
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageError(Exception):
    """An image an item cannot use. `reason` is the item's invalid_reason:
    path_outside_root | missing_image | not_a_file | unreadable_image | empty_image |
    image_too_large | corrupt_image | image_timeout | image_changed | image_too_small"""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- where an image may be read from ----------------------------------------------------------
def confined_path(root: Path, rel_path: str) -> Path:
    """`root / rel_path` when `rel_path` is a plain relative path inside `root` (no absolute
    path, no `..`, no NUL); else ImageError("path_outside_root"). Symlinks inside the root
    are followed: the root is the operator's, the index may come from anyone."""
    problem = path_problem(rel_path)
    if problem:
        raise ImageError("path_outside_root", problem)
    return Path(root) / rel_path


def read_image_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file. Opened non-blocking (a FIFO would otherwise wait for a
    writer forever) and checked with fstat before any read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        reason = "missing_image" if exc.errno in (errno.ENOENT, errno.ENOTDIR) else "unreadable_image"
        raise ImageError(reason, os.strerror(exc.errno or 0)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError("not_a_file", f"a {_file_kind(info.st_mode)}, not a file")
        if info.st_size > max_bytes:
            raise ImageError("image_too_large", f"{info.st_size} bytes > {max_bytes}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise ImageError("unreadable_image", f"{exc.__class__.__name__}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


# --- bytes -> RGB pixels ----------------------------------------------------------------------
def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 RGB equal to PIL's `Image.open(...).convert("RGB")`, or
    ImageError (empty_image, image_too_large, corrupt_image)."""
    if not data:
        raise ImageError("empty_image", "0 bytes")
    try:
        if data[:3] == _JPEG_MAGIC:
            return _decode_jpeg(data, max_pixels)
        if data[:8] == _PNG_MAGIC:
            _check_png_chunks(data)
        return _decode_pil(data, max_pixels)
    except ImageError:
        raise
    except Exception as exc:  # any decoder failure is this image's mark, never a traceback
        raise ImageError("corrupt_image", f"{exc.__class__.__name__}: {exc}"[:200]) from None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError("corrupt_image", f"size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError("image_too_large",
                         f"{width}x{height} = {width * height} pixels > {max_pixels}")


def _decode_jpeg(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ImageError("corrupt_image", f"JPEG header: {exc}") from None
    _check_size(width, height, max_pixels)
    try:
        if colorspace in ("CMYK", "YCCK"):
            # libjpeg-turbo checks the data (strict: warnings raise); PIL does its Adobe
            # inversion and CMYK->RGB formula, which a plain decoder does not.
            simplejpeg.decode_jpeg(data, colorspace="CMYK", strict=True)
            return _decode_pil(data, max_pixels)
        # strict: libjpeg's warnings ("Corrupt JPEG data: ...", "Premature end of JPEG file")
        # raise instead of giving silently wrong pixels.
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as exc:
        raise ImageError("corrupt_image", str(exc)[:200]) from None


def _decode_pil(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as image:
            _check_size(*image.size, max_pixels)  # from the header: nothing decoded yet
            image.load()  # truncated data raises here (LOAD_TRUNCATED_IMAGES is off)
            return np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise ImageError("image_too_large", str(exc)[:200]) from None


def _check_png_chunks(data: bytes) -> None:
    """Every chunk's CRC (PIL skips the CRC of image data chunks, so a flipped byte there can
    decode silently to wrong pixels) and a closing IEND."""
    pos = 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        if zlib.crc32(data[pos + 4:end]) != struct.unpack(">I", data[end:end + 4])[0]:
            raise ImageError("corrupt_image", f"PNG chunk {kind!r} fails its CRC")
        if kind == b"IEND":
            return
        pos = end + 4
    raise ImageError("corrupt_image", "PNG is truncated (no IEND chunk)")


# --- the per-worker cache ---------------------------------------------------------------------
class DeadlineReader:
    """Runs reads on one long-lived daemon thread and waits at most `timeout_s` for each.
    A read stuck in the kernel (a hung network mount) keeps that thread, not the worker:
    its item is marked image_timeout, the thread is abandoned and the next read gets a new
    one. (A thread per read cost ~2.5 ms to start on a busy 2-core machine.)"""

    def __init__(self, timeout_s: float | None):
        self.timeout_s = timeout_s
        self._jobs: queue.SimpleQueue | None = None

    def call(self, fn: Callable[[], bytes], what: str) -> bytes:
        if not self.timeout_s:
            return fn()
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(target=_serve_reads, args=(self._jobs,), daemon=True,
                             name="geoxray-image-read").start()
        box: dict = {}
        finished = threading.Event()
        self._jobs.put((fn, box, finished))
        if not finished.wait(self.timeout_s):
            self._jobs = None  # that thread is stuck; never queue behind it again
            raise ImageError("image_timeout", f"{what}: not read within {self.timeout_s:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]


def _serve_reads(jobs: queue.SimpleQueue) -> None:
    while True:
        fn, box, finished = jobs.get()
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the waiting caller
            box["error"] = exc
        finally:
            finished.set()


class ImageCache:
    """path -> (decoded RGB array, content hash), keeping the `capacity` most recent. Bad
    images are cached too (as their ImageError), so ~40 items of a bad image cost one read."""

    def __init__(self, image_root: str | Path, capacity: int = 64,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 read_timeout_s: float | None = DEFAULT_READ_TIMEOUT_S):
        self.root = Path(image_root)
        self.capacity = capacity
        self.max_pixels = max_pixels
        # No file of a valid image is larger than its raw 16-bit RGBA pixels plus metadata.
        self.max_bytes = 8 * max_pixels + (64 << 20)
        self.reader = DeadlineReader(read_timeout_s)
        self._cache: OrderedDict[str, tuple[np.ndarray, str] | ImageError] = OrderedDict()
        self.decoded = 0  # how many decodes happened (the benchmark reads it)

    def get(self, rel_path: str, expected_hash: str | None = None) -> tuple[np.ndarray, str]:
        """The image and its content hash; ImageError("image_changed") when `expected_hash`
        (the build's) is given and differs."""
        hit = self._cache.get(rel_path)
        if hit is None:
            hit = self._load(rel_path)
            self._cache[rel_path] = hit
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(rel_path)
        if isinstance(hit, ImageError):
            raise hit
        if expected_hash and hit[1] != expected_hash:
            raise ImageError("image_changed", f"{rel_path}: content hash {hit[1]} is not the "
                                              f"build's {expected_hash}")
        return hit

    def _load(self, rel_path: str) -> tuple[np.ndarray, str] | ImageError:
        try:
            path = confined_path(self.root, rel_path)
            # Only the read needs a deadline: decoding time is bounded by max_pixels.
            data = self.reader.call(lambda: read_image_file(path, self.max_bytes), rel_path)
            array = decode_image(data, self.max_pixels)
        except ImageError as exc:
            return ImageError(exc.reason, f"{rel_path}: {exc.detail}"[:300])
        self.decoded += 1
        array.setflags(write=False)  # shared by every item of the image set
        return array, content_hash(data)


def crop_view(image: np.ndarray, crop: str) -> np.ndarray:
    """A named crop as a numpy view (no copy)."""
    if crop == NO_CROP:
        return image
    x0, y0, x1, y1 = crop_box(crop, image.shape[1], image.shape[0])
    return image[y0:y1, x0:x1]
