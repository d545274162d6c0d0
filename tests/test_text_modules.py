"""Text decoder, module by module, against the reference's fixtures (tests/goldens/text_*.safetensors), plus
one test per concept whose expectation is derived by hand in its docstring.

Tolerances (tests/README.md): float64 vs the lifted float64 reference <= 1e-10 relative; float32 vs the
float32 reference <= 1e-5 relative per module.
"""
import numpy as np
import pytest

from tests.adapters import text as A
from tests.golden_io import load_golden, rel_err

pytestmark = pytest.mark.text

F64_TOL = 1e-10   # true float64 on both sides (numerics doc section 8)
F32_TOL = 1e-5    # float32 rounding of a few chained ops


def _cfg(g):
    return A.text_config(g.meta["config"])


def _both(fn, g, keys, *names):
    """Run fn on the inputs in float32 and float64 and compare each named output with out32 / out64."""
    errs = {}
    for dt, want, tol in ((np.float32, g.out32, F32_TOL), (np.float64, g.out64, F64_TOL)):
        got = fn({k: g.inputs[k].astype(dt) for k in keys}, dt)
        got = got if isinstance(got, tuple) else (got,)
        for name, value in zip(names, got):
            e = rel_err(value, want[name])
            errs[(np.dtype(dt).name, name)] = e
            assert value.dtype == dt, f"{name}: computed in {value.dtype}, expected {np.dtype(dt).name}"
            assert e <= tol, f"{name} ({np.dtype(dt).name}): rel err {e:.3g} > {tol}"
    return errs


# PLE -----------------------------------------------------------------------------------------------------------
def test_ple_golden():
    g = load_golden("text_ple")
    cfg = _cfg(g)
    ids = g.inputs["input_ids"].astype(np.int64)
    assert (ids >= cfg.vocab_size_per_layer_input).any()  # the fixture exercises the id -> row 0 rule
    _both(lambda x, dt: A.run_ple(ids, x["inputs_embeds"], g.weights, cfg), g, ["inputs_embeds"],
          "token_inputs", "per_layer_inputs")


def test_ple_by_hand():
    """With per_layer_model_projection = 0 the projection part is rms_norm(0) = 0 * (0 + eps)^-1/2 = 0, so
    ``ple = table[id'] * sqrt(P) / sqrt(2)``; with P = 4 that is ``table[id'] * 2 * 0.70710677``. id' = id for
    id < U and 0 otherwise: an id of U or more reads row 0 (not row U-1)."""
    cfg = A.text_config(dict(num_hidden_layers=2, hidden_size=8, hidden_size_per_layer_input=4, vocab_size=12,
                             vocab_size_per_layer_input=10, intermediate_size=8, num_attention_heads=2,
                             num_key_value_heads=1, head_dim=4, num_kv_shared_layers=0,
                             layer_types=["sliding_attention", "full_attention"]))
    table = np.arange(10 * 8, dtype=np.float64).reshape(10, 8) / 10
    p = {"embed_tokens_per_layer.weight": table, "per_layer_model_projection.weight": np.zeros((8, 8)),
         "per_layer_projection_norm.weight": np.ones(4)}
    ids = np.array([[3, 11, 9, 10]])
    _, got = A.run_ple(ids, np.ones((1, 4, 8)), p, cfg)
    scale = 2.0 * float(np.float32(1 / np.sqrt(np.float32(2))))
    want = table[[3, 0, 9, 0]].reshape(1, 4, 2, 4) * scale
    np.testing.assert_allclose(got, want, rtol=1e-15)


# AltUp ---------------------------------------------------------------------------------------------------------
def test_altup_golden():
    g = load_golden("text_altup")
    cfg = _cfg(g)

    def run(x, dt):
        pred = A.run_altup_predict(x["streams"], g.weights, cfg)
        # correct() is checked on the reference's own predictions, so its error is not the predict error again
        ref_pred = (g.out32 if dt == np.float32 else g.out64)["predict"].astype(dt)
        corr = A.run_altup_correct(ref_pred, x["activated"], g.weights, cfg)
        return (A.run_router_modalities(x["activated"], g.weights, cfg), pred, corr,
                A.run_scale_corrected_output(corr[cfg.altup_active_idx], g.weights))
    _both(run, g, ["streams", "activated"], "router_modalities", "predict", "correct", "scale_corrected_output")


def test_altup_streams_golden():
    g = load_golden("text_altup_streams")
    cfg = _cfg(g)
    _both(lambda x, dt: A.run_make_streams(x["inputs_embeds"], g.weights, cfg), g, ["inputs_embeds"], "streams")
    for dt, key, want, tol in ((np.float32, "final_streams32", g.out32, F32_TOL),
                               (np.float64, "final_streams64", g.out64, F64_TOL)):
        got = A.run_collapse_streams(g.inputs[key].astype(dt), g.weights, cfg)
        assert rel_err(got, want["collapsed"]) <= tol


