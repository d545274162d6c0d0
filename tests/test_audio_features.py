"""Log-mel features against the reference's published values and goldens (NumPy tier)."""
import numpy as np
import pytest

from minig3n.errors import InputError
from tests.adapters.audio import run_extract_features
from tests.golden_io import load_golden, rel_err

pytestmark = pytest.mark.audio


@pytest.fixture(scope="module")
def g():
    return load_golden("audio_features")


def test_published_reference_values():
    """transformers' own golden (tests/models/gemma3n/test_modeling_gemma3n.py, Gemma3nAudioModelTest):
    a 440 Hz sine over np.linspace(0, 1, 8000) and np.random.seed(0) randn(4000), 32 mel bins,
    padding "longest" to a multiple of 128 -> shape (2, 48, 32), input_features[0, 0, :5] as below at
    rtol = atol = 1e-5 (the test's stated tolerance), mask[1, 21:26] = [T, T, T, T, F]."""
    np.random.seed(0)
    s1 = np.sin(2 * np.pi * 440 * np.linspace(0, 1, 8000)).astype(np.float32)
    s2 = np.random.randn(4000).astype(np.float32)
    feats, mask = run_extract_features([s1, s2], feature_size=32, padding="longest", pad_to_multiple_of=128)
    assert feats.shape == (2, 48, 32) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[0, 0, :5], [-5.733152, -5.337127, -4.916284, -4.378989, -3.7622747],
                               rtol=1e-5, atol=1e-5)
    assert mask.shape == (2, 48) and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask[1, 21:26], [True, True, True, True, False])


@pytest.mark.parametrize("case", ["short", "hop", "batch", "maxlen", "dither"])
def test_against_reference_goldens(g, case):
    """Default 128-bin extractor; float32 output within 1e-5 of the reference (README tolerance; on the
    pinned NumPy it is bit-exact), masks identical."""
    waves = [g.inputs[f"{case}.wave{i}"] for i in range(3) if f"{case}.wave{i}" in g.inputs]
    kw = dict(g.meta["cases"][case])
    feats, mask = run_extract_features(waves, **kw)
    want = g.out32[f"{case}.features"]
    assert feats.shape == want.shape
    if want.size:
        assert rel_err(feats, want) <= 1e-5
    np.testing.assert_array_equal(mask, g.out32[f"{case}.mask"].astype(bool))


def test_shorter_than_one_frame_gives_no_frames(g):
    """300 samples pad to 384 < 513: (384 - 513) // 160 + 1 <= 0 frames, as the reference returns."""
    feats, mask = run_extract_features([g.inputs["short.wave0"]])
    assert feats.shape == (1, 0, 128) and mask.shape == (1, 0)


def test_thirty_seconds_truncated(g):
    """31 s of seeded noise: truncated to 480000 samples -> (480000 - 513) // 160 + 1 = 2997 frames.
    Stored: every 37th frame and each frame's sum over bins (1e-5 relative, README tolerance)."""
    m = g.meta["long"]
    x = np.random.RandomState(m["seed"]).randn(m["samples"]).astype(np.float32) * np.float32(m["scale"])
    feats, mask = run_extract_features(x)
    assert list(feats.shape) == m["shape"] == [1, 2997, 128]
    assert rel_err(feats[:, ::m["row_stride"]], g.out32["long.rows"]) <= 1e-5
    assert rel_err(feats.astype(np.float64).sum(-1), g.out32["long.frame_sums"]) <= 1e-5
    np.testing.assert_array_equal(mask, g.out32["long.mask"].astype(bool))


def test_silence_and_mask_by_hand():
    """Derived by hand. Silence: every mel energy is 0 < 1e-5, so every value is ln(1e-5) = -11.512925.
    Batch of 1000 and 200 samples: padded to 1024 (multiple of 128) -> (1024 - 513) // 160 + 1 = 4
    frames; frame i is valid iff its first sample 160 i is real: all 4 for the first clip
    (480 < 1000), frames 0 and 1 only for the second (160 < 200 <= 320)."""
    feats, mask = run_extract_features([np.zeros(1000, np.float32), np.zeros(200, np.float32)])
    assert feats.shape == (2, 4, 128)
    np.testing.assert_allclose(feats, np.float32(np.log(1e-5)), rtol=0, atol=0)
    np.testing.assert_array_equal(mask, [[True] * 4, [True, True, False, False]])


def test_dither_is_seeded():
    """dither > 0 adds noise: same seed -> identical features, another seed -> different ones."""
    x = np.random.RandomState(0).randn(4000).astype(np.float32) * 0.1
    a, _ = run_extract_features(x, dither=0.01, seed=1)
    b, _ = run_extract_features(x, dither=0.01, seed=1)
    c, _ = run_extract_features(x, dither=0.01, seed=2)
    plain, _ = run_extract_features(x)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0 and np.abs(a - plain).max() > 0


def test_single_waveform_equals_batch_of_one():
    x = np.random.RandomState(1).randn(3000).astype(np.float64)
    a, ma = run_extract_features(x)
    b, mb = run_extract_features([x])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)


@pytest.mark.parametrize("bad, kw, words", [
    (np.zeros(0, np.float32), {}, "empty"),
    (np.array([0.0, np.nan, 0.1]), {}, "NaN"),
    (np.zeros((1, 2, 3)), {}, "shape"),
    ([np.zeros(100), np.zeros((2, 2))], {}, "1-D"),
    (np.zeros(1000), {"sampling_rate": 8000}, "16000"),
    (np.zeros(1000), {"padding": "sideways"}, "padding"),
    ([np.zeros(1000), np.zeros(900)], {"padding": "do_not_pad"}, "equal length"),
    (np.zeros(5000), {"padding": "max_length", "max_length": 1000, "truncation": False}, "longer"),
    ("hello", {}, "array"),
])
def test_bad_input(bad, kw, words):
    with pytest.raises(InputError, match=words):
        run_extract_features(bad, **kw)
