"""The whole text decoder against the reference's fixtures, the KV cache against minig3n's own full
recomputation, the E2B/E4B shapes, and the user errors.

Tolerances (tests/README.md): float64 <= 1e-10 relative (logits and every traced module), float32 logits
<= 1e-4 relative with identical argmax at every position; incremental vs full recompute (float64) <= 1e-10.
"""
import json

import numpy as np
import pytest

from minig3n.checkpoint import save_safetensors, text_weight_shapes
from minig3n.config import e2b_config, e4b_config
from minig3n.errors import CheckpointError, InputError
from tests.adapters import text as A
from tests.golden_io import load_golden, rel_err

pytestmark = pytest.mark.text


def _model(name, dtype):
    g = load_golden(name)
    return g, A.run_load_model(A.checkpoint_dir(g.weights, g.meta["config"]), dtype)


@pytest.mark.parametrize("name", ["text_model_causal", "text_model_k3"])
def test_model_logits_golden(name):
    for dtype, want, tol in ((np.float64, "out64", 1e-10), (np.float32, "out32", 1e-4)):
        g, model = _model(name, dtype)
        ids = g.inputs["input_ids"].astype(np.int64)
        mask = g.inputs["attention_mask"].astype(np.int64)
        logits, cache = A.run_forward(model, ids, attention_mask=mask)
        ref = getattr(g, want)["logits"]
        assert logits.dtype == dtype and cache is None
        assert rel_err(logits, ref) <= tol, f"{name} {np.dtype(dtype).name}: {rel_err(logits, ref):.3g}"
        assert (logits.argmax(-1) == ref.argmax(-1)).all()


def test_model_golden_covers_the_configurations():
    """What the causal fixture exercises: longer than the window, left padding, ids >= the PLE vocab, shared
    layers of both types, sparse and dense MLPs, differing intermediate sizes; the k3 one: 3 streams."""
    g = load_golden("text_model_causal")
    cfg = A.text_config(g.meta["config"])
    ids, mask = g.inputs["input_ids"], g.inputs["attention_mask"]
    assert ids.shape[1] > cfg.sliding_window and (mask[1] == 0).any() and ids.shape[0] == 2
    assert (ids >= cfg.vocab_size_per_layer_input).any()
    shared_types = {cfg.layer_types[i] for i in range(cfg.first_kv_shared_layer, cfg.num_hidden_layers)}
    assert shared_types == {"sliding_attention", "full_attention"}
    assert 0.0 in cfg.activation_sparsity_pattern and max(cfg.activation_sparsity_pattern) > 0
    assert len(set(cfg.intermediate_size)) > 1
    assert A.text_config(load_golden("text_model_k3").meta["config"]).altup_num_inputs == 3


def test_model_trace_golden_float64():
    """Every traced module output (row 0) against the lifted reference's forward hooks, <= 1e-10."""
    g, model = _model("text_model_causal", np.float64)
    trace = {}
    A.run_forward(model, g.inputs["input_ids"].astype(np.int64),
                  attention_mask=g.inputs["attention_mask"].astype(np.int64), trace=trace)
    want = {k[len("trace."):]: v for k, v in g.out64.items() if k.startswith("trace.")}
    assert set(want) == set(trace) - {"logits"}, sorted(set(want) ^ set(trace))
    assert list(want) and list(trace)[:3] == ["model.embed_tokens", "model.embed_tokens_per_layer",
                                              "model.per_layer_model_projection"]
    errs = {k: rel_err(trace[k], want[k]) for k in want}
    worst = max(errs, key=errs.get)
    assert errs[worst] <= 1e-10, f"{worst}: {errs[worst]:.3g}"


def test_multimodal_prefix_same_logits(tmp_path):
    """The same weights under ``model.language_model.`` with a multimodal config.json give the same logits as
    under ``model.`` (Gemma3nForCausalLM layout)."""
    g = load_golden("text_model_causal")
    cfg = g.meta["config"]
    w = {"model.language_model." + k[len("model."):]: v for k, v in g.weights.items()}
    save_safetensors(tmp_path / "model.safetensors", w)
    top = {"model_type": "gemma3n", "text_config": cfg, "audio_config": {}, "vision_config": {},
           "boi_token_id": 250, "eoi_token_id": 256, "image_token_id": 257, "boa_token_id": 251,
           "eoa_token_id": 280, "audio_token_id": 281}
    (tmp_path / "config.json").write_text(json.dumps(top))
    mm = A.run_load_model(tmp_path, np.float64)
    assert mm.prefix == "model.language_model."
    _, causal = _model("text_model_causal", np.float64)
    ids = g.inputs["input_ids"].astype(np.int64)
    a, _ = A.run_forward(mm, ids)
    b, _ = A.run_forward(causal, ids)
    np.testing.assert_array_equal(a, b)


