"""Deterministic hashing and noise for the procedural world: the same numbers in every process,
on every machine, for every run (no global RNG state, no salted Python `hash`).

Hashing every sample is the world's main cost, and most hashed quantities belong to a road
line or a block that thousands of samples share. `Keys` hashes each distinct key of a batch
once and gathers the result, which is several times cheaper than hashing per sample.
"""
from __future__ import annotations

import zlib

import numpy as np

_GOLDEN = np.uint32(0x9E3779B1)
_C1, _C2 = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)
_S16, _S13 = np.uint32(16), np.uint32(13)
_TO_UNIT = np.float32(1.0 / 4294967296.0)


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from any printable parts, identical across processes and runs (unlike
    Python's salted `hash`)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


def hash01(seed: int, *coords: np.ndarray | int) -> np.ndarray:
    """Uniform [0, 1) float32 from integer lattice coordinates (murmur3-style mixing; uint32
    arithmetic wraps, which is the point)."""
    shape = np.broadcast_shapes(*(np.shape(c) for c in coords))
    h = np.full(shape or (1,), seed & 0xFFFFFFFF, np.uint32)
    for c in coords:
        c = np.atleast_1d(np.asarray(c)).astype(np.int64).astype(np.uint32)  # wraps negatives
        h = h * _GOLDEN + c
        h ^= h >> _S16
        h *= _C1
        h ^= h >> _S13
        h *= _C2
        h ^= h >> _S16
    out = h.astype(np.float32) * _TO_UNIT
    np.minimum(out, np.float32(0.99999994), out=out)  # float32 rounding must not reach 1.0
    return out.reshape(shape)


class Keys:
    """Integer keys (1-D `ka`, or pairs `ka, kb`) of a batch, hashed once per distinct key.

    When the keys span a small box (the road lines, blocks and lots of a batch do),
    `hash(seed)` hashes that box and gathers; otherwise it hashes per sample.
    """

    def __init__(self, ka: np.ndarray, kb: np.ndarray | None = None):
        self.ka, self.kb = ka, kb
        a0, a1 = (int(ka.min()), int(ka.max())) if ka.size else (0, 0)
        b0, b1 = (int(kb.min()), int(kb.max())) if kb is not None and kb.size else (0, 0)
        self.na, self.nb = a1 - a0 + 1, b1 - b0 + 1
        self.small = self.na * self.nb * 4 <= max(ka.size, 64)
        if self.small:
            self.box = [np.arange(a0, a1 + 1)]
            flat = ka - a0
            if kb is not None:
                self.box = list(np.meshgrid(self.box[0], np.arange(b0, b1 + 1), indexing="ij"))
                flat = flat * self.nb + (kb - b0)
            self.flat = flat

    def hash(self, seed: int, at: np.ndarray | None = None) -> np.ndarray:
        """The hash of each sample's key (of samples `at` only, when given)."""
        if not self.small:
            keys = [k if at is None else k[at] for k in (self.ka, self.kb) if k is not None]
            return hash01(seed, *keys)
        return hash01(seed, *self.box).ravel()[self.flat if at is None else self.flat[at]]


def fade(footprint: np.ndarray | float, size: float) -> np.ndarray | float:
    """How much of a detail `size` metres across survives a sample `footprint` metres wide."""
    return np.clip(1.0 - np.asarray(footprint, np.float32) / np.float32(size), 0.0, 1.0)
