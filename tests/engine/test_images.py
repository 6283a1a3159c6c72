"""Reading images: modes by their true range, alpha, and the bound on decoded pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sacam.errors import InputError
from sacam.images import load_image
from sacam.images import load_image as load_image_from_models
from tests.support.files import blank_1bit_png


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_load_image_is_still_importable_from_models() -> None:
    assert load_image_from_models is load_image


def test_16bit_grey_ramp_keeps_its_range() -> None:
    """A 0..65535 ramp maps to 0..255 (v / 257), not to 99.6% white."""
    ramp = (np.arange(256, dtype=np.uint16) * 257)[None, :].repeat(4, axis=0)
    src = Image.fromarray(ramp)
    assert src.mode == "I;16"
    rgb = np.asarray(load_image(_png_bytes(src)))
    assert rgb.shape == (4, 256, 3)
    expected = np.arange(256, dtype=np.uint8)  # 257 k / 257 = k exactly
    assert (rgb[..., 0] == expected).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert (rgb == 255).mean() == pytest.approx(1 / 256)


def test_16bit_rounds_to_nearest() -> None:
    # 128/257 = 0.498 -> 0; 129/257 = 0.502 -> 1; 65535 -> 255; 32767/257 = 127.5 -> 127 or 128
    values = np.array([[0, 128, 129, 385, 65535]], dtype=np.uint16)
    rgb = np.asarray(load_image(_png_bytes(Image.fromarray(values))))[0, :, 0]
    assert rgb.tolist() == [0, 0, 1, 1, 255]  # 385 / 257 = 1.498 -> 1


def test_32bit_int_and_float_greys() -> None:
    ints = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.int32))
    assert ints.mode == "I"
    assert np.asarray(load_image(_tiff_bytes(ints)))[0, :, 0].tolist() == [0, 100, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert np.asarray(load_image(_tiff_bytes(unit)))[0, :, 0].tolist() == [0, 128, 255]
    bytescale = Image.fromarray(np.array([[0.0, 100.4, 255.0]], dtype=np.float32))
    assert np.asarray(load_image(_tiff_bytes(bytescale)))[0, :, 0].tolist() == [0, 100, 255]
    nan = Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32))
    with pytest.raises(InputError, match="outside"):
        load_image(_tiff_bytes(nan))
    wide = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))
    with pytest.raises(InputError, match="0..65535"):
        load_image(_tiff_bytes(wide))


def _tiff_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "TIFF")
    return buf.getvalue()


def test_rgba_is_composited_on_the_background() -> None:
    arr = np.zeros((1, 3, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 0)  # red, fully transparent: background shows
    arr[0, 1] = (255, 0, 0, 255)  # red, opaque
    arr[0, 2] = (0, 0, 255, 102)  # blue at alpha 0.4 over white: 0.6 * 255 = 153
    data = _png_bytes(Image.fromarray(arr, "RGBA"))
    rgb = np.asarray(load_image(data)).astype(int)
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [255, 0, 0]
    assert np.abs(rgb[0, 2] - [153, 153, 255]).max() <= 1
    black = np.asarray(load_image(data, background=(0, 0, 0))).astype(int)
    assert black[0, 0].tolist() == [0, 0, 0]
    assert np.abs(black[0, 2] - [0, 0, 102]).max() <= 1


def test_la_and_palette_transparency() -> None:
    la = Image.fromarray(np.array([[[10, 0], [10, 255]]], dtype=np.uint8), "LA")
    assert np.asarray(load_image(_png_bytes(la)))[0].tolist() == [[255] * 3, [10] * 3]
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    rgb = np.asarray(load_image(_png_bytes(pal), background=(0, 255, 0)))
    assert rgb[0].tolist() == [[0, 255, 0], [200, 0, 0]]


def test_cmyk_uses_multiplicative_conversion() -> None:
    cmyk = Image.new("CMYK", (1, 1), (128, 0, 0, 128))
    buf = io.BytesIO()
    cmyk.save(buf, "TIFF")
    # R = 255 (1 - c)(1 - k) = 255 * 127/255 * 127/255 = 63.3; G = B = 127
    assert np.asarray(load_image(buf.getvalue()))[0, 0].tolist() == [63, 127, 127]


def test_max_pixels_bound_is_checked_before_decoding(tmp_path) -> None:
    path = tmp_path / "big.png"
    blank_1bit_png(path, 100, 50)
    assert load_image(path, max_pixels=5000).size == (100, 50)
    with pytest.raises(InputError, match=r"100×50 pixels, more than the limit of 4,999"):
        load_image(path, max_pixels=4999)


def test_30000_square_png_is_refused_as_input(tmp_path) -> None:
    path = tmp_path / "bomb.png"
    blank_1bit_png(path, 30000, 30000)
    assert path.stat().st_size < 1_000_000  # the file is small; its pixels are not
    with pytest.raises(InputError, match="too large"):
        load_image(path)


def test_12000_square_png_is_refused_by_the_default_limit(tmp_path) -> None:
    path = tmp_path / "large.png"
    blank_1bit_png(path, 12000, 12000)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(InputError, match="12000×12000 pixels, more than the limit"):
        load_image(path)


def test_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (4000, 3000), (200, 100, 50)).save(path, quality=90)
    # 4000×3000 = 12M pixels; 1/2 scale is 3M, 1/4 scale 1000×750 fits a 1M bound
    small = load_image(path, max_pixels=1_000_000)
    assert small.size == (1000, 750)
    assert np.abs(np.asarray(small).astype(int)[375, 500] - [200, 100, 50]).max() <= 3
    # toward what the preprocessing needs: the largest reduction still covering 224×224
    drafted = load_image(path, draft_size=(224, 224))
    assert drafted.size == (500, 375)
    assert load_image(path).size == (4000, 3000)
    # a PNG cannot be reduced on decode, so the same bound refuses it
    png = tmp_path / "photo.png"
    Image.open(path).save(png)
    with pytest.raises(InputError, match="more than the limit"):
        load_image(png, max_pixels=1_000_000)


# ---------------------------------------------------------------------- preprocessing
# A child process measures its own peak resident set around the preprocessing of
# extremely thin images: resizing the shorter side of a 1 × 6000 picture to 224 before
# cropping would allocate 224 × 1,344,000 RGBA pixels (1.2 GB).
_PEAK_SCRIPT = """
import resource, sys
from PIL import Image
from sacam.preprocess import Preprocess