# KV cache ------------------------------------------------------------------------------------------------------
def _long_inputs(cfg, T=30, pad=3):
    rng = np.random.default_rng(7)
    ids = rng.integers(0, cfg.vocab_size, size=(2, T))
    ids[:, 0] = 2
    mask = np.ones((2, T), np.int64)
    mask[1, :pad], ids[1, :pad] = 0, 0
    return ids, mask


@pytest.mark.parametrize("prefill", [1, 5, 12])
def test_incremental_equals_full_recompute(prefill):
    """Prefill, then one token per call, well past the sliding window (30 tokens, window 8), with left padding:
    the logits at every step equal the full recomputation's, float64 <= 1e-10."""
    _, model = _model("text_model_causal", np.float64)
    ids, mask = _long_inputs(model.cfg)
    full, _ = A.run_forward(model, ids, attention_mask=mask)
    inc, cache = A.run_incremental(model, ids, mask, prefill)
    assert rel_err(inc, full) <= 1e-10
    assert cache.length == ids.shape[1]


def test_cache_holds_what_the_layers_need():
    """After 30 tokens: full layers hold 30 keys, sliding layers the last window - 1 = 7 (positions 23..29),
    KV-shared layers nothing."""
    _, model = _model("text_model_causal", np.float64)
    cfg = model.cfg
    ids, mask = _long_inputs(cfg)
    _, cache = A.run_incremental(model, ids, mask, 4)
    for i, lt in enumerate(cfg.layer_types):
        k = cache.keys[i]
        if i >= cfg.first_kv_shared_layer:
            assert k is None and cache.values[i] is None
        elif lt == "full_attention":
            assert k.shape == (2, 30, cfg.num_key_value_heads, cfg.head_dim) and cache.starts[i] == 0
        else:
            assert k.shape[1] == cfg.sliding_window - 1 and cache.starts[i] == 30 - (cfg.sliding_window - 1)


def test_cache_is_not_modified_by_forward():
    """forward returns a new KVCache; the one passed in still describes the earlier state."""
    _, model = _model("text_model_causal", np.float64)
    ids, mask = _long_inputs(model.cfg, T=10)
    c0 = A.run_empty_cache(model.cfg, 2, np.float64)
    _, c1 = A.run_forward(model, ids[:, :6], attention_mask=mask[:, :6], cache=c0)
    keys1 = [None if k is None else k.copy() for k in c1.keys]
    a, c2 = A.run_forward(model, ids[:, 6:7], attention_mask=mask[:, :7], cache=c1)
    b, _ = A.run_forward(model, ids[:, 6:7], attention_mask=mask[:, :7], cache=c1)
    assert c0.length == 0 and c1.length == 6 and c2.length == 7
    assert all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(keys1, c1.keys))
    np.testing.assert_array_equal(a, b)


def test_chunked_prefill_equals_full():
    """Two multi-token calls (7 + 23 tokens; the second call's first query needs the first call's keys that a
    sliding layer kept) equal one call."""
    _, model = _model("text_model_causal", np.float64)
    ids, mask = _long_inputs(model.cfg)
    full, _ = A.run_forward(model, ids, attention_mask=mask)
    c = A.run_empty_cache(model.cfg, 2, np.float64)
    a, c = A.run_forward(model, ids[:, :7], attention_mask=mask[:, :7], cache=c)
    b, c = A.run_forward(model, ids[:, 7:], attention_mask=mask, cache=c)
    assert rel_err(np.concatenate([a, b], 1), full) <= 1e-10


def test_position_ids_shift_rope_only():
    """position_ids feed RoPE only. The default equals explicit ``arange(T)`` bit for bit; shifting every
    position by 3 rotates q and k by the same extra angle, and q.k depends only on position differences, so
    the logits stay the same up to rounding (<= 1e-10 in float64)."""
    _, model = _model("text_model_causal", np.float64)
    ids = _long_inputs(model.cfg, T=6)[0][:1]
    base, _ = A.run_forward(model, ids)
    same, _ = A.run_forward(model, ids, position_ids=np.arange(6)[None])
    shifted, _ = A.run_forward(model, ids, position_ids=np.arange(6)[None] + 3)
    np.testing.assert_array_equal(base, same)
    assert rel_err(shifted, base) <= 1e-10   # q.k depends on position differences only


def test_inputs_embeds_replaces_embedding():
    """forward(ids, inputs_embeds=embed_tokens(ids)) == forward(ids); a different inputs_embeds changes the result."""
    from minig3n import decoder
    _, model = _model("text_model_causal", np.float64)
    ids = _long_inputs(model.cfg, T=6)[0]
    e = decoder.embed_tokens(model, ids)
    a, _ = A.run_forward(model, ids)
    b, _ = decoder.forward(model, ids, inputs_embeds=e)
    c, _ = decoder.forward(model, ids, inputs_embeds=e * 0.5)
    np.testing.assert_array_equal(a, b)
    assert rel_err(c, a) > 1e-3