def test_altup_by_hand():
    """Identity coefficients. prediction_coefs = 0 gives C = 0, so ``P_i = X_i + 0`` (streams unchanged);
    correction_coefs = 0 gives gains 0 + 1 = 1, so ``Q_i = P_i + (o - P_0)``: every stream moves by the same
    innovation, and stream 0 becomes exactly o."""
    K, D = 3, 6
    cfg = A.text_config(dict(num_hidden_layers=1, hidden_size=D, altup_num_inputs=K, intermediate_size=4,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=2, num_kv_shared_layers=0,
                             hidden_size_per_layer_input=2, vocab_size=4, vocab_size_per_layer_input=4))
    rng = np.random.default_rng(0)
    p = {"router_norm.weight": rng.normal(size=D), "modality_router.weight": rng.normal(size=(K, D)),
         "prediction_coefs.weight": np.zeros((K * K, K)), "correction_coefs.weight": np.zeros((K, K)),
         "correct_output_scale": np.ones(D)}
    X, o = rng.normal(size=(K, 2, 5, D)), rng.normal(size=(2, 5, D))
    P = A.run_altup_predict(X, p, cfg)
    np.testing.assert_array_equal(P, X)
    Q = A.run_altup_correct(P, o, p, cfg)
    np.testing.assert_allclose(Q, X + (o - X[0])[None], rtol=0, atol=1e-15)
    np.testing.assert_allclose(Q[0], o, rtol=0, atol=1e-15)


# LAuReL --------------------------------------------------------------------------------------------------------
def test_laurel_golden():
    g = load_golden("text_laurel")
    _both(lambda x, dt: A.run_laurel(x["x"], g.weights, _cfg(g)), g, ["x"], "out")


def test_laurel_by_hand():
    """linear_right = 0 makes the low-rank branch 0 and rms_norm(0) = 0 * (0 + eps)^-1/2 = 0, so laurel(x) = x
    exactly; with linear_left = 0 too the same holds. LAuReL is a residual block around its input."""
    cfg = A.text_config(dict(num_hidden_layers=1, hidden_size=4, intermediate_size=4, num_attention_heads=2,
                             num_key_value_heads=1, head_dim=2, num_kv_shared_layers=0, laurel_rank=2,
                             hidden_size_per_layer_input=2, vocab_size=4, vocab_size_per_layer_input=4))
    x = np.random.default_rng(1).normal(size=(1, 3, 4))
    p = {"linear_left.weight": np.ones((2, 4)), "linear_right.weight": np.zeros((4, 2)),
         "post_laurel_norm.weight": np.full(4, 7.0)}
    np.testing.assert_array_equal(A.run_laurel(x, p, cfg), x)


# MLP -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["text_mlp_sparse", "text_mlp_dense"])
def test_mlp_golden(name):
    g = load_golden(name)
    cfg, li = _cfg(g), g.meta["layer_idx"]
    assert (cfg.activation_sparsity_pattern[li] > 0) == (name == "text_mlp_sparse")
    _both(lambda x, dt: A.run_mlp(x["x"], g.weights, cfg, li), g, ["x"], "out")


def test_mlp_golden_one_token_at_a_time():
    """Decode computes the MLP one token at a time, and then a sparse layer takes the up rows and the down
    columns of the kept units only (``mlp.LIVE_FRACTION``; the fixture's 28 tokens together keep 62 % of the
    units, so the golden test above runs the prompt's path: plain arrays, the whole products with the zeros).
    Each token alone against its row of the same fixture, same tolerances:
    the kept units' products are the same, the dropped ones are exact zeros either way."""
    from minig3n import mlp as mlp_mod
    g = load_golden("text_mlp_sparse")
    cfg, li = _cfg(g), g.meta["layer_idx"]
    B, T, _ = g.inputs["x"].shape
    for dt, want, tol in ((np.float32, g.out32, F32_TOL), (np.float64, g.out64, F64_TOL)):
        x = g.inputs["x"].astype(dt)
        gate = mlp_mod.gaussian_topk(x @ g.weights["gate_proj.weight"].astype(dt).T, 0.95)   # [B, T, I]
        kept = (gate > 0).mean(axis=-1)                                                    # [B, T]
        assert kept.max() <= mlp_mod.LIVE_FRACTION and kept.min() > 0                      # the kept-units path
        got = np.concatenate([np.concatenate([A.run_mlp(x[b:b + 1, t:t + 1], g.weights, cfg, li)
                                              for t in range(T)], axis=1) for b in range(B)])
        assert got.dtype == dt
        assert rel_err(got, want["out"]) <= tol, (np.dtype(dt).name, rel_err(got, want["out"]))


