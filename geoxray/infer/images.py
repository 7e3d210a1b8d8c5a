"""Decode each image once and crop with numpy views.

Items arrive sorted by image set, so a small LRU of decoded images per worker turns ~40
questions about the same images into one read, one hash and one decode."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from geoxray.bench.tasks import NO_CROP, crop_box


class ImageError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # missing_image | corrupt_image
        self.detail = detail


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 RGB, or ImageError("corrupt_image")."""
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if array is None or array.size == 0:
        raise ImageError("corrupt_image", "cannot decode")
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


class ImageCache:
    """path -> (decoded RGB array, content hash), keeping the `capacity` most recent."""

    def __init__(self, image_root: str | Path, capacity: int = 64):
        self.root = Path(image_root)
        self.capacity = capacity
        self._cache: OrderedDict[str, tuple[np.ndarray, str] | ImageError] = OrderedDict()
        self.decoded = 0  # how many decodes happened (the benchmark reads it)

    def get(self, rel_path: str) -> tuple[np.ndarray, str]:
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
        return hit

    def _load(self, rel_path: str) -> tuple[np.ndarray, str] | ImageError:
        path = self.root / rel_path
        try:
            data = path.read_bytes()
        except OSError as exc:
            return ImageError("missing_image", f"{rel_path} ({exc.__class__.__name__})")
        try:
            array = decode_image(data)
        except ImageError as exc:
            return ImageError(exc.reason, rel_path)
        self.decoded += 1
        array.setflags(write=False)  # shared by every item of the image set
        return array, hashlib.blake2b(data, digest_size=16).hexdigest()


def crop_view(image: np.ndarray, crop: str) -> np.ndarray:
    """A named crop as a numpy view (no copy)."""
    if crop == NO_CROP:
        return image
    x0, y0, x1, y1 = crop_box(crop, image.shape[1], image.shape[0])
    return image[y0:y1, x0:x1]
