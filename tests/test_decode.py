"""The one decoder: bad files give short reasons, odd modes give the right pixels, headers are checked first."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from imagegen import flip_png_crc, half_white, jpeg_bytes, noise, png_bytes, png_header_only, save, with_orientation
from picstory.data.decode import DecodeError, ImageInfo, decode_image, is_gray_mode, probe


def reason_of(src, **kwargs) -> str:
    with pytest.raises(DecodeError) as info:
        decode_image(src, **kwargs)
    assert str(info.value) == info.value.reason
    return info.value.reason


# ---- bad files --------------------------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    assert reason_of(p) == "empty file"
    assert reason_of(b"") == "empty file"


def test_truncated_jpeg(tmp_path):
    data = jpeg_bytes(noise(64, 80))
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    assert reason_of(p) == "truncated JPEG"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the decoder did not flip PIL's global to get there


def test_text_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("these are my holiday notes, not a photo\n")
    assert reason_of(p) == "not an image"
    with pytest.raises(DecodeError, match="not an image"):
        probe(p)


@pytest.mark.parametrize("chunk", [b"IHDR", b"IDAT"])
def test_png_with_bad_crc(tmp_path, chunk):
    good = png_bytes(Image.fromarray(noise(20, 30)))
    p = tmp_path / "bad.png"
    p.write_bytes(flip_png_crc(good, chunk))
    assert reason_of(p) == "corrupt PNG (bad CRC)"
    assert decode_image(good).shape == (20, 30, 3)  # the same file with its CRC intact is fine


def test_huge_header_rejected_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(20000, 20000))  # 4e8 px: beyond PIL's own hard limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning noise either
        assert reason_of(p) == "too large: 20000×20000"
        with pytest.raises(DecodeError, match="too large: 20000×20000"):
            probe(p)
        # between PIL's warning and error thresholds our limit answers, also where warnings are errors
        assert reason_of(png_header_only(10000, 10000)) == "too large: 10000×10000"
    with warnings.catch_warnings(record=True) as seen:
        assert reason_of(png_header_only(10000, 10000)) == "too large: 10000×10000"
        probe(png_header_only(9000, 9000), max_pixels=10**8)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]


def test_max_pixels_per_call():
    data = jpeg_bytes(noise(30, 40))
    assert reason_of(data, max_pixels=40 * 30 - 1) == "too large: 40×30"
    assert decode_image(data, max_pixels=40 * 30).shape == (30, 40, 3)


def test_missing_file(tmp_path):
    assert reason_of(tmp_path / "nope.png").startswith("cannot read: ")


# ---- modes ------------------------------------------------------------------------------------------------------


def test_cmyk_jpeg_gives_sensible_rgb(tmp_path):
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:, :16] = (220, 30, 30)  # red left, blue right
    rgb[:, 16:] = (30, 30, 220)
    p = save(tmp_path / "cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    assert Image.open(p).mode == "CMYK"
    out = decode_image(p).astype(int)
    assert out.shape == (16, 32, 3)
    assert np.abs(out[4:12, 2:12] - (220, 30, 30)).max() < 40
    assert np.abs(out[4:12, 20:30] - (30, 30, 220)).max() < 40


def test_16_bit_png_scaled_not_saturated(tmp_path):
    grad = np.linspace(0, 65535, 256).round().astype(np.uint16)[None, :].repeat(4, axis=0)
    p = save(tmp_path / "deep.png", Image.fromarray(grad))
    assert probe(p).mode.startswith("I")
    out = decode_image(p)
    assert out.shape == (4, 256, 1)
    assert out.max() == 255 and out.min() == 0
    assert abs(int(out[0, 128, 0]) - 128) <= 1
    assert len(np.unique(out)) > 250  # a clipped decode would be almost all 255


def tiff_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "TIFF")
    return buf.getvalue()


def test_32_bit_int_and_float_modes():
    i32 = Image.fromarray(np.array([[0, 32768, 65535]], np.int32), "I")
    assert decode_image(tiff_bytes(i32))[0, :, 0].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[-1000, 0, 1000]], np.int32), "I")  # outside 16 bits: stretched, not clipped
    assert decode_image(tiff_bytes(wide))[0, :, 0].tolist() == [0, 128, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    assert decode_image(tiff_bytes(f))[0, :, 0].tolist() == [0, 128, 255]


def test_bilevel_mode_1():
    im = Image.fromarray(np.array([[0, 255, 0, 255]], np.uint8)).convert("1")
    assert decode_image(png_bytes(im))[0, :, 0].tolist() == [0, 255, 0, 255]


@pytest.mark.parametrize("orientation, expect_shape, white", [
    (3, (20, 40, 3), "bottom"),  # rotated 180°: the stored top is shown at the bottom
    (6, (40, 20, 3), "right"),  # rotate 90° clockwise to view: the stored top ends up on the right
    (8, (40, 20, 3), "left"),
])
def test_exif_orientation_applied(tmp_path, orientation, expect_shape, white):
    p = tmp_path / "rot.jpg"
    p.write_bytes(with_orientation(half_white(40, 20), orientation))
    out = decode_image(p)[..., 0].astype(int)
    assert out.shape == expect_shape[:2]
    h, w = out.shape
    halves = {"bottom": (out[h // 2 + 2:], out[: h // 2 - 2]), "right": (out[:, w // 2 + 2:], out[:, : w // 2 - 2]),
              "left": (out[:, : w // 2 - 2], out[:, w // 2 + 2:])}
    bright, dark = halves[white]
    assert bright.mean() > 240 and dark.mean() < 15
    info = probe(p)
    assert info.exif_rotated and (info.height, info.width) == expect_shape[:2]


def test_palette_with_transparency_composited_on_white():
    p = Image.new("P", (4, 2))
    p.putpalette([10, 200, 10] + [0, 0, 255] * 255)
    p.putdata([0, 0, 1, 1, 0, 0, 1, 1])
    p.info["transparency"] = 1
    out = decode_image(png_bytes(p))
    assert out.shape == (2, 4, 3)
    assert out[0, 0].tolist() == [10, 200, 10]
    assert out[0, 2].tolist() == [255, 255, 255]  # transparent index → white, not the palette's blue
    plain = Image.new("P", (2, 1))
    plain.putpalette([0, 0, 255] * 256)
    assert decode_image(png_bytes(plain))[0, 0].tolist() == [0, 0, 255]


def test_la_and_rgba_composited_on_white():
    la = Image.fromarray(np.array([[[0, 255], [0, 0], [0, 128]]], np.uint8), "LA")
    out = decode_image(png_bytes(la))
    assert out.shape == (1, 3, 1)  # gray with alpha stays one channel
    assert out[0, :, 0].tolist() == [0, 255, 127]
    rgba = Image.fromarray(np.array([[[200, 0, 0, 255], [200, 0, 0, 0], [200, 0, 0, 128]]], np.uint8), "RGBA")
    out = decode_image(png_bytes(rgba))
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert np.abs(out[0, 2].astype(int) - (227, 127, 127)).max() <= 1


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert probe(p).frames == 3
    out = decode_image(p)
    assert out.shape == (8, 8, 3)
    assert out[4, 4].tolist() == [255, 0, 0]


def test_channels_auto_and_forced():
    gray = png_bytes(Image.fromarray(noise(6, 5, c=1)))
    color = png_bytes(Image.fromarray(noise(6, 5)))
    assert decode_image(gray).shape == (6, 5, 1)
    assert decode_image(color).shape == (6, 5, 3)
    g3 = decode_image(gray, channels=3)
    assert g3.shape == (6, 5, 3) and (g3[..., 0] == g3[..., 2]).all()
    c1 = decode_image(color, channels=1)
    assert c1.shape == (6, 5, 1)
    expect = np.asarray(Image.fromarray(decode_image(color)).convert("L"))
    assert (c1[..., 0] == expect).all()
    assert is_gray_mode("I;16B") and is_gray_mode("LA") and not is_gray_mode("P") and not is_gray_mode("RGB")


def test_probe_reads_the_header():
    info = probe(jpeg_bytes(noise(30, 40)))
    assert info == ImageInfo(width=40, height=30, mode="RGB", format="JPEG", frames=1, exif_rotated=False)


# ---- draft ------------------------------------------------------------------------------------------------------


def test_draft_reduces_large_jpegs_but_never_below_the_request():
    data = jpeg_bytes(noise(600, 900))
    full = decode_image(data)
    small = decode_image(data, draft=(100, 100))
    assert full.shape == (600, 900, 3)
    assert small.shape[0] < 600 and small.shape[0] >= 100 and small.shape[1] >= 100
    assert decode_image(data, draft=(500, 500)).shape == (600, 900, 3)  # 2× reduction would go below 500
    assert decode_image(data, draft=(299, 100)).shape[1] >= 299
    assert decode_image(png_bytes(Image.fromarray(noise(60, 90))), draft=(10, 10)).shape == (60, 90, 3)


def test_draft_respects_orientation():
    data = with_orientation(noise(200, 600), 6)  # shown as 200 wide × 600 tall
    out = decode_image(data, draft=(100, 300))
    assert out.shape[1] >= 100 and out.shape[0] >= 300 and out.shape[0] < 600
