"""Image preprocessing (NumPy tier): the reference PIL backend's pixel values for pictures of every mode
(tests/goldens/vision_image.safetensors, from SiglipImageProcessorPil in transformers 5.24), conversions
derived by hand, settings, and bad input."""
import json

import numpy as np
import pytest
from PIL import Image

from minig3n.errors import ConfigError, InputError
from tests.adapters import vision as V
from tests.golden_io import load_golden, rel_err
from tests.vision_test_images import SMALL_CONFIGS, make_arrays, make_images

pytestmark = pytest.mark.vision


@pytest.fixture(scope="module")
def golden():
    return load_golden("vision_image")


@pytest.mark.parametrize("config", sorted(SMALL_CONFIGS))
def test_every_mode_matches_reference_pil_backend(golden, config):
    """RGB, RGBA, LA, L, P (with and without transparency), CMYK, I;16, 1-bit and arrays (HWC 1/3/4, CHW),
    sizes 1x1 .. 97x53: equal to the reference PIL backend to <= 1e-6 (same PIL calls, same rescale)."""
    items = list(make_images().items()) + list(make_arrays().items())
    errs = {name: rel_err(V.run_preprocess_image(im, SMALL_CONFIGS[config]), golden.out32[f"{config}.{name}"])
            for name, im in items}
    assert len(errs) == 15
    worst = max(errs, key=errs.get)
    assert errs[worst] <= 1e-6, f"{worst}: {errs[worst]:.2e}"


def test_defaults_are_the_official_gemma3n_settings():
    """Official preprocessor_config.json (written by convert_gemma3n_weights.py): 768 x 768, BILINEAR (2),
    rescale 1/255, no normalisation, RGB conversion on."""
    c = V.run_load_image_config(None)
    assert (c.height, c.width, c.resample) == (768, 768, 2)
    assert (c.do_rescale, c.do_normalize, c.do_convert_rgb) == (True, False, True)
    assert c.rescale_factor == 1 / 255
    x = V.run_preprocess_image(np.full((5, 7, 3), 51, np.uint8))
    assert x.shape == (3, 768, 768) and x.dtype == np.float32
    assert np.all(x == np.float32(51 / 255))     # a flat image stays flat: 51/255 = 0.2 everywhere


def _two_by_two_rgba():
    """Opaque red, transparent green, opaque blue, transparent (10, 20, 30)."""
    a = np.array([[[255, 0, 0, 255], [0, 255, 0, 0]], [[0, 0, 255, 255], [10, 20, 30, 0]]], np.uint8)
    return a, Image.fromarray(a)


NO_RESIZE = {"size": {"height": 2, "width": 2}, "resample": 2, "do_normalize": False}


def test_alpha_composited_on_white_for_images_and_arrays_by_hand():
    """A PIL image (or an HWC array) with transparency is composited onto white: an opaque pixel keeps its
    colour, a fully transparent one becomes (255, 255, 255), whatever its colour channels hold. Resizing
    2x2 -> 2x2 changes nothing, so the output is the composite / 255."""
    a, im = _two_by_two_rgba()
    want = np.array([[[255, 0, 0], [255, 255, 255]], [[0, 0, 255], [255, 255, 255]]], np.float64) / 255
    want = np.moveaxis(want, -1, 0).astype(np.float32)
    np.testing.assert_array_equal(V.run_preprocess_image(im, NO_RESIZE), want)
    np.testing.assert_array_equal(V.run_preprocess_image(a, NO_RESIZE), want)


def test_alpha_dropped_for_files_by_hand(tmp_path):
    """The reference's file loader (``load_image``) calls ``convert("RGB")``, which *drops* alpha instead of
    compositing: the transparent pixels keep their stored colour, (0, 255, 0) and (10, 20, 30)."""
    a, im = _two_by_two_rgba()
    im.save(tmp_path / "x.png")
    want = np.moveaxis(a[..., :3].astype(np.float64) / 255, -1, 0).astype(np.float32)
    np.testing.assert_array_equal(V.run_preprocess_image(tmp_path / "x.png", NO_RESIZE), want)
    np.testing.assert_array_equal(V.run_preprocess_image(str(tmp_path / "x.png"), NO_RESIZE), want)


