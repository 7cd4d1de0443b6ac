"""Decoding odd but valid images into the RGB the detector expects, and naming what is broken."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.pipeline_helpers import encode, photo, png_with_declared_size
from transforms.decoding import DecodeError, decode_image


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


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert (decode_image(encode(rgba, "PNG")) == 255).all()
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] * 256)
    assert (decode_image(encode(pal, "PNG", transparency=0)) == 255).all()


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