def test_mlp_intermediate_sizes_differ():
    """The two MLP fixtures come from layers with different intermediate sizes (per-layer list)."""
    a, b = load_golden("text_mlp_sparse"), load_golden("text_mlp_dense")
    assert a.weights["gate_proj.weight"].shape[0] != b.weights["gate_proj.weight"].shape[0]


def test_std_multiplier_reference_value():
    """torch's float32 ``Normal(0, 1).icdf(0.95)`` is 1.6448535919189453 (numerics doc section 0; the exact
    value 1.6448536269514722 rounds to the same float32)."""
    assert float(A.run_std_multiplier(0.95)) == 1.6448535919189453


def test_mlp_by_hand():
    """Sparsity with a gate that is constant over I (gate_proj rows all equal): the std is 0 so the cutoff is
    the mean, ``relu(gate - mean) = 0``, ``gelu(0) = 0``, and the MLP output is exactly 0. Without sparsity
    the same layer gives ``down(gelu(g) * up)`` with g = the common gate value: here x = 1, gate rows = 1/D
    (so g = 1), up rows = 1/D (up = 1) and down = ones, so every output is I * gelu(1) = I * 0.8411920."""
    D, I = 4, 6
    cfg_s = A.text_config(dict(num_hidden_layers=1, hidden_size=D, intermediate_size=I, num_attention_heads=2,
                               num_key_value_heads=1, head_dim=2, num_kv_shared_layers=0,
                               activation_sparsity_pattern=[0.95], hidden_size_per_layer_input=2,
                               vocab_size=4, vocab_size_per_layer_input=4))
    cfg_d = A.text_config({**dict(num_hidden_layers=1, hidden_size=D, intermediate_size=I, num_attention_heads=2,
                                  num_key_value_heads=1, head_dim=2, num_kv_shared_layers=0,
                                  hidden_size_per_layer_input=2, vocab_size=4, vocab_size_per_layer_input=4),
                           "activation_sparsity_pattern": [0.0]})
    p = {"gate_proj.weight": np.full((I, D), 1 / D), "up_proj.weight": np.full((I, D), 1 / D),
         "down_proj.weight": np.ones((D, I))}
    x = np.ones((1, 2, D))
    np.testing.assert_array_equal(A.run_mlp(x, p, cfg_s, 0), np.zeros((1, 2, D)))
    gelu1 = 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (1 + 0.044715)))
    np.testing.assert_allclose(A.run_mlp(x, p, cfg_d, 0), np.full((1, 2, D), I * gelu1), rtol=1e-14)


# Attention -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["text_attention_sliding", "text_attention_full"])
def test_attention_golden(name):
    g = load_golden(name)
    cfg, li = _cfg(g), g.meta["layer_idx"]
    mask = g.inputs["attention_mask"].astype(np.int64)
    pos = g.inputs["position_ids"].astype(np.int64)
    assert mask.shape[1] > cfg.sliding_window and (mask == 0).any()  # slides, and row 1 is left-padded
    _both(lambda x, dt: A.run_self_attention(x["x"], g.weights, cfg, li, mask, pos), g, ["x"], "out")


def test_rope_inv_freq_matches_torch_values():
    """torch's float32 ``1 / 10000 ** (arange(0, 16, 2) / 16)``: entry i is 10000^(-i/8), e.g. entry 0 = 1,
    entry 4 = 10000^-0.5 = 0.01 exactly representable? No: float32(0.01) = 0.009999999776482582, which is what
    both compute; entry 2 = 10000^-0.25 = 0.1 -> float32 0.10000000149011612."""
    inv = A.run_rope_inv_freq(10_000.0, 16)
    assert inv.dtype == np.float32
    assert inv[0] == 1.0 and inv[2] == np.float32(0.1) and inv[4] == np.float32(0.01)


def test_rope_by_hand():
    """RoPE at position 0 is the identity (cos 0 = 1, sin 0 = 0). At position p, the pair (x_i, x_{i+E/2}) turns by
    the angle p * inv_i: with E = 4, base 10000, inv = [1, 0.01]; x = [1, 0, 0, 0] at p = 1 becomes
    [cos 1, 0, sin 1, 0] (rotate-half pairs i with i + E/2, not neighbours)."""
    x = np.zeros((1, 2, 1, 4))
    x[..., 0] = 1.0
    got = A.run_rope(x, np.array([[0, 1]]), 10_000.0, 4)
    np.testing.assert_array_equal(got[0, 0, 0], [1, 0, 0, 0])
    np.testing.assert_allclose(got[0, 1, 0], [np.cos(1.0), 0, np.sin(1.0), 0], rtol=0, atol=1e-16)


