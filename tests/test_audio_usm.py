"""The USM audio encoder against the reference's goldens, module by module (NumPy tier).

Goldens: tiny random encoders on padded batches (tests/reference/goldens_audio.py). Each module is fed the
reference's own input for that module (``<module>:in``), so a failure points at one function.
Tolerances (tests/README.md): float64 vs the lifted float64 reference <= 1e-10, float32 <= 1e-5.
"""
import numpy as np
import pytest

from minig3n.config import AudioConfig
from minig3n.errors import InputError
from tests.adapters import audio as A
from tests.golden_io import load_golden, rel_err, tol32_whole_model

pytestmark = pytest.mark.audio

TOL = {"32": 1e-5, "64": 1e-10}
DT = {"32": np.float32, "64": np.float64}


@pytest.fixture(scope="module")
def tiny():
    return load_golden("audio_encoder_tiny")


@pytest.fixture(scope="module")
def ctx():
    return load_golden("audio_encoder_tiny_ctx")


def _cfg(g):
    return AudioConfig(**g.meta["config"])


def _sub(w, prefix):
    return {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}


def _out(g, tag):
    return g.out32 if tag == "32" else g.out64


@pytest.mark.parametrize("tag", ["32", "64"])
def test_cumulative_group_norm(tiny, tag):
    o = _out(tiny, tag)
    name = "subsample_conv_projection.conv_0.norm"
    got = A.run_cumulative_group_norm(o[name + ":in"], tiny.weights[name + ".weight"].astype(DT[tag]),
                                      _cfg(tiny).sscp_conv_group_norm_eps)
    assert rel_err(got, o[name]) <= TOL[tag]


@pytest.mark.parametrize("tag", ["32", "64"])
def test_subsample_conv_projection(tiny, tag):
    o = _out(tiny, tag)
    trace = {}
    got = A.run_subsample_conv_projection(tiny.inputs["features"].astype(DT[tag]),
                                          _sub(tiny.weights, "subsample_conv_projection."), _cfg(tiny), trace)
    assert rel_err(trace["subsample_conv_projection.conv_1"], o["subsample_conv_projection.conv_1"]) <= TOL[tag]
    assert rel_err(got, o["subsample_conv_projection"]) <= TOL[tag]


@pytest.mark.parametrize("tag", ["32", "64"])
@pytest.mark.parametrize("which", ["ffw_layer_start", "ffw_layer_end"])
def test_feed_forward(tiny, tag, which):
    o = _out(tiny, tag)
    name = f"conformer.0.{which}"
    got = A.run_feed_forward(o[name + ":in"], _sub(tiny.weights, name + "."), _cfg(tiny))
    assert rel_err(got, o[name]) <= TOL[tag]


@pytest.mark.parametrize("tag", ["32", "64"])
def test_local_attention(tiny, tag):
    """Includes padded queries whose whole window is padded (uniform attention over the block context)."""
    o = _out(tiny, tag)
    name = "conformer.0.attention.attn"
    mask = o["conformer.0:mask"].astype(bool)
    got = A.run_local_attention(o[name + ":in"], mask, _sub(tiny.weights, name + "."), _cfg(tiny))
    want = o[name]
    assert rel_err(got, want.reshape(*want.shape[:2], -1)) <= TOL[tag]


@pytest.mark.parametrize("tag", ["32", "64"])
def test_conformer_attention(tiny, tag):
    o = _out(tiny, tag)
    name = "conformer.0.attention"
    mask = o["conformer.0:mask"].astype(bool)
    got = A.run_conformer_attention(o[name + ":in"], mask, _sub(tiny.weights, name + "."), _cfg(tiny))
    assert rel_err(got, o[name]) <= TOL[tag]


@pytest.mark.parametrize("tag", ["32", "64"])
def test_light_conv1d(tiny, tag):
    o = _out(tiny, tag)
    name = "conformer.0.lconv1d"
    got = A.run_light_conv1d(o[name + ":in"], _sub(tiny.weights, name + "."), _cfg(tiny))
    assert rel_err(got, o[name]) <= TOL[tag]


@pytest.mark.parametrize("golden", ["tiny", "ctx"])
@pytest.mark.parametrize("tag", ["32", "64"])
def test_conformer_blocks(tiny, ctx, golden, tag):
    g = tiny if golden == "tiny" else ctx
    o = _out(g, tag)
    mask = o["conformer.0:mask"].astype(bool)
    cfg = _cfg(g)
    for i in range(cfg.conf_num_hidden_layers):
        name = f"conformer.{i}"
        got = A.run_conformer_block(o[name + ":in"], mask, _sub(g.weights, name + "."), cfg)
        assert rel_err(got, o[name]) <= TOL[tag], name