pre = Preprocess(size=224)
pre.pixels(Image.new("RGB", (300, 200)))  # imports and first allocations done
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for size in ((1, 6000), (6000, 1)):
    for mode in ("crop", "squash"):
        x = Preprocess(size=224, resize=mode).pixels(Image.new("RGB", size, (200, 10, 30)))
        assert tuple(x.shape) == (3, 224, 224), x.shape
        assert int((x * 255).round()[0].min()) == 200 and int((x * 255).round()[2].max()) == 30
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start)
"""


def test_thin_images_cost_what_the_output_does() -> None:
    """1 × 6000 and 6000 × 1 pictures: the peak grows by megabytes, not a gigabyte."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    grown_kib = int(done.stdout.split()[-1])
    assert grown_kib < 48 * 1024, f"the peak grew by {grown_kib / 1024:.0f} MiB"


def test_thin_image_crop_matches_resize_then_crop_closely() -> None:
    """Past the whole-resize bound the crop box alone is resampled: the same picture."""
    from sacam.preprocess import MAX_RESIZED_AREA, Preprocess

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 2000)[:, None, None] * np.ones((1, 20, 3))
    noisy = np.clip(ramp + rng.normal(0, 3, ramp.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(noisy)  # 20 × 2000: resized whole it would be 224 × 22,400
    assert 224 * 22400 > MAX_RESIZED_AREA * 224 * 224
    got = (Preprocess(size=224).pixels(img) * 255).round().numpy().transpose(1, 2, 0)
    whole = np.asarray(img.resize((224, 22400), Image.Resampling.BICUBIC), dtype=np.float64)
    expected = whole[11088 : 11088 + 224]  # (22400 - 224) // 2
    assert np.abs(got - expected).max() <= 2
    assert np.abs(got - expected).mean() < 0.25


def test_ordinary_images_are_resized_whole_then_cropped() -> None:
    """Up to the bound the pixels are those of resize-then-crop, bit for bit."""
    from sacam.preprocess import Preprocess

    rng = np.random.default_rng(1)
    for w, h in ((333, 500), (500, 375), (224, 224), (3000, 224), (17, 40)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        scale = 224 / min(w, h)
        nw, nh = max(224, round(w * scale)), max(224, round(h * scale))
        left, top = (nw - 224) // 2, (nh - 224) // 2
        ref = img.resize((nw, nh), Image.Resampling.BICUBIC).crop(
            (left, top, left + 224, top + 224)
        )
        want = np.asarray(ref, dtype=np.float32) / 255.0
        got = Preprocess(size=224).pixels(img).numpy().transpose(1, 2, 0)
        assert np.array_equal(got, want), (w, h)