def test_greyscale_and_16_bit_by_hand():
    """L: each grey value g becomes (g, g, g). I;16: ``convert('RGB')`` saturates at 255: 1000 -> 255, 7 -> 7."""
    g = Image.fromarray(np.array([[0, 128], [64, 255]], np.uint8))
    x = V.run_preprocess_image(g, NO_RESIZE)
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2])
    np.testing.assert_array_equal(x[0] * 255, np.array([[0, 128], [64, 255]], np.float32))
    i16 = Image.fromarray(np.array([[1000, 7], [255, 256]], np.uint16))
    np.testing.assert_allclose(V.run_preprocess_image(i16, NO_RESIZE)[1] * 255, [[255, 7], [255, 255]], atol=1e-4)


def test_exif_orientation_applied_for_files(tmp_path):
    """A file whose EXIF orientation is 6 (rotate 90 degrees clockwise to view) comes out upright: a 3 x 2
    (W x H) picture is read as 2 x 3, its left column on top reversed."""
    a = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "r.png", exif=exif)
    x = V.run_preprocess_image(tmp_path / "r.png", {"do_resize": False, "do_normalize": False})
    assert x.shape == (3, 3, 2)
    np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8), np.moveaxis(np.rot90(a, -1), -1, 0))


def test_normalisation_and_config_file(tmp_path):
    """With do_normalize on, (v/255 - 0.5) / 0.5; keys missing from preprocessor_config.json take
    SiglipImageProcessor's class defaults (224 x 224, BICUBIC, normalise with mean/std 0.5)."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 2, "width": 2},
                                                                   "resample": 2}))
    c = V.run_load_image_config(tmp_path)
    assert (c.height, c.width, c.resample, c.do_normalize) == (2, 2, 2, True)
    x = V.run_preprocess_image(np.full((2, 2, 3), 255, np.uint8), tmp_path)
    np.testing.assert_allclose(x, 1.0, rtol=0, atol=1e-7)                 # (1 - 0.5) / 0.5
    d = V.run_load_image_config({"do_normalize": False})
    assert (d.height, d.width, d.resample) == (224, 224, 3)
    empty = tmp_path / "no_config"
    empty.mkdir()
    assert V.run_load_image_config(empty).height == 768      # a checkpoint without the file: official values


def test_batch_stacks_images():
    ims = [np.zeros((5, 6, 3), np.uint8), Image.new("L", (9, 2), 255)]  # (4, 6, 3) would read as CHW RGBA
    x = V.run_preprocess_images(ims, NO_RESIZE)
    assert x.shape == (2, 3, 2, 2) and x[0].max() == 0 and x[1].min() == 1


# ---- bad input ------------------------------------------------------------------------------------------

def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot read image file .*bad.png"):
        V.run_preprocess_image(tmp_path / "bad.png")
    with pytest.raises(InputError, match="image file not found: .*nothere.jpg"):
        V.run_preprocess_image(tmp_path / "nothere.jpg")


@pytest.mark.parametrize("bad, match", [
    (Image.new("RGB", (0, 3)), "image is empty: 0 x 3"),
    (np.zeros((5, 5), np.uint8), "3 axes.*add a channel axis"),
    (np.zeros((1, 5, 5, 3), np.uint8), "3 axes"),
    (np.zeros((5, 5, 2), np.uint8), "channel axis"),
    (np.zeros((0, 5, 3), np.uint8), "image is empty"),
    (np.zeros((5, 5, 3), np.float32), "integers 0..255"),
    (np.full((5, 5, 3), 300, np.int32), r"0\.\.255, got \[300, 300\]"),
    (12, "file path, a PIL image or an array"),
])
def test_bad_images_raise_input_error(bad, match):
    with pytest.raises(InputError, match=match):
        V.run_preprocess_image(bad)


def test_bad_configs_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="do_center_crop"):
        V.run_load_image_config({"do_center_crop": True})
    with pytest.raises(ConfigError, match="'size' must be"):
        V.run_load_image_config({"size": {"shortest_edge": 768}})
    (tmp_path / "p.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not a JSON preprocessor config"):
        V.run_load_image_config(tmp_path / "p.json")