def test_masks_by_hand():
    """The ASCII pictures of minig3n/attention.py: T = 5, window 3. Full: k <= q. Sliding: q - 3 < k <= q, so query 4
    sees keys 2, 3, 4 (3 keys including itself). Left padding of 1 in row 0: key 0 is hidden from every
    query, and query 0 sees nothing."""
    full = A.run_attention_mask(np.arange(5), np.arange(5))[0]
    np.testing.assert_array_equal(full, np.tril(np.ones((5, 5), bool)))
    sl = A.run_attention_mask(np.arange(5), np.arange(5), sliding_window=3)[0]
    assert sl[4].tolist() == [False, False, True, True, True]
    assert sl[3].tolist() == [False, True, True, True, False]
    padded = A.run_attention_mask(np.arange(5), np.arange(5), np.array([[0, 1, 1, 1, 1]]))[0]
    assert not padded[0].any() and not padded[:, 0].any() and padded[4, 1:].all()


def test_attention_by_hand():
    """One token: softmax over a single key is 1, so each query head outputs its K/V head's v:
    ``out = o_proj(concat_h v_{h // (N/G)})`` with v = rms_norm(v_proj(x)) (weightless v_norm). With N = 2,
    G = 1, E = 2, o_proj = identity and v_proj(x) = [3, 4]: v = [3, 4] / sqrt(12.5 + eps) for both heads."""
    cfg = A.text_config(dict(num_hidden_layers=1, hidden_size=4, intermediate_size=4, num_attention_heads=2,
                             num_key_value_heads=1, head_dim=2, num_kv_shared_layers=0,
                             layer_types=["full_attention"], hidden_size_per_layer_input=2, vocab_size=4,
                             vocab_size_per_layer_input=4))
    rng = np.random.default_rng(2)
    p = {"q_proj.weight": rng.normal(size=(4, 4)), "k_proj.weight": rng.normal(size=(2, 4)),
         "v_proj.weight": np.array([[3.0, 0, 0, 0], [4.0, 0, 0, 0]]), "o_proj.weight": np.eye(4),
         "q_norm.weight": rng.normal(size=2), "k_norm.weight": rng.normal(size=2)}
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    out = A.run_self_attention(x, p, cfg, 0, None, np.zeros((1, 1), np.int64))
    v = np.array([3.0, 4.0]) / np.sqrt(12.5 + 1e-6)
    np.testing.assert_allclose(out[0, 0], np.concatenate([v, v]), rtol=1e-15)


# KV sharing ----------------------------------------------------------------------------------------------------
def test_kv_sharing_by_hand():
    """E2B: 30 layers, every 5th full (4, 9, ..., 29), 10 shared -> consumers 20..29. The sliding producer is the
    last sliding layer before 20 (18: 19 is full) and the full producer the last full one (19)."""
    from minig3n.config import e2b_config, e4b_config
    for cfg in (e2b_config().text, e4b_config().text):
        modes = A.run_kv_sharing_modes(cfg)
        assert modes[18] == modes[19] == "store" and modes[:18] == [None] * 18
        assert modes[20:] == ["reuse"] * (cfg.num_hidden_layers - 20)
        assert A.run_kv_producer(cfg, 20) == 18 and A.run_kv_producer(cfg, 24) == 19
        assert A.run_kv_producer(cfg, 29) == 19 and A.run_kv_producer(cfg, 18) is None


def test_kv_sharing_tiny_golden_config():
    """The fixtures' tiny config [S, S, F, S, F, S, S] with 3 shared layers: producers 3 (sliding) and 2 (full);
    consumers 4 (full) and 5, 6 (sliding): both types."""
    cfg = _cfg(load_golden("text_decoder_layer"))
    assert A.run_kv_sharing_modes(cfg) == [None, None, "store", "store", "reuse", "reuse", "reuse"]
    assert [A.run_kv_producer(cfg, i) for i in (4, 5, 6)] == [2, 3, 3]


# Decoder layer -------------------------------------------------------------------------------------------------
def test_decoder_layer_golden():
    g = load_golden("text_decoder_layer")
    cfg, li = _cfg(g), g.meta["layer_idx"]
    mask = g.inputs["attention_mask"].astype(np.int64)
    pos = np.broadcast_to(np.arange(mask.shape[1]), mask.shape)
    _both(lambda x, dt: A.run_decoder_layer(x["streams"], x["per_layer_input"], g.weights, cfg, li, mask, pos),
          g, ["streams", "per_layer_input"], "out")
