"""Image preprocessing, the reference's default torchvision backend (NumPy tier): every test picture, array and
file against tests/goldens/vision_image_torchvision.safetensors (SiglipImageProcessor in transformers 5.24,
torchvision 0.29), and the rules that make it differ from the PIL backend, derived by hand."""
import numpy as np
import pytest
from PIL import Image

from minig3n.errors import ConfigError, InputError
from minig3n.image import ImageConfig, load_image_config, preprocess_image
from tests.golden_io import load_golden
from tests.vision_test_images import TORCHVISION_CONFIGS, make_arrays, make_images, write_image_files

pytestmark = pytest.mark.vision

@pytest.mark.parametrize("config", sorted(TORCHVISION_CONFIGS))
def test_every_input_matches_reference_torchvision_backend_exactly(tmp_path, config):
    """15 pictures and arrays (every mode, 1x1 .. 97x53) and 8 files (alpha, palette transparency, 16-bit grey,
    EXIF-rotated JPEG and PNG): bit-identical to the reference's torchvision backend, upscaled and downscaled,
    BILINEAR and BICUBIC (the 16-bit file is downscaled 28x22 -> 12x16 by the BICUBIC config)."""
    g = load_golden("vision_image_torchvision")
    cfg = TORCHVISION_CONFIGS[config]
    items = list(make_images().items()) + list(make_arrays().items()) + list(write_image_files(tmp_path).items())
    diffs = {}
    for name, im in items:
        got, want = preprocess_image(im, cfg, backend="torchvision"), g.out32[f"{config}.{name}"]
        assert got.shape == want.shape and got.dtype == np.float32
        diffs[name] = float(np.max(np.abs(got - want)))
    assert len(diffs) == 23
    assert max(diffs.values()) == 0.0, {k: v for k, v in diffs.items() if v}


def test_default_is_torchvision_like_the_reference():
    """AutoImageProcessor picks the torchvision backend when torchvision is installed; minig3n's default is the
    same, the PIL backend is one argument away."""
    assert ImageConfig().backend == "torchvision" and load_image_config(None).backend == "torchvision"
    a = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    cfg = {"size": {"height": 20, "width": 24}, "resample": 2, "do_normalize": False}
    assert np.array_equal(preprocess_image(a, cfg), preprocess_image(a, cfg, backend="torchvision"))
    assert not np.array_equal(preprocess_image(a, cfg), preprocess_image(a, cfg, backend="pil"))
    with pytest.raises(InputError, match="image backend must be one of torchvision, pil"):
        preprocess_image(a, cfg, backend="cv2")


def test_bilinear_upscale_by_hand():
    """[0, 255] -> 4 pixels, BILINEAR: output centres at 0.25, 0.75, 1.25, 1.75 input pixels; the triangle taps
    give weights (1), (0.75, 0.25), (0.25, 0.75), (1), stored with 14 fraction bits (the largest weight, 1, must
    stay below 2**15 when doubled): 0, (4096 * 255 + 8192) >> 14 = 64, (12288 * 255 + 8192) >> 14 = 191, 255."""
    a = np.zeros((2, 2, 3), np.uint8)          # (H, W, C); a first axis of 1 would read as channels first
    a[:, 1] = 255
    x = preprocess_image(a, {"size": {"height": 2, "width": 4}, "resample": 2, "do_normalize": False,
                             "do_rescale": False}, backend="torchvision")
    np.testing.assert_array_equal(x[0, 0], [0, 64, 191, 255])


def test_four_channel_array_is_truncated_not_rounded():
    """An RGBA array is composited in float32 and converted back with ``* 255.999`` and truncation: colour 10 at
    alpha 250 -> 10/255 * 250/255 + 5/255 = 0.058055... -> * 255.999 = 14.86 -> 14; the PIL backend rounds
    250/255 * 10 + 5/255 * 255 = 14.804 -> 15."""
    a = np.zeros((2, 2, 4), np.uint8)
    a[..., :3], a[..., 3] = 10, 250
    cfg = {"size": {"height": 2, "width": 2}, "do_rescale": False, "do_normalize": False}
    assert preprocess_image(a, cfg, backend="torchvision")[0, 0, 0] == 14
    assert preprocess_image(a, cfg, backend="pil")[0, 0, 0] == 15


def test_files_decode_like_torchvision(tmp_path):
    """decode_image(RGB): a transparent palette entry keeps its colour (the PIL backend composites it onto
    white), and a 16-bit grey PNG keeps 16-bit values (1000 / 255 = 3.92 after rescaling; PIL saturates at 1)."""
    p = Image.frombytes("P", (2, 1), bytes([0, 1]))
    p.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png")
    cfg = {"do_resize": False, "do_rescale": False, "do_normalize": False}
    np.testing.assert_array_equal(preprocess_image(tmp_path / "p.png", cfg, backend="torchvision")[:, 0, 0],
                                  [10, 20, 30])
    np.testing.assert_array_equal(preprocess_image(tmp_path / "p.png", cfg, backend="pil")[:, 0, 0], [255] * 3)
    Image.fromarray(np.array([[1000, 7]], np.uint16)).save(tmp_path / "g.png")
    x = preprocess_image(tmp_path / "g.png", {"do_resize": False, "do_normalize": False}, backend="torchvision")
    np.testing.assert_allclose(x[:, 0, 0], np.float32(1000) * np.float32(1 / 255))
    assert preprocess_image(tmp_path / "g.png", {"do_resize": False, "do_normalize": False}, backend="pil").max() == 1


def test_unsupported_cases_say_so(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.bmp")
    with pytest.raises(InputError, match="a.bmp: the torchvision image backend decodes PNG, JPEG, GIF and WebP"):
        preprocess_image(tmp_path / "a.bmp", backend="torchvision")
    with pytest.raises(ConfigError, match="BILINEAR .* and BICUBIC"):
        preprocess_image(np.zeros((4, 4, 3), np.uint8), {"resample": 1}, backend="torchvision")
    with pytest.raises(InputError, match="file path, a PIL image or an array"):
        preprocess_image(12, backend="torchvision")
