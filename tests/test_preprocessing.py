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


def test_partial_alpha_is_blended_with_the_background(tmp_path):
    # alpha 0, 64, 128, 191, 255 over white: out = c * a/255 + 255 * (1 - a/255)
    alphas = np.array([0, 64, 128, 191, 255], np.uint8)
    rgba = np.zeros((1, 5, 4), np.uint8)
    rgba[0, :, :3] = (200, 40, 0)
    rgba[0, :, 3] = alphas
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    spec = PreprocessingSpec(image_size=(1, 5), channels=3)
    out = load_image(path, spec)[0].astype(float)
    a = alphas[:, None] / 255.0
    expected = np.array([200, 40, 0])[None, :] * a + 255 * (1 - a)
    assert np.abs(out - expected).max() <= 1, (out, expected)
    gray = load_image(path, PreprocessingSpec(image_size=(1, 5), channels=1))[0, :, 0].astype(float)
    lum = expected @ np.array([0.299, 0.587, 0.114])
    assert np.abs(gray - lum).max() <= 1.5, (gray, lum)


@pytest.mark.parametrize("mode, values, expected", [
    ("I", [0, 1000, 40000, 65535], [0, 4, 156, 255]),       # 32-bit integers beyond 8 bit: a 16-bit range
    ("I", [0, 17, 128, 255], [0, 17, 128, 255]),            # 32-bit integers within 0..255: as they are
    ("F", [0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),        # floats in 0..1
    ("F", [0.0, 17.0, 128.0, 255.0], [0, 17, 128, 255]),    # floats in 0..255
])
def test_modes_i_and_f_are_scaled_to_8_bit(tmp_path, mode, values, expected):
    dtype = np.int32 if mode == "I" else np.float32
    path = tmp_path / f"{mode}.tiff"
    Image.fromarray(np.array([values], dtype=dtype), mode).save(path)
    assert Image.open(path).mode == mode
    out = load_image(path, PreprocessingSpec(image_size=(1, 4), channels=1))
    assert out.dtype == np.uint8 and out.shape == (1, 4, 1)
    assert out[0, :, 0].tolist() == expected
    rgb = load_image(path, PreprocessingSpec(image_size=(1, 4), channels=3))
    assert rgb[0, :, 0].tolist() == rgb[0, :, 1].tolist() == rgb[0, :, 2].tolist() == expected


def test_exif_rotation_with_jpeg_draft_on_a_large_photo(tmp_path, monkeypatch):
    # stored 1600x1200 landscape, left half red and right half blue, EXIF orientation 6 (rotate 90 clockwise
    # to display): shown as a 1200x1600 portrait, red on top, blue below
    stored = np.zeros((1200, 1600, 3), np.uint8)
    stored[:, :800] = (220, 30, 30)
    stored[:, 800:] = (30, 30, 220)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "photo.jpg"
    img.save(path, quality=90, exif=exif.tobytes())
    from PIL import JpegImagePlugin
    sizes = []                                 # what the JPEG decoder produced after the draft request
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real_draft(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    drafted = load_image(path, PreprocessingSpec(image_size=(40, 30), channels=3))
    assert sizes == [(200, 150)]               # decoded at 1/8 scale, still over twice the target
    full = load_image(path, PreprocessingSpec(image_size=(40, 30), channels=3, jpeg_draft=False))
    assert drafted.shape == full.shape == (40, 30, 3)
    for out in (drafted, full):
        top, bottom = out[:18].reshape(-1, 3).mean(0), out[22:].reshape(-1, 3).mean(0)
        assert top[0] > 180 and top[2] < 70, top              # red on top
        assert bottom[2] > 180 and bottom[0] < 70, bottom     # blue below
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 3