@pytest.mark.parametrize("golden", ["tiny", "ctx"])
@pytest.mark.parametrize("tag", ["32", "64"])
def test_audio_encoder_end_to_end(tiny, ctx, golden, tag):
    """Padded batch, end to end: outputs, output mask, and every traced block. Errors accumulate over the
    chain (SSCP + each conformer block), so float32 gets the whole-model tolerance sqrt(depth) * 1e-5
    (tests/golden_io.py:tol32_whole_model; measured worst over 4 OpenBLAS kernels x 1/2 threads: 1.24e-6)."""
    g = tiny if golden == "tiny" else ctx
    o = _out(g, tag)
    tol = TOL[tag] if tag == "64" else tol32_whole_model(1 + _cfg(g).conf_num_hidden_layers)
    trace = {}
    out, mask = A.run_audio_encoder(g.inputs["features"].astype(DT[tag]), g.inputs["mask_invalid"].astype(bool),
                                    g.weights, _cfg(g), trace)
    assert out.dtype == DT[tag]
    assert rel_err(out, o["out"]) <= tol
    np.testing.assert_array_equal(mask, o["out_mask"].astype(bool))
    assert mask.any() and not mask.all()  # the batch really is padded
    assert rel_err(trace["model.audio_tower.subsample_conv_projection"], o["subsample_conv_projection"]) <= TOL[tag]
    for i in range(_cfg(g).conf_num_hidden_layers):
        assert rel_err(trace[f"model.audio_tower.conformer.{i}"], o[f"conformer.{i}"]) <= tol
    np.testing.assert_array_equal(trace["model.audio_tower"], out)


def test_weight_shapes_match_reference(tiny, ctx):
    for g in (tiny, ctx):
        shapes = A.run_audio_weight_shapes(_cfg(g), prefix="")
        assert shapes == {k: tuple(v.shape) for k, v in g.weights.items()}


def test_cumulative_group_norm_by_hand():
    """Derived by hand: one frequency, two channels, two steps, x[t=0] = [1, 3], x[t=1] = [5, 7], w = 1.
    t=0: mu = 2, var = ((1-2)^2 + (3-2)^2) / 2 = 1.
    t=1: mu = (1+3+5+7) / 4 = 4; var = (2 + (5-4)^2 + (7-4)^2) / 4 = 3 (each step's squares around its
    own running mean; the textbook variance of [1, 3, 5, 7] would be 5).
    y = (x - mu) / sqrt(var + eps)."""
    x = np.array([[[[1.0, 3.0]], [[5.0, 7.0]]]])                    # [B=1, T=2, F=1, C=2]
    eps = 1e-3
    got = A.run_cumulative_group_norm(x, np.ones(2), eps)
    want = np.array([[[[-1.0, 1.0]] / np.sqrt(1 + eps), [[1.0, 3.0]] / np.sqrt(3 + eps)]])
    np.testing.assert_allclose(got, want, rtol=1e-15)


def test_constants_by_hand():
    """q-scale: 192^-0.5 / ln 2 = 0.0721688 * 1.4426950 = 0.1041175 (float32 0.10411754250526428, numerics
    doc 2.5). inv_timescales: 1 at i = 0, 1e-4 at the last index (exp(-ln(1e4))), float32."""
    assert float(A.run_q_scale(192)) == 0.10411754250526428
    inv = A.run_inv_timescales(1536)
    assert inv.dtype == np.float32 and inv.shape == (768,)
    assert inv[0] == 1.0 and abs(inv[-1] - 1e-4) < 1e-10


def test_thirty_seconds_gives_188_frames():
    """Derived by hand: 2997 mel frames -> ceil(2997/2) = 1499 -> ceil(1499/2) = 750 -> 750 / 4 -> 188
    outputs (numerics doc 2.6), with the output mask of frame j = the input mask at frame 16 j."""
    cfg = AudioConfig(input_feat_size=8, hidden_size=8, conf_num_attention_heads=2, conf_num_hidden_layers=1,
                      sscp_conv_channel_size=[2, 2], conf_conv_kernel_size=3)
    rng = np.random.RandomState(0)
    p = {k: rng.randn(*s).astype(np.float32) * 0.3 for k, s in A.run_audio_weight_shapes(cfg, "").items()}
    mask = np.zeros((1, 2997), bool)
    mask[0, 1601:] = True                                            # frames 1601.. are padding
    out, m = A.run_audio_encoder(rng.randn(1, 2997, 8).astype(np.float32), mask, p, cfg)
    assert out.shape == (1, 188, 8) and m.shape == (1, 188)
    np.testing.assert_array_equal(m[0], np.arange(188) * 16 > 1600)
    assert np.all(out[m] == 0) and np.all(np.abs(out[~m]).sum(-1) > 0)


@pytest.mark.parametrize("feats, mask, words", [
    (np.zeros((1, 10, 31), np.float32), np.zeros((1, 10), bool), "shape"),
    (np.zeros((10, 32), np.float32), np.zeros((10,), bool), "shape"),
    (np.zeros((1, 10, 32), np.float32), np.zeros((1, 10), np.int32), "bool"),
    (np.zeros((1, 10, 32), np.float32), np.zeros((1, 9), bool), "mask"),
    (np.zeros((1, 0, 32), np.float32), np.zeros((1, 0), bool), "too short"),
    (np.zeros((1, 10, 32), np.int64), np.zeros((1, 10), bool), "float"),
])
def test_bad_input(tiny, feats, mask, words):
    with pytest.raises(InputError, match=words):
        A.run_audio_encoder(feats, mask, tiny.weights, _cfg(tiny))