def test_softcap_by_hand():
    """Logits are ``30 tanh(z / 30)``: |logits| < 30, and atanh(logits / 30) * 30 recovers the pre-cap head
    output, which the trace stores as ``lm_head``."""
    g, model = _model("text_model_causal", np.float64)
    trace = {}
    logits, _ = A.run_forward(model, g.inputs["input_ids"][:1].astype(np.int64), trace=trace)
    assert np.abs(logits).max() < 30
    np.testing.assert_allclose(30 * np.arctanh(logits[0] / 30), trace["lm_head"], rtol=1e-9, atol=1e-9)


# Presets -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, L, I", [(e2b_config, 30, 8192), (e4b_config, 35, 16384)])
def test_preset_text_weight_shapes(preset, L, I):
    """The published E2B/E4B sizes (numerics doc section 5): vocab 262400 x 2048, PLE 262144 x L*256, q 2048 x 2048,
    k/v 512 x 2048 on layers 0..19 only, MLP I x 2048, LAuReL 64, AltUp 4 x 4 and 16 x 4."""
    cfg = preset().text
    s = text_weight_shapes(cfg, "model.language_model.")
    p = "model.language_model."
    assert s[p + "embed_tokens.weight"] == (262_400, 2048)
    assert s[p + "embed_tokens_per_layer.weight"] == (262_144, L * 256)
    assert s[p + "per_layer_model_projection.weight"] == (L * 256, 2048)
    assert s[p + "layers.0.self_attn.q_proj.weight"] == (2048, 2048)
    assert s[p + "layers.19.self_attn.k_proj.weight"] == (512, 2048)
    assert p + "layers.20.self_attn.k_proj.weight" not in s
    assert s[f"{p}layers.{L - 1}.mlp.down_proj.weight"] == (2048, I)
    assert s[p + "layers.3.laurel.linear_left.weight"] == (64, 2048)
    assert s[p + "layers.3.altup.prediction_coefs.weight"] == (16, 4)
    assert s[p + "layers.3.altup.correction_coefs.weight"] == (4, 4)
    assert A.run_kv_sharing_modes(cfg).count("reuse") == L - 20


def test_e2b_width_decoder_layer_runs():
    """One E2B-width decoder layer (D 2048, I 8192, 8 x 256 query heads, 2 K/V heads, P 256, sparsity 0.95) on
    random weights: finite output of the right shape; stream 0 gets no per-layer input, so changing the
    per-layer input changes streams 1..3 only."""
    cfg = e2b_config().text
    rng = np.random.default_rng(0)
    shapes = {k[len("model.layers.0."):]: v for k, v in text_weight_shapes(cfg, "model.").items()
              if k.startswith("model.layers.0.")}
    base = rng.standard_normal(1 << 20, dtype=np.float32)   # tiled: drawing 55M fresh normals would take seconds
    p = {k: np.resize(base[i:], v) / np.float32(np.sqrt(v[-1])) for i, (k, v) in enumerate(shapes.items())}
    for k, v in shapes.items():
        if len(v) == 1:
            p[k] = np.ones(v, np.float32)
    streams = rng.standard_normal((4, 1, 3, 2048), dtype=np.float32)
    ple_in = rng.standard_normal((1, 3, 256), dtype=np.float32)
    pos = np.arange(3)[None]
    out = A.run_decoder_layer(streams, ple_in, p, cfg, 0, None, pos)
    out2 = A.run_decoder_layer(streams, 2 * ple_in, p, cfg, 0, None, pos)
    assert out.shape == (4, 1, 3, 2048) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], out2[0])
    assert not np.allclose(out[1:], out2[1:])


# Errors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ids, words", [
    (np.array([[2, 300]]), "out of range"),
    (np.array([[2, -1]]), "out of range"),
    (np.array([2, 5]), "shape"),
    (np.array([[2.0, 5.0]]), "integers"),
    (np.zeros((1, 65), np.int64), "max_position_embeddings"),
])
def test_bad_input_ids(ids, words):
    _, model = _model("text_model_causal", np.float32)
    with pytest.raises(InputError, match=words):
        A.run_forward(model, ids)


def test_too_long_with_cache():
    _, model = _model("text_model_causal", np.float32)
    c = A.run_empty_cache(model.cfg, 1, np.float32)
    _, c = A.run_forward(model, np.full((1, 60), 5), cache=c)
    with pytest.raises(InputError, match="60 cached \\+ 5 new"):
        A.run_forward(model, np.full((1, 5), 5), cache=c)


def test_bad_attention_mask():
    _, model = _model("text_model_causal", np.float32)
    with pytest.raises(InputError, match="attention_mask"):
        A.run_forward(model, np.array([[2, 5, 6]]), attention_mask=np.ones((1, 4)))


