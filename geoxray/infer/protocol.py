"""The evaluation protocol: how an item reaches the model (docs/protocol.md).

`protocol=paper` reproduces the authors' harness (IntMeGroup/GeoX-Bench @89d40cf):
- crops: the box their `CenterDivImageCroper` gives (float edges, rounded by PIL), saved to a
  temp file in the source's format with PIL's defaults (a .jpg tile: JPEG quality 75, 4:2:0)
  and read back, so the model sees the JPEG-decoded crop;
- per model family, the pixel budget and generation settings they ran with (the model
  config's `protocols.paper` section);
- an API model gets each image as JPEG quality 100 (their model/CloseAI.py).
`protocol=clean` is the lossless, uniform alternative: exact crop boxes, lossless crops,
the model config's own settings, PNG to APIs.

`apply_protocol` resolves a protocol into the model and decode settings once, at config
time, so the engines and the prediction keys see plain settings. `ProtocolCrops` is the
stage's hook: (decoded image, content hash, crop, source path) -> (pixels, image uuid),
re-encoding each distinct (image, crop) once per worker, not once per item.
"""
from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import fields
from pathlib import PurePath
from typing import Any

import numpy as np

from geoxray.bench.tasks import NO_CROP, crop_box, pil_crop_box
from geoxray.infer.config import DecodeConfig, ModelConfig, ProtocolConfig

CROP_BOXES = ("pil", "exact")
# PIL formats whose default save is lossless for 8-bit RGB: re-saving changes no pixel
LOSSLESS_FORMATS = frozenset({"PNG", "BMP", "TIFF", "PPM", "TGA"})
_MODEL_FIELDS = {f.name for f in fields(ModelConfig)} - {"protocols", "name", "engine", "path"}
_DECODE_FIELDS = {f.name for f in fields(DecodeConfig)} - {"mode"}


class ProtocolError(ValueError):
    pass


# --- settings ---------------------------------------------------------------------------------
def check_protocol(protocol: ProtocolConfig) -> None:
    if protocol.crop_box not in CROP_BOXES:
        raise ProtocolError(f"config key 'protocol.crop_box': {protocol.crop_box!r} is not one "
                            f"of {list(CROP_BOXES)}")
    api_image_quality(protocol.api_image, "protocol.api_image")


def api_image_quality(spec: str, key: str = "model.api_image") -> int | None:
    """"png" -> None; "jpeg:<q>" -> q (1..100)."""
    if spec == "png":
        return None
    kind, _, quality = spec.partition(":")
    if kind == "jpeg" and quality.isdigit() and 1 <= int(quality) <= 100:
        return int(quality)
    raise ProtocolError(f"config key '{key}': {spec!r} is not png or jpeg:<1..100>")


def apply_protocol(model: ModelConfig, decode: DecodeConfig, protocol: ProtocolConfig) -> None:
    """Resolve `protocol` into `model` and `decode` (in place): the API image encoding, and the
    model config's `protocols.<name>` settings. Decode settings (max_tokens,
    repetition_penalty, ...) apply to the free-text decode (`decode.mode == paper`) only: a
    constrained choice is scored the same way under every protocol."""
    check_protocol(protocol)
    model.api_image = protocol.api_image
    if not protocol.model_settings:
        return
    for key, value in (model.protocols.get(protocol.name) or {}).items():
        where = f"model.protocols.{protocol.name}.{key}"
        if key in _DECODE_FIELDS:
            if decode.mode == "paper":
                setattr(decode, key, value)
        elif key in _MODEL_FIELDS:
            current = getattr(model, key)
            if isinstance(current, dict) and isinstance(value, dict):
                value = _merged(current, value)
            setattr(model, key, value)
        else:
            raise ProtocolError(f"config key '{where}': not a model or decode setting")
    api_image_quality(model.api_image)


