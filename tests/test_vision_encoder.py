"""MobileNetV5 encoder (NumPy tier): primitives derived by hand, the block-spec decoding, and a small
custom-spec encoder against the reference's fixtures (tests/goldens/vision_encoder.safetensors, written by
tests/reference/goldens_vision.py from timm 1.0.31 / transformers 5.24)."""
import numpy as np
import pytest

from minig3n.config import VisionConfig
from minig3n.errors import CheckpointError, ConfigError, InputError
from tests.adapters import vision as V
from tests.golden_io import load_golden, rel_err, tol32_whole_model

pytestmark = pytest.mark.vision

TOL64 = 1e-10   # float64 against timm in float64 (timm has no float32 island on this path)
TOL32 = 1e-5    # float32 against timm in float32, per module, relative to the module's output scale


@pytest.fixture(scope="module")
def golden():
    return load_golden("vision_encoder")


def _cfg(g, case):
    d = dict(g.meta["vision_config"])
    d["model_args"] = dict(d["model_args"], msfa_output_resolution=g.meta["cases"][case]["msfa_output_resolution"])
    return VisionConfig.from_dict(d)


def _weights(g, dtype):
    return {k[len("timm_model."):]: v.astype(dtype) for k, v in g.weights.items() if k.startswith("timm_model.")}


def _sub(p, name):
    return {k[len(name) + 1:]: v for k, v in p.items() if k.startswith(name + ".")}


# ---- primitives, derived by hand ------------------------------------------------------------------------

def test_same_padding_by_hand():
    """TF "SAME": out = ceil(n/s), total = max((out-1)*s + (k-1)*d + 1 - n, 0), before = total // 2.
    n=768, k=3, s=2: out 384, total = 383*2 + 3 - 768 = 1 -> (0, 1): the extra row goes bottom/right.
    n=768, k=5, s=2: total = 766 + 5 - 768 = 3 -> (1, 2).   n=7, k=3, s=2: out 4, total = 6 + 3 - 7 = 2 -> (1, 1).
    n=10, k=5, s=1: total 4 -> (2, 2) (symmetric).   n=9, k=3, s=1, d=2: total = 8 + 5 - 9 = 4 -> (2, 2).
    n=24, k=3, s=2 (the MQA kv down-sampling at 48 -> 24 is the same case as 768): (0, 1)."""
    assert V.run_same_padding(768, 3, 2) == (0, 1)
    assert V.run_same_padding(768, 5, 2) == (1, 2)
    assert V.run_same_padding(7, 3, 2) == (1, 1)
    assert V.run_same_padding(10, 5, 1) == (2, 2)
    assert V.run_same_padding(9, 3, 1, 2) == (2, 2)
    assert V.run_same_padding(24, 3, 2) == (0, 1)


