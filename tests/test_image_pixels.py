"""geoxray's decoder gives the pixels of the authors' reader, PIL's
`Image.open(path).convert("RGB")`, for every format, mode and metadata variant an image
dataset can hold (docs/images.md). Each file is generated here; PIL itself is the reference."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from geoxray.infer.images import decode_image


def _scene(height: int = 67, width: int = 91) -> np.ndarray:
    """Smooth colour gradients plus edges: chroma subsampling and rounding both show."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)),
                    ((x + y) * 7) % 256], axis=-1).astype(np.uint8)
    rgb[height // 3: height // 2, width // 4: width // 2] = (250, 10, 30)
    return rgb


def _pil_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": PIL's reader does not apply it
    return _pil_bytes(Image.fromarray(_scene()), "JPEG", exif=exif.tobytes())


def _with_icc(fmt: str) -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    return _pil_bytes(Image.fromarray(_scene()), fmt, icc_profile=profile)


def _png16_rgb() -> bytes:
    deep = (_scene().astype(np.uint16) * 257 + 3)[..., ::-1]  # cv2 writes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(deep))
    assert ok
    return buf.tobytes()


def _png16_gray() -> bytes:
    deep = (_scene()[..., 0].astype(np.uint16) * 257)
    ok, buf = cv2.imencode(".png", deep)
    assert ok
    return buf.tobytes()


def _palette_with_transparency() -> bytes:
    image = Image.fromarray(_scene()).quantize(64)
    return _pil_bytes(image, "PNG", transparency=5)


def _jpeg_restart_markers() -> bytes:
    ok, buf = cv2.imencode(".jpg", _scene()[..., ::-1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 3])
    assert ok
    return buf.tobytes()


RGB = Image.fromarray(_scene())
VARIANTS = {
    "png_rgb8": lambda: _pil_bytes(RGB, "PNG"),
    "png_rgb16": _png16_rgb,
    "png_gray8": lambda: _pil_bytes(RGB.convert("L"), "PNG"),
    "png_gray16": _png16_gray,
    "png_gray_alpha": lambda: _pil_bytes(RGB.convert("LA"), "PNG"),
    "png_1bit": lambda: _pil_bytes(RGB.convert("1"), "PNG"),
    "png_palette": lambda: _pil_bytes(RGB.quantize(64), "PNG"),
    "png_palette_transparency": _palette_with_transparency,
    "png_rgba": lambda: _pil_bytes(Image.fromarray(np.dstack([_scene(), _scene()[..., 1]])), "PNG"),
    "png_icc": lambda: _with_icc("PNG"),
    "jpeg_baseline_420": lambda: _pil_bytes(RGB, "JPEG", quality=75),
    "jpeg_444": lambda: _pil_bytes(RGB, "JPEG", quality=95, subsampling=0),
    "jpeg_422": lambda: _pil_bytes(RGB, "JPEG", quality=90, subsampling=1),
    "jpeg_progressive": lambda: _pil_bytes(RGB, "JPEG", progressive=True),
    "jpeg_optimized_q100": lambda: _pil_bytes(RGB, "JPEG", quality=100, optimize=True),
    "jpeg_grayscale": lambda: _pil_bytes(RGB.convert("L"), "JPEG"),
    "jpeg_cmyk": lambda: _pil_bytes(RGB.convert("CMYK"), "JPEG"),
    "jpeg_exif_orientation": _exif_rotated,
    "jpeg_icc": lambda: _with_icc("JPEG"),
    "jpeg_restart_markers": _jpeg_restart_markers,
    "webp_lossy": lambda: _pil_bytes(RGB, "WEBP", quality=80),
    "webp_lossless": lambda: _pil_bytes(RGB, "WEBP", lossless=True),
    "webp_alpha": lambda: _pil_bytes(RGB.convert("RGBA"), "WEBP"),
    "bmp": lambda: _pil_bytes(RGB, "BMP"),
    "tiff_lzw": lambda: _pil_bytes(RGB, "TIFF", compression="tiff_lzw"),
    "tiff_jpeg": lambda: _pil_bytes(RGB, "TIFF", compression="jpeg"),
    "gif": lambda: _pil_bytes(RGB.quantize(32), "GIF"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pixels_equal_pils_reader(variant):
    data = VARIANTS[variant]()
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    decoded = decode_image(data)
    assert decoded.dtype == np.uint8 and decoded.shape == reference.shape
    assert np.array_equal(decoded, reference), (
        f"{variant}: max difference {np.abs(decoded.astype(int) - reference).max()}")


def test_exif_orientation_is_not_applied():
    """The authors' reader leaves an EXIF-rotated photo as stored (67x91, not 91x67)."""
    assert decode_image(_exif_rotated()).shape == (67, 91, 3)


def test_jpeg_pixels_are_independent_of_the_decoder_used_before():
    """The JPEG path (libjpeg-turbo via simplejpeg) equals PIL on an image large enough to
    have many MCUs and odd sides (edge blocks), and cv2 too (the decoder geoxray used)."""
    big = cv2.resize(_scene(), (517, 389), interpolation=cv2.INTER_CUBIC)
    data = _pil_bytes(Image.fromarray(big), "JPEG", quality=90)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(decode_image(data), reference)
    old = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    assert np.array_equal(old, reference)
