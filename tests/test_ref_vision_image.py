"""Image preprocessing against the live reference processors (transformers 5.24), official Gemma 3n
settings (768 x 768, BILINEAR, rescale 1/255, no normalisation):

* ``SiglipImageProcessorPil`` (PIL backend): equal to <= 1e-6 for every mode, size and input kind
  (PIL image, array, file path, checkpoint directory with preprocessor_config.json);
* ``SiglipImageProcessor`` (the default torchvision backend, resizing uint8 tensors with its own
  antialiased kernel): the PIL backend's difference to it is measured and bounded, not zero; minig3n's own
  torchvision backend (its default) equals it exactly (``test_matches_torchvision_backend_exactly``).
"""
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from tests.adapters import vision as V
from tests.reference import goldens_vision as gv
from tests.vision_test_images import make_arrays, make_images

pytestmark = [pytest.mark.reference, pytest.mark.vision]

OFFICIAL = gv.OFFICIAL_PREPROCESSOR


def _ref(img, backend, config=OFFICIAL):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(gv.reference_processor(config, backend)(img, return_tensors="np")["pixel_values"][0])


def _inputs(tmp_path):
    items = dict(make_images()) | dict(make_arrays())
    # files: the reference opens them with load_image (EXIF transpose, convert('RGB'): alpha dropped)
    for name in ("rgba_33x47", "la_25x25", "p_transparent_36x26", "l_17x64", "i16_28x22", "rgb_97x53"):
        path = tmp_path / f"{name}.png"
        make_images()[name].save(path)
        items[f"file_{name}"] = str(path)
    jpg = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    make_images()["rgb_40x30"].save(jpg, exif=exif, quality=95)
    items["file_rotated_jpg"] = str(jpg)
    return items


def test_matches_pil_backend_exactly(tmp_path):
    errs = {}
    for name, img in _inputs(tmp_path).items():
        got, want = V.run_preprocess_image(img), _ref(img, "pil")
        assert got.shape == want.shape == (3, 768, 768) and got.dtype == np.float32
        errs[name] = float(np.max(np.abs(got - want)))
    worst = max(errs, key=errs.get)
    print(f"PIL backend: {len(errs)} inputs, max |diff| {errs[worst]:.1e} ({worst})")
    assert errs[worst] <= 1e-6


# Files the torchvision backend decodes differently from PIL (torchvision.io.decode_image, RGB mode):
# a 16-bit PNG keeps its 16-bit values (pixel values up to 4.7 after "rescaling" by 1/255), and a palette
# PNG with a transparent entry is expanded differently (up to 251/255 apart). Neither is a resampling
# difference; minig3n follows the PIL backend's load_image there (see test_matches_pil_backend_exactly).
TV_DECODES_DIFFERENTLY = {"file_i16_28x22", "file_p_transparent_36x26"}


def test_difference_to_torchvision_backend_is_bounded(tmp_path):
    """The default (torchvision) backend resizes uint8 tensors with torchvision's antialiased bilinear
    kernel and rounds back to uint8; it composites 4-channel arrays in float and truncates (the PIL path
    rounds). Measured over 20 inputs: at most 1/255 apart, the mean far below (printed)."""
    diffs, means, other = {}, {}, {}
    for name, img in _inputs(tmp_path).items():
        got, want = V.run_preprocess_image(img), _ref(img, "torchvision")
        assert got.shape == want.shape
        d = np.abs(got.astype(np.float64) - want)
        if name in TV_DECODES_DIFFERENTLY:
            other[name] = float(d.max())
            continue
        diffs[name], means[name] = float(d.max()), float(d.mean())
    worst = max(diffs, key=diffs.get)
    print(f"torchvision backend: max |diff| {diffs[worst]:.2e} = {diffs[worst] * 255:.2f}/255 ({worst}); "
          f"largest mean |diff| {max(means.values()) * 255:.3f}/255 ({max(means, key=means.get)}); "
          f"decoded differently: " + ", ".join(f"{k} {v * 255:.0f}/255" for k, v in other.items()))
    assert len(diffs) == 20
    assert diffs[worst] <= 1 / 255 + 1e-6
    assert max(means.values()) <= 0.3 / 255


def test_reads_preprocessor_config_like_from_pretrained(tmp_path):
    """A checkpoint directory's preprocessor_config.json (the official one, plus the audio feature
    extractor's keys that share the file) gives the same pixels as the reference loaded from it; so does a
    file that leaves keys out (class defaults apply on both sides)."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    img = make_images()["rgba_33x47"]
    for cfg in (dict(OFFICIAL, feature_size=128, sampling_rate=16000, processor_class="Gemma3nProcessor"),
                {"size": {"height": 40, "width": 24}}):
        d = tmp_path / f"ck{len(cfg)}"
        d.mkdir()
        (d / "preprocessor_config.json").write_text(json.dumps(cfg))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = SiglipImageProcessorPil.from_pretrained(d)(img, return_tensors="np")["pixel_values"][0]
        got = V.run_preprocess_image(img, d)
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) <= 1e-6


def test_matches_torchvision_backend_exactly(tmp_path):
    """minig3n's torchvision backend (its default) against the live ``SiglipImageProcessor`` (the reference's
    default backend) at the official 768 x 768 and with BICUBIC + normalisation at a small size: bit-identical on
    all 23 inputs, the two files the torchvision decoder reads differently from PIL included."""
    from minig3n.image import preprocess_image
    from tests.vision_test_images import SMALL_CONFIGS, write_image_files

    items = _inputs(tmp_path) | write_image_files(tmp_path / "more")
    for cfg in (OFFICIAL, SMALL_CONFIGS["siglip_defaults"]):
        errs = {}
        for name, img in items.items():
            got, want = preprocess_image(img, cfg), _ref(img, "torchvision", cfg)
            assert got.shape == want.shape and got.dtype == np.float32
            errs[name] = float(np.max(np.abs(got - want)))
        print(f"torchvision backend ({cfg.get('resample', 3)}): {len(errs)} inputs, max |diff| {max(errs.values())}")
        assert len(errs) == 23 and max(errs.values()) == 0.0, {k: v for k, v in errs.items() if v}
