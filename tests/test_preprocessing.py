"""preprocessing.load_image: the one function that turns a file into pixels."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgclf.errors import ImageError
from imgclf.preprocessing import PreprocessingSpec, load_image


def spec(h, w, channels=3):
    return PreprocessingSpec(image_size=(h, w), channels=channels)


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_is_scaled_not_clipped(tmp_path, channels):
    values = np.array([[0, 16384, 32768, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = load_image(tmp_path / "deep.png", spec(4, 4, channels))
    assert out.dtype == np.uint8 and out.shape == (4, 4, channels)
    row = out[0, :, 0].astype(int)
    assert abs(row[2] - 128) <= 1            # mid grey stays mid grey (clipping would give 255)
    assert row[0] == 0 and row[3] == 255 and abs(row[1] - 64) <= 1


def test_rgba_transparent_pixels_are_composited_on_white(tmp_path):
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., 0] = 255                        # red everywhere ...
    arr[:, 4:, 3] = 255                      # ... but only the right half is opaque
    Image.fromarray(arr, "RGBA").save(tmp_path / "alpha.png")
    out = load_image(tmp_path / "alpha.png", spec(8, 8))
    assert (out[:, :4] == 255).all()         # the hidden red does not show
    assert (out[:, 4:] == (255, 0, 0)).all()


def test_palette_transparency_is_composited(tmp_path):
    im = Image.new("P", (6, 6), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)   # index 0 red (transparent), 1 blue
    im.paste(1, (0, 0, 3, 6))
    im.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png", spec(6, 6))
    assert (out[:, 3:] == 255).all()
    assert (out[:, :3] == (0, 0, 255)).all()


def test_la_alpha_is_composited_in_grayscale(tmp_path):
    arr = np.zeros((4, 4, 2), np.uint8)       # black, fully transparent
    Image.fromarray(arr, "LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png", spec(4, 4, 1))
    assert out.shape == (4, 4, 1) and (out == 255).all()


@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "tiff"])
def test_exif_orientation_is_applied(tmp_path, ext):
    # stored 40 wide x 20 high: left half black, right half white. Orientation 6 = display rotated 90
    # degrees clockwise: 20 wide x 40 high, the black half on top.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    if ext == "tiff":  # TIFF keeps the orientation among its own tags, not in an EXIF block
        Image.fromarray(arr).save(tmp_path / "rot.tiff", tiffinfo={0x0112: 6})
    else:
        Image.fromarray(arr).save(tmp_path / f"rot.{ext}", exif=exif, quality=95)
    out = load_image(tmp_path / f"rot.{ext}", spec(40, 20)).astype(int)
    assert out.shape == (40, 20, 3)
    assert out[:15].mean() < 30 and out[25:].mean() > 225        # top black, bottom white
    assert abs(out[:, :8].mean() - out[:, 12:].mean()) < 30       # no left/right split any more


def test_cmyk_becomes_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.jpg", quality=95)   # pure red in CMYK
    assert Image.open(tmp_path / "red.jpg").mode == "CMYK"
    out = load_image(tmp_path / "red.jpg", spec(8, 8)).astype(int)
    assert out.shape == (8, 8, 3)
    r, g, b = out[..., 0].mean(), out[..., 1].mean(), out[..., 2].mean()
    assert r > 220 and g < 35 and b < 35


def test_grayscale_gives_one_channel_and_colour_gives_three(tmp_path):
    Image.new("L", (10, 6), 77).save(tmp_path / "g.png")
    one = load_image(tmp_path / "g.png", spec(12, 8, 1))
    three = load_image(tmp_path / "g.png", spec(12, 8, 3))
    assert one.shape == (12, 8, 1) and three.shape == (12, 8, 3)
    assert (one == 77).all() and (three == 77).all()


def test_colour_to_one_channel_is_luminance(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "r.png")
    out = load_image(tmp_path / "r.png", spec(4, 4, 1))
    assert out.shape == (4, 4, 1) and abs(int(out[0, 0, 0]) - 76) <= 1   # ITU-R 601: 0.299 * 255


def test_content_decides_format_and_first_frame_of_a_gif(tmp_path):
    Image.new("RGB", (5, 5), (0, 0, 255)).save(tmp_path / "really_png.jpg", format="PNG")
    assert (load_image(tmp_path / "really_png.jpg", spec(5, 5)) == (0, 0, 255)).all()
    frames = [Image.new("RGB", (5, 5), c).convert("P") for c in ((0, 255, 0), (255, 0, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert (load_image(tmp_path / "anim.gif", spec(5, 5)) == (0, 255, 0)).all()


def test_one_pixel_image_is_resized(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "dot.png")
    out = load_image(tmp_path / "dot.png", spec(16, 16))
    assert out.shape == (16, 16, 3) and (out == (10, 20, 30)).all()


@pytest.mark.parametrize("content, word", [
    (b"", "empty file"),
    (b"hello", "not an image"),
])
def test_unusable_files_raise_image_error_with_a_reason(tmp_path, content, word):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageError) as e:
        load_image(p, spec(4, 4))
    assert e.value.path == str(p) and word in e.value.reason


def test_truncated_and_bomb_and_missing(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.jpg", spec(4, 4))
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="too large"):
        load_image(tmp_path / "bomb.png", spec(4, 4))
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png", spec(4, 4))
