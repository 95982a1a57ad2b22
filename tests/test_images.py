"""Image decoding and fetching: formats, orientation, animation, limits, timeouts."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image

from gateway.config import ImageSettings, LimitSettings
from gateway.errors import InvalidRequest
from gateway.images import ImageLoader, decode_image
from tests.images_data import b64, data_uri, encode, gradient
from tests.servers import ImageHost, Route


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_every_supported_format_decodes_to_rgb(fmt: str) -> None:
    data = encode(gradient().convert("RGBA") if fmt == "PNG" else gradient(), fmt)
    image = decode_image(data, max_pixels=10_000, param="input[0].image")
    assert image.pixels.mode == "RGB"
    assert image.pixels.size == (48, 40)
    assert image.mime == Image.MIME[fmt]
    assert image.sha256 == hashlib.sha256(data).hexdigest()


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    data = encode(gradient(48, 40), "JPEG", exif=exif.tobytes())
    assert decode_image(data, max_pixels=10_000, param="p").pixels.size == (40, 48)


def test_gif_uses_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    buffer = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    pixel = decode_image(buffer, max_pixels=10_000, param="p").pixels.getpixel((8, 8))
    assert pixel == (255, 0, 0)


def test_pixel_cap() -> None:
    with pytest.raises(InvalidRequest) as error:
        decode_image(encode(gradient(100, 100), "PNG"), max_pixels=9_999, param="input[2].image")
    assert (error.value.code, error.value.param) == ("image_too_large", "input[2].image")


async def test_same_image_by_url_data_uri_and_base64_is_the_same_bytes(image_host: ImageHost) -> None:
    data = encode(gradient(seed=3), "PNG")
    url = image_host.add("/same.png", data)
    loader = ImageLoader(ImageSettings(allowed_private_networks=["127.0.0.1/32"]))
    try:
        images = [await loader.load(source, param="p") for source in (url, data_uri(data), b64(data))]
    finally:
        await loader.aclose()
    assert {image.sha256 for image in images} == {hashlib.sha256(data).hexdigest()}


async def test_slow_server_times_out(image_host: ImageHost) -> None:
    image_host.routes["/slow.png"] = Route(encode(gradient(), "PNG"), delay_s=2.0)
    loader = ImageLoader(ImageSettings(allowed_private_networks=["127.0.0.1/32"], fetch_timeout_s=0.3))
    try:
        with pytest.raises(InvalidRequest) as error:
            await loader.load(image_host.url("/slow.png"), param="input[0].image")
    finally:
        await loader.aclose()
    assert error.value.code == "image_fetch_failed"
    assert "timed out" in error.value.message


async def test_streamed_body_over_the_byte_cap_is_cut(image_host: ImageHost) -> None:
    image_host.add("/large.bmp", encode(gradient(200, 200), "BMP"))
    loader = ImageLoader(
        ImageSettings(allowed_private_networks=["127.0.0.1/32"]), LimitSettings(max_image_bytes=10_000)
    )
    try:
        with pytest.raises(InvalidRequest) as error:
            await loader.load(image_host.url("/large.bmp"), param="input[0].image")
    finally:
        await loader.aclose()
    assert error.value.code == "image_too_large"