def test_wrong_tensor_shape_named(tmp_path):
    g = load_golden("text_model_causal")
    w = dict(g.weights)
    w["model.layers.2.mlp.up_proj.weight"] = w["model.layers.2.mlp.up_proj.weight"][:-1]
    save_safetensors(tmp_path / "model.safetensors", w)
    (tmp_path / "config.json").write_text(json.dumps({**g.meta["config"], "model_type": "gemma3n_text"}))
    with pytest.raises(CheckpointError, match="model.layers.2.mlp.up_proj.weight"):
        A.run_load_model(tmp_path, np.float32)


def test_kv_shared_layers_never_read_their_own_kv_weights(tmp_path):
    """Official checkpoints still carry k_proj/v_proj/k_norm for the KV-shared layers; 5.24 never uses them
    (numerics doc 6.1). Filling them with NaN (layers 4..6 of the fixture) leaves every logit unchanged."""
    g = load_golden("text_model_causal")
    w = dict(g.weights)
    cfg = A.text_config(g.meta["config"])
    D, G, E = cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim
    for li in range(cfg.first_kv_shared_layer, cfg.num_hidden_layers):
        w[f"model.layers.{li}.self_attn.k_proj.weight"] = np.full((G * E, D), np.nan, np.float32)
        w[f"model.layers.{li}.self_attn.v_proj.weight"] = np.full((G * E, D), np.nan, np.float32)
        w[f"model.layers.{li}.self_attn.k_norm.weight"] = np.full((E,), np.nan, np.float32)
    save_safetensors(tmp_path / "model.safetensors", w)
    (tmp_path / "config.json").write_text(json.dumps({**g.meta["config"], "model_type": "gemma3n_text"}))
    ids = g.inputs["input_ids"].astype(np.int64)
    a, _ = A.run_forward(A.run_load_model(tmp_path, np.float64), ids)
    _, model = _model("text_model_causal", np.float64)
    b, _ = A.run_forward(model, ids)
    np.testing.assert_array_equal(a, b)


def test_logits_to_keep_last_position():
    """logits_to_keep=1 returns the last position's logits only, equal to the full pass's last row (to 1e-12:
    BLAS may sum a 1-row product in another order than a 12-row one)."""
    from minig3n import decoder
    _, model = _model("text_model_causal", np.float64)
    ids, mask = _long_inputs(model.cfg, T=12)
    full, _ = A.run_forward(model, ids, attention_mask=mask)
    last, _ = decoder.forward(model, ids, attention_mask=mask, logits_to_keep=1)
    assert last.shape == (2, 1, model.cfg.vocab_size)
    assert rel_err(last[:, 0], full[:, -1]) <= 1e-12


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_logits_to_keep_computes_the_kv_shared_layers_on_the_kept_positions_only(monkeypatch, dtype, tol):
    """With logits_to_keep = n, the layers from the first KV consumer on run on the last n positions only
    (kv_share.py: they write no cache and read the producers' K/V, so the other positions feed nothing), and
    so does the layer before them, after its K/V of every position (``layer_key_values``); with a cache and
    left padding. The logits equal the full pass's last n rows (float64 1e-12, float32 1e-5: only BLAS's
    summation order changes with the number of rows), and the new caches are identical.
    With a trace every layer runs on every position, as the reference's modules do."""
    from minig3n import decoder
    from minig3n.kv_cache import KVCache
    _, model = _model("text_model_causal", dtype)
    cfg = model.cfg
    first = cfg.first_kv_shared_layer
    assert 0 < first < cfg.num_hidden_layers
    ids, mask = _long_inputs(cfg, T=12)
    widths = []
    layer = decoder.decoder_layer
    monkeypatch.setattr(decoder, "decoder_layer", lambda streams, *a, **k: widths.append(streams.shape[2]) or
                        layer(streams, *a, **k))
    full, c_full = decoder.forward(model, ids, attention_mask=mask, cache=KVCache.empty(cfg, 2, model.dtype))
    assert widths == [12] * cfg.num_hidden_layers
    widths.clear()
    kept, c_kept = decoder.forward(model, ids, attention_mask=mask, cache=KVCache.empty(cfg, 2, model.dtype),
                                   logits_to_keep=3)
    assert widths == [12] * (first - 1) + [3] * (cfg.num_hidden_layers - first + 1)
    assert kept.shape == (2, 3, cfg.vocab_size) and rel_err(kept, full[:, -3:]) <= tol
    for li in range(cfg.num_hidden_layers):
        a, b = c_full.past(li), c_kept.past(li)
        assert (a is None) == (b is None)
        if a is not None:
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
    widths.clear()
    decoder.forward(model, ids, attention_mask=mask, logits_to_keep=3, trace={})
    assert widths == [12] * cfg.num_hidden_layers