def _merged(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merged(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def key_parts(protocol: ProtocolConfig) -> tuple:
    """What the protocol adds to a prediction key beyond the model and decode settings (which
    `apply_protocol` already changed): the crop pixels. Empty for exact, lossless crops, so
    the keys of runs made before protocols existed (protocol=clean) stay valid."""
    if protocol.crop_box == "exact" and not protocol.crop_resave:
        return ()
    return ({"crop_box": protocol.crop_box, "crop_resave": protocol.crop_resave},)


# --- pixels -----------------------------------------------------------------------------------
def source_format(rel_path: str) -> str | None:
    """The PIL format a file of this name is saved in (by extension, as `Image.save` picks)."""
    from PIL import Image
    return Image.registered_extensions().get(PurePath(rel_path).suffix.lower())


def resave_bytes(pixels: np.ndarray, fmt: str) -> bytes:
    """What `Image.save(path)` writes for these pixels in format `fmt`, PIL's defaults
    (JPEG: quality 75, 4:2:0 subsampling, baseline)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format=fmt)
    return buf.getvalue()


def read_back(data: bytes) -> np.ndarray:
    """Decode as the authors' model loaders do (ms-swift's load_image: PIL, convert RGB)."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB") if im.mode != "RGB" else im.copy())


class ProtocolCrops:
    """The stage's crop hook. Per worker, each distinct (image content hash, crop) is encoded
    once: its bytes stay in an LRU (`capacity` crops, ~15-40 kB each, so a whole task's tiles
    fit), and the decoded pixels of the most recent ones in a smaller LRU. Items come sorted by
    image set, so the 4 headings that share a tile's crop can be far apart in the stream."""

    def __init__(self, protocol: ProtocolConfig | None = None, capacity: int = 4096,
                 decoded_capacity: int = 64):
        self.protocol = protocol or ProtocolConfig(name="clean", crop_box="exact",
                                                   crop_resave=False)
        check_protocol(self.protocol)
        self._bytes = _LRU(capacity)
        self._pixels = _LRU(decoded_capacity)
        self.encoded = 0  # encodes done (the benchmark and the tests read them)
        self.decoded = 0  # read-backs done

    def box(self, crop: str, width: int, height: int) -> tuple[int, int, int, int]:
        if self.protocol.crop_box == "pil":
            return pil_crop_box(crop, width, height)
        return crop_box(crop, width, height)

    def __call__(self, image: np.ndarray, digest: str, crop: str, rel_path: str
                 ) -> tuple[np.ndarray, str]:
        """(pixels the model sees, multimodal uuid). Uncropped images pass through."""
        if crop == NO_CROP:
            return image, f"{digest}:{crop}"
        x0, y0, x1, y1 = self.box(crop, image.shape[1], image.shape[0])
        view = image[y0:y1, x0:x1]
        fmt = source_format(rel_path) if self.protocol.crop_resave else None
        if fmt is None or fmt in LOSSLESS_FORMATS:  # no re-save, or one that keeps the pixels
            tag = "" if self.protocol.crop_box == "exact" else f":{self.protocol.crop_box}"
            return view, f"{digest}:{crop}{tag}"  # clean: today's uuid and pixels
        key = (digest, crop, fmt)
        pixels = self._pixels.get(key)
        if pixels is None:
            data = self._bytes.get(key)
            if data is None:
                data = resave_bytes(view, fmt)
                self.encoded += 1
                self._bytes.put(key, data)
            pixels = read_back(data)
            pixels.setflags(write=False)
            self.decoded += 1
            self._pixels.put(key, pixels)
        return pixels, f"{digest}:{crop}:{self.protocol.crop_box}:{fmt.lower()}-resaved"


class _LRU:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()

    def get(self, key):
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        self._items[key] = value
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)


def describe(protocol: ProtocolConfig) -> dict[str, Any]:
    """The protocol as the manifest and the report name it."""
    return {"name": protocol.name, "crop_box": protocol.crop_box,
            "crop_resave": protocol.crop_resave, "api_image": protocol.api_image,
            "model_settings": protocol.model_settings}