def test_strided_conv_pads_bottom_right_by_hand():
    """A 4x4 image holding 0..15 row-major, a 3x3 all-ones kernel, stride 2: padding (0, 1) on both axes, so
    the windows start at rows/cols 0 and 2 and the second one reaches into the zero row/col 4:
    top-left = 0+1+2+4+5+6+8+9+10 = 45; top-right = 2+3+6+7+10+11 = 39; bottom-left = 8+9+10+12+13+14 = 66;
    bottom-right = 10+11+14+15 = 50. (Symmetric padding would give 15+... centred windows: 10, 39-ish.)
    The depthwise conv of a 1-channel map is the same computation."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 3, 3))
    want = np.array([[45.0, 39.0], [66.0, 50.0]])
    np.testing.assert_array_equal(V.run_conv2d(x, w, 2)[0, 0], want)
    np.testing.assert_array_equal(V.run_depthwise_conv2d(x, w, 2)[0, 0], want)


def test_depthwise_equals_block_diagonal_dense_conv():
    """A depthwise conv is a dense conv whose weight is zero off the channel diagonal; both code paths
    (shifted views vs im2col) must agree, for stride 1 and 2, dilation 1 and 2, odd and even sizes."""
    rng = np.random.default_rng(0)
    for (Y, X, k, s, d) in [(9, 8, 3, 1, 1), (9, 8, 5, 2, 1), (11, 6, 3, 2, 1), (10, 10, 3, 1, 2), (7, 9, 3, 2, 2)]:
        x = rng.standard_normal((2, 4, Y, X))
        w = rng.standard_normal((4, 1, k, k))
        dense = np.zeros((4, 4, k, k))
        for c in range(4):
            dense[c, c] = w[c, 0]
        got = V.run_depthwise_conv2d(x, w, s, d)
        assert got.shape == (2, 4, -(-Y // s), -(-X // s))
        assert rel_err(got, V.run_conv2d(x, dense, s, d)) < 1e-14


def test_rms_norm2d_by_hand():
    """One pixel with channels (3, 4): mean of squares = 12.5, rsqrt(12.5 + 1e-6) = 0.28284270...;
    with weights (2, 1): (3 * 2, 4) * 0.2828427 = (1.6970562, 1.1313708)."""
    x = np.array([3.0, 4.0]).reshape(1, 2, 1, 1)
    got = V.run_rms_norm2d(x, np.array([2.0, 1.0]))[:, :, 0, 0]
    r = 1 / np.sqrt(12.5 + 1e-6)
    np.testing.assert_allclose(got[0], [6 * r, 4 * r], rtol=1e-15)


def test_make_divisible_by_hand():
    """Nearest multiple of 8, at least 8, never more than 10% down: 20 -> int(24)//8*8 = 24; 12 -> 16;
    6 -> 8 (the minimum); 3840 -> 3840; 56 * 2.0 = 112 -> 112; 4 * 2.5 = 10 -> int(14)//8*8 = 8, which is
    more than 10% below 10, so 16."""
    assert [V.run_make_divisible(v) for v in (20, 12, 6, 3840, 112.0, 10.0)] == [24, 16, 8, 3840, 112, 16]


# ---- block specs ---------------------------------------------------------------------------------------

def test_300m_spec_matches_the_published_table():
    """numerics doc 3.5: stages of 3/5/37/39 blocks ending at 128/256/640/1280 channels; MQA h12 kv2 d64 in
    stage 2 and h16 kv1 d96 in stage 3; MSFA 640 + 1280 = 1920 -> 3840 -> 2048 at 16 x 16; 548 tensors,
    294.1M parameters (the published checkpoint)."""
    summary = V.run_block_summary(VisionConfig())
    stages, (stem, taps, msfa_in, msfa_mid, msfa_out, res) = summary[:-1], summary[-1]
    assert [len(s) for s in stages] == [3, 5, 37, 39]
    assert [s[-1][2] for s in stages] == [128, 256, 640, 1280]
    assert [s[0][3] for s in stages] == [2, 2, 2, 2] and all(b[3] == 1 for s in stages for b in s[1:])
    assert stages[0][0][:7] == ("er", 64, 128, 2, 1, False, 256)
    assert stages[1][0][:10] == ("uir", 128, 256, 2, 1, False, 768, 3, 5, 0)
    mqa2 = [b for b in stages[2] if b[0] == "mqa"]
    mqa3 = [b for b in stages[3] if b[0] == "mqa"]
    assert len(mqa2) == 14 and {b[10:] for b in mqa2} == {(12, 64, 2)}
    assert len(mqa3) == 19 and {b[10:] for b in mqa3} == {(16, 96, 1)}
    assert (stem, taps, msfa_in, msfa_mid, msfa_out, res) == (64, (3, 4), 1920, 3840, 2048, (16, 16))
    shapes = V.run_weight_shapes(VisionConfig(), "model.vision_tower.timm_model.")
    assert len(shapes) == 548
    assert round(sum(int(np.prod(s)) for s in shapes.values()) / 1e6, 1) == 294.1


def test_golden_spec_decodes_like_timm(golden):
    """The fixture's weights are timm's state dict for the custom spec: the shapes minig3n derives from the
    block strings (channel rounding, expansions, optional convs, MQA paths) must be exactly those."""
    want = {k[len("timm_model."):]: tuple(v.shape) for k, v in golden.weights.items() if k.startswith("timm_model.")}
    assert V.run_weight_shapes(_cfg(golden, "sq"), "") == want


@pytest.mark.parametrize("arch_def, match", [
    ([["er_r1_k3_s2_e4_c16"], ["conv_r1_k3_s2_c8"]], "kind 'conv'"),
    ([["er_r1_k3_s2_e4_c16"], ["uir_r1_a3_k5_s2_e4_se0.25_c8"]], "field 'se0.25'"),
    ([["er_r1_k3_s2_e4_c16"], ["uir_r1_a3_k5_s2_c8"]], r"lacks field\(s\) \['e'\]"),
    ([["er_r1_k3_s2_e4_c16"], ["uir_r1_a3_k5_s3_e2_c8"]], "stride must be 1 or 2"),
    ([["er_r1_k3_s2_e4_c16"], ["uir_r1_a0_k0_s2_e2_c8"]], "no depthwise conv"),
    ([["er_r1_k3_s2_e4_c16"], ["uir_r1_a3_k3_s2_e2_c8", "mqa_r1_k3_h2_s1_d8_c8"]], "ends with an mqa block"),
    ([["er_r1_k3_s1_e4_c16"]], "two feature levels"),
    ([["er_r1_k3_s2_e4_c16"], ["er_r1_k3_s1_e4_c24"], ["er_r1_k3_s2_e4_c32"]], "do not line up"),
    ([], "non-empty list"),
])
def test_bad_specs_raise_config_error(arch_def, match):
    cfg = {"architecture": "mobilenetv5_custom_enc", "model_args": {"arch_def": arch_def, "stem_size": 8}}
    with pytest.raises(ConfigError, match=match):
        V.run_block_summary(cfg)


def test_model_args_keys_are_checked():
    with pytest.raises(ConfigError, match="unsupported key"):
        V.run_block_summary({"architecture": "mobilenetv5_300m_enc", "model_args": {"depth": 3}})
    with pytest.raises(ConfigError, match="only for custom encoders"):
        V.run_block_summary({"architecture": "mobilenetv5_300m_enc",
                             "model_args": {"arch_def": [["er_r1_k3_s2_e4_c8"]]}})


# ---- against the reference (fixtures) -------------------------------------------------------------------

def _modules(g, case):
    """(name, previous module's name) in forward order."""
    names = ["conv_stem"] + sorted({k.split(".", 1)[1] for k in g.out64 if k.startswith(case + ".blocks.")},
                                   key=lambda n: tuple(int(i) for i in n.split(".")[1:]))
    return names


@pytest.mark.parametrize("case", ["sq", "odd"])
@pytest.mark.parametrize("dtype, out, tol", [(np.float64, "out64", TOL64), (np.float32, "out32", TOL32)])
def test_each_block_matches_reference(golden, case, dtype, out, tol):
    """Each module fed the reference's own input (the previous module's reference output), so errors do not
    accumulate: stem, every ER / UIR / MQA block, and the MSFA."""
    g, cfg = golden, _cfg(golden, case)
    ref = {k[len(case) + 1:]: v for k, v in getattr(g, out).items() if k.startswith(case + ".")}
    p = _weights(g, dtype)
    px = g.inputs[f"{case}.pixel_values"].astype(dtype)
    errs = {"conv_stem": rel_err(V.run_stem(px, _sub(p, "conv_stem")), ref["conv_stem"])}
    names = _modules(g, case)
    for prev, name in zip(names, names[1:]):
        _, s, b = name.split(".")
        x = ref[prev].astype(dtype)
        errs[name] = rel_err(V.run_block(x, _sub(p, name), cfg, int(s), int(b)), ref[name])
    summary = V.run_block_summary(cfg)
    last = {si + 1: f"blocks.{si}.{len(st) - 1}" for si, st in enumerate(summary[:-1])}
    taps = [ref[last[t]].astype(dtype) for t in summary[-1][1]]
    errs["msfa"] = rel_err(V.run_msfa(taps, _sub(p, "msfa"), cfg), ref["msfa"])
    worst = max(errs, key=errs.get)
    assert errs[worst] <= tol, f"{worst}: {errs[worst]:.2e} > {tol} ({out}); all: {errs}"
    assert len(errs) == len(names) + 1


# Whole encoder, errors accumulating over its 16 chained modules (stem, 14 blocks, MSFA): float32 gets
# sqrt(16) * 1e-5 = 4e-5, derived and measured over BLAS kernels and thread counts in
# tests/golden_io.py:tol32_whole_model (worst seen 1.24e-5, OpenBLAS Haswell kernel, 1 thread).
TOL32_ENCODER = tol32_whole_model(16)


@pytest.mark.parametrize("case", ["sq", "odd"])
@pytest.mark.parametrize("dtype, out, tol", [(np.float64, "out64", TOL64), (np.float32, "out32", TOL32_ENCODER)])
def test_encoder_end_to_end_matches_reference(golden, case, dtype, out, tol):
    """Pixels -> MSFA output, every traced module compared along the way (errors accumulate here)."""
    g = golden
    ref = {k[len(case) + 1:]: v for k, v in getattr(g, out).items() if k.startswith(case + ".")}
    assert len(ref) - 1 == 16              # the depth TOL32_ENCODER is derived for (+ soft_tokens)
    trace = {}
    got = V.run_vision_encoder(g.inputs[f"{case}.pixel_values"].astype(dtype), _weights(g, dtype), _cfg(g, case),
                               trace=trace)
    assert got.dtype == dtype
    assert set(trace) == set(ref) - {"soft_tokens"}
    errs = {k: rel_err(trace[k], ref[k]) for k in trace}
    worst = max(errs, key=errs.get)
    assert errs[worst] <= tol, f"{worst}: {errs[worst]:.2e} > {tol} ({out})"
    assert rel_err(got, ref["msfa"]) <= tol


@pytest.mark.parametrize("case", ["sq", "odd"])
@pytest.mark.parametrize("dtype, out, tol", [(np.float64, "out64", TOL64), (np.float32, "out32", TOL32)])
def test_image_soft_tokens_match_get_image_features(golden, case, dtype, out, tol):
    """Gemma3nModel.get_image_features: flatten r x r to tokens, x sqrt(2048), embedder soft path."""
    g = golden
    feats = getattr(g, out)[f"{case}.msfa"].astype(dtype)
    p = {k[len("embed_vision."):]: v.astype(dtype) for k, v in g.weights.items() if k.startswith("embed_vision.")}
    got = V.run_image_soft_tokens(feats, p, _cfg(g, case))
    want = getattr(g, out)[f"{case}.soft_tokens"]
    assert got.shape == want.shape == (feats.shape[0], feats.shape[2] * feats.shape[3], g.meta["text_hidden_size"])
    assert rel_err(got, want) <= tol


# ---- bad input ------------------------------------------------------------------------------------------

def test_bad_pixel_values_raise_input_error(golden):
    p, cfg = _weights(golden, np.float32), _cfg(golden, "sq")
    for bad, match in [(np.zeros((3, 8, 8), np.float32), r"\[batch, 3, height, width\]"),
                       (np.zeros((1, 4, 8, 8), np.float32), r"\[batch, 3, height, width\]"),
                       (np.zeros((1, 3, 0, 8), np.float32), "empty")]:
        with pytest.raises(InputError, match=match):
            V.run_vision_encoder(bad, p, cfg)
    with pytest.raises(InputError, match="16 channels, vision_config.hidden_size is 2048"):
        V.run_image_soft_tokens(np.zeros((1, 16, 2, 2)), {}, VisionConfig())


def test_missing_weight_names_the_tensor(golden):
    p, cfg = _weights(golden, np.float32), _cfg(golden, "sq")
    del p["blocks.1.3.attn.key.down_conv.weight"]
    with pytest.raises(CheckpointError, match=r"blocks\.1\.3\.attn\.key\.down_conv\.weight"):
        V.run_vision_encoder(golden.inputs["sq.pixel_values"], p, cfg)


def test_stem_bias_may_be_absent(golden):
    """Some conversions omit the stem conv's bias (zeros in the official checkpoint): absent = zeros."""
    p = _sub(_weights(golden, np.float64), "conv_stem")
    x = golden.inputs["sq.pixel_values"].astype(np.float64)
    zero = dict(p, **{"conv.bias": np.zeros_like(p["conv.bias"])})
    absent = {k: v for k, v in p.items() if k != "conv.bias"}
    np.testing.assert_array_equal(V.run_stem(x, absent), V.run_stem(x, zero))


# ---- the tiny checkpoint (weights/tiny-random-gemma3n): Checkpoint/Params loading path -------------------

def test_tiny_checkpoint_vision_tower_loads_and_runs(tiny_dir):
    """Every tensor vision_weight_shapes derives from the tiny checkpoint's vision_config is in its
    model.safetensors with that shape, and the encoder runs on lazily loaded ``Params`` with its
    preprocessor settings (128 x 128 -> 4 x 4 x 2048 = 16 soft tokens, as config.json says).
    Numbers against the reference: tests/test_ref_vision_encoder.py::test_tiny_checkpoint_image_features."""
    cfg, p_tower, p_embed, shapes = V.run_checkpoint_vision(tiny_dir)
    assert len(shapes) == len(list(p_tower))
    px = V.run_preprocess_images([np.zeros((30, 20, 3), np.uint8)], tiny_dir)
    assert px.shape == (1, 3, 128, 128)
    out = V.run_vision_encoder(px, p_tower, cfg.vision)
    assert out.shape == (1, 2048, 4, 4) and out.dtype == np.float32 and np.isfinite(out).all()
    assert out.shape[2] * out.shape[3] == cfg.vision_soft_tokens_per_image
    tok = V.run_image_soft_tokens(out, p_embed, cfg.vision)
    assert tok.shape == (1, 16, cfg.text.hidden_size)


def test_gelu_is_torchs_tanh_gelu():
    """F.gelu(approximate='tanh') = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) with the constants in the
    tensor's dtype: in float64 this formula with double constants, to the last bits; in float32 within
    float32 rounding of it."""
    x = np.linspace(-8, 8, 10001)
    want = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    assert rel_err(V.run_gelu(x), want) <= 4e-16
    assert rel_err(V.run_gelu(x.astype(np.float32)), want) <= 4e-7
    assert V.run_gelu(np.zeros(1))[0] == 0.0


def test_mqa_with_zero_queries_averages_values_by_hand():
    """With the query projection all zero every logit is 0, so each query pixel of each head attends
    uniformly: head output = mean over key pixels of v = W_v xn. With kv stride 1, norm weights 1 and
    gamma 1, the block returns x + W_o [mean_v; mean_v; ...] (the same d-vector for every head and pixel),
    where xn = x / rms_c(x) per pixel."""
    rng = np.random.default_rng(3)
    C, h, d = 8, 2, 4
    cfg = {"architecture": "custom", "model_args": {"stem_size": 8, "arch_def": [
        ["er_r1_k3_s2_e1_c8"], ["uir_r1_a3_k3_s2_e1_c8", "mqa_r1_k3_h2_s1_d4_c8", "uir_r1_a0_k0_s1_e1_c8"]]}}
    x = rng.standard_normal((1, C, 3, 5))
    wv, wo = rng.standard_normal((d, C, 1, 1)), rng.standard_normal((C, h * d, 1, 1))
    p = {"norm.weight": np.ones(C), "attn.query.proj.weight": np.zeros((h * d, C, 1, 1)),
         "attn.key.proj.weight": rng.standard_normal((d, C, 1, 1)), "attn.value.proj.weight": wv,
         "attn.output.proj.weight": wo, "layer_scale.gamma": np.ones(C)}
    xn = x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True) + 1e-6)
    mean_v = np.einsum("dc,cyx->d", wv[:, :, 0, 0], xn[0]) / 15             # [d]
    want = x + (wo[:, :, 0, 0] @ np.tile(mean_v, h))[None, :, None, None]
    assert rel_err(V.run_block(x, p, cfg, 1, 1), want) < 1e-14


def test_pointwise_conv_adds_its_bias_by_hand():
    """A 1x1 stride-1 conv is a per-pixel matmul; its bias must be added too (the fast path once dropped it)."""
    from minig3n.conv2d import conv2d
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float64).reshape(2, 3, 2, 2)          # [B, Ci, Y, X]
    w = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, -1.0]])[:, :, None, None]          # [Co=2, Ci=3, 1, 1]
    b = np.array([10.0, -5.0])
    want = np.stack([x[:, 0] + 10.0, 2 * x[:, 1] - x[:, 2] - 5.0], axis=1)      # by hand: [B, 2, Y, X]
    np.testing.assert_array_equal(conv2d(x, w, bias=b), want)
    np.testing.assert_array_equal(conv2d(x, w), want - b[None, :, None, None])
