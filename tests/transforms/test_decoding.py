"""Decoding odd but valid images into the RGB the detector expects, and naming what is broken.

The reference for the default decode is ``cv2.imread(path)[..., ::-1]``, as the original feature extraction read
images (opencv-python-headless, a test dependency)."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.helpers_pipeline import encode, photo, png_chunk, png_with_declared_size, raw_png
from transforms.decoding import DecodeError, decode_image

RNG = np.random.default_rng(3)


def _rgba_hiding_colours() -> Image.Image:
    """A photo whose alpha is a ramp with a fully transparent band over saturated colours (that a composite
    would hide)."""
    rgb = np.asarray(photo("coffee.jpg"), dtype=np.uint8).copy()
    h, w = rgb.shape[:2]
    alpha = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
    alpha[:, : w // 4] = 0
    rgb[:, : w // 4] = [255, 0, 255]
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def _gray_scanlines(values: np.ndarray, bit_depth: int) -> bytes:
    """Rows of grey/palette samples packed at ``bit_depth`` (1, 2, 4, 8 or 16), each behind filter byte 0."""
    if bit_depth == 16:
        return b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)
    bits = np.unpackbits(values.astype(np.uint8)[..., None], axis=-1)[..., 8 - bit_depth:]
    return b"".join(b"\0" + np.packbits(row.reshape(-1)).tobytes() for row in bits)


def _cases() -> dict[str, bytes]:
    small = photo("astronaut.jpg", 64)
    h, w = 9, 16
    gray16 = RNG.integers(0, 65536, (h, w), dtype=np.uint16)
    rgb8 = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    cases = {
        "rgba_png": encode(_rgba_hiding_colours(), "PNG"),
        "la_png": encode(_rgba_hiding_colours().convert("LA"), "PNG"),
        "gray_png": encode(small.convert("L"), "PNG"),
        "palette_png": encode(small.quantize(64), "PNG"),
        "palette_png_transparent_index": encode(small.quantize(64), "PNG", transparency=3),
        "palette_png_alpha_table": encode(small.quantize(64), "PNG", transparency=bytes(range(0, 256, 4))),
        "gray8_trns_png": raw_png(w, h, 8, 0, _gray_scanlines(rgb8[..., 0], 8), png_chunk(b"tRNS", b"\0\7")),
        "rgb8_trns_png": raw_png(w, h, 8, 2, b"".join(b"\0" + r.tobytes() for r in rgb8),
                                 png_chunk(b"tRNS", struct.pack(">HHH", *map(int, rgb8[0, 0])))),
        "gray16_png": cv2.imencode(".png", gray16)[1].tobytes(),
        "rgb16_png": cv2.imencode(".png", RNG.integers(0, 65536, (h, w, 3), dtype=np.uint16))[1].tobytes(),
        "rgba16_png": cv2.imencode(".png", RNG.integers(0, 65536, (h, w, 4), dtype=np.uint16))[1].tobytes(),
        "la16_png": raw_png(w, h, 16, 4, b"".join(
            b"\0" + r.astype(">u2").tobytes() for r in RNG.integers(0, 65536, (h, w, 2), dtype=np.uint16))),
        "gray16_trns_png": raw_png(w, h, 16, 0, _gray_scanlines(gray16, 16),
                                   png_chunk(b"tRNS", struct.pack(">H", int(gray16[0, 0])))),
        "rgb_jpeg_444": encode(photo("chelsea.jpg"), "JPEG", quality=95, subsampling=0),
        "rgb_jpeg_420": encode(photo("chelsea.jpg"), "JPEG", quality=75, subsampling=2),
        "rgb_jpeg_progressive": encode(photo("rocket.jpg"), "JPEG", quality=85, progressive=True),
        "gray_jpeg": encode(photo("coffee.jpg").convert("L"), "JPEG"),
        "cmyk_jpeg": encode(photo("coffee.jpg").convert("CMYK"), "JPEG", quality=90),
    }
    for bits in (1, 2, 4):
        values = RNG.integers(0, 2**bits, (h, w))
        cases[f"gray{bits}_png"] = raw_png(w, h, bits, 0, _gray_scanlines(values, bits))
        palette = RNG.integers(0, 256, (2**bits, 3), dtype=np.uint8).tobytes()
        cases[f"palette{bits}_trns_png"] = raw_png(w, h, bits, 3, _gray_scanlines(values, bits),
                                                   png_chunk(b"PLTE", palette) + png_chunk(b"tRNS", b"\0" * 2**bits))
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases[f"jpeg_exif_orientation_{orientation}"] = encode(small, "JPEG", exif=exif, quality=95)
        cases[f"png_exif_orientation_{orientation}"] = encode(small, "PNG", exif=exif)
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_default_decode_is_cv2_imread_pixel_for_pixel(name, tmp_path):
    """As the original extraction read images: cv2.imread (BGR, alpha dropped) turned into RGB."""
    path = tmp_path / name
    path.write_bytes(CASES[name])
    want = cv2.imread(str(path))
    assert want is not None, f"cv2 cannot read {name}"
    got = decode_image(CASES[name])
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want[..., ::-1])


def test_alpha_drop_keeps_hidden_colours_and_composite_shows_white():
    data = CASES["rgba_png"]
    dropped, composited = decode_image(data), decode_image(data, alpha="composite")
    band = dropped.shape[1] // 4
    assert (dropped[:, :band] == [255, 0, 255]).all()  # transparent, but the stored colour is what cv2 sees
    assert (composited[:, :band] == 255).all()
    assert (dropped[:, -1] == composited[:, -1]).all()  # opaque column: identical
    with pytest.raises(ValueError, match="alpha must be one of"):
        decode_image(data, alpha="premultiply")


def test_exif_orientation_is_applied():
    img = photo("rocket.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = decode_image(encode(img, "JPEG", exif=exif, quality=95))
    assert pixels.shape == (img.width, img.height, 3)  # rotated: width and height swap


def test_sixteen_bit_gray_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    pixels = decode_image(encode(Image.fromarray(ramp), "PNG"))
    assert pixels.dtype == np.uint8 and pixels.shape == (16, 16, 3)
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.all(np.diff(pixels[..., 0].reshape(-1).astype(int)) >= 0)  # monotone, no wrap-around


def test_transparency_composited_on_white_on_request():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert (decode_image(encode(rgba, "PNG"), alpha="composite") == 255).all()
    assert (decode_image(encode(rgba, "PNG")) == [255, 0, 0]).all()
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] * 256)
    assert (decode_image(encode(pal, "PNG", transparency=0), alpha="composite") == 255).all()
    assert (decode_image(encode(pal, "PNG", transparency=0)) == 0).all()


def test_cmyk_and_grayscale_become_rgb():
    cmyk = photo("coffee.jpg").convert("CMYK")
    assert decode_image(encode(cmyk, "JPEG")).shape[2] == 3
    gray = photo("coffee.jpg").convert("L")
    out = decode_image(encode(gray, "PNG"))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_animated_gif_uses_first_frame():
    a, b = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode(a, "GIF", save_all=True, append_images=[b])
    assert decode_image(data)[0, 0, 0] > 200


@pytest.mark.parametrize(("data", "kind"), [
    (b"plain text", "not_an_image"),
    (png_with_declared_size(50_000, 50_000), "too_large"),
])
def test_broken_inputs_name_their_kind(data, kind):
    with pytest.raises(DecodeError) as err:
        decode_image(data)
    assert err.value.kind == kind


def test_truncated_jpeg():
    data = encode(photo("astronaut.jpg"), "JPEG")
    with pytest.raises(DecodeError) as err:
        decode_image(data[: len(data) // 2])
    assert err.value.kind == "truncated"


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert decode_image(data, max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(DecodeError, match="exceeds 9999 pixels"):
        decode_image(data, max_pixels=9_999)
