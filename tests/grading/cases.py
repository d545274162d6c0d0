"""What each graded function is called with, and what it must return.

Every check (``tests/grading/points.py`` lists them) has a builder here: ``BUILDERS[check](dtype, rng)``
returns a list of ``Case``. Two kinds of case per check:

* ``golden:<file>``: inputs and outputs written by the reference tier (transformers 5.24 / timm 1.0.31),
  from ``tests/goldens/*.safetensors``: the module goldens minig3n is tested with, their intermediates
  (the reference's own input to a sub-module, ``<name>:in``), and ``grade_*.safetensors``
  (``tests/reference/goldens_grade.py``) for the functions no module golden covers;
* ``random:<shape>``: fresh inputs (and weights perturbed from the golden's), drawn at grading time from a
  seed the student does not know in advance; the expected output is minig3n's function on the same inputs
  (minig3n is itself proven equal to the reference on the goldens, by the NumPy tier, and live by the
  reference tier).

A case is ``Case(label, run, want, tol)``: ``run(target)`` calls the student's function (or class) and
returns a dict of named outputs, ``want`` the same names. ``dtype`` is np.float32, np.float64, or None for a
check with no floating-point inputs (ids, masks, shapes): such a check runs once and counts for both dtypes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tests.golden_io import GOLDENS, load_golden, text_checkpoint_dir, tol32_whole_model

TOL = {np.float32: 1e-5, np.float64: 1e-10, None: 0.0}
LOGIT_TOL32 = 1e-4   # a whole model's logits in float32 (tests/README.md: ~1e-4 logits)


@dataclass
class Case:
    label: str
    run: Callable            # target -> dict of outputs (or one array, named "out")
    want: dict
    tol: float
    exact: bool = False      # compare with ==, not the relative error
    notes: dict = field(default_factory=dict)


def _m(name):
    import importlib
    return importlib.import_module(f"minig3n.{name}")


@functools.lru_cache(maxsize=None)
def golden(name):
    g = load_golden(name)
    return g


def has_golden(name) -> bool:
    return (GOLDENS / f"{name}.safetensors").is_file()


def out_of(g, dt):
    return g.out32 if dt == np.float32 else g.out64


def sub(w, prefix):
    return {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}


def perturb(p, rng, dt, scale=0.25):
    """Golden weights with fresh noise (same shapes, same sign and rough size), cast to ``dt``."""
    out = {}
    for k, v in p.items():
        v = np.asarray(v, np.float64)
        noise = rng.standard_normal(v.shape)
        out[k] = (v * (1 + scale * noise) + scale * 0.1 * noise * (np.std(v) + 1e-3)).astype(np.float32).astype(dt)
    return out


def cast(p, dt):
    return {k: np.asarray(v).astype(dt) for k, v in p.items()}


def rnd(rng, shape, dt, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32).astype(dt)


def text_cfg(g):
    from minig3n.config import TextConfig
    return TextConfig.from_dict(g.meta["config"])


def _bt(rng, tmax=9):
    return int(rng.integers(1, 4)), int(rng.integers(1, tmax + 1))


# -------------------------------------------------------------------------------------------------- LAuReL
def b_laurel(dt, rng):
    g = golden("text_laurel")
    eps = text_cfg(g).rms_norm_eps
    cases = [Case("golden:text_laurel", lambda f, x=g.inputs["x"].astype(dt), p=cast(g.weights, dt): f(x, p, eps),
                  {"out": out_of(g, dt)["out"]}, TOL[dt])]
    B, T = _bt(rng)
    x, p = rnd(rng, (B, T, g.inputs["x"].shape[-1]), dt), perturb(g.weights, rng, dt)
    cases.append(Case(f"random:B={B},T={T}", lambda f: f(x, p, eps), {"out": _m("laurel").laurel(x, p, eps)},
                      TOL[dt]))
    return cases


# -------------------------------------------------------------------------------------------------- MLP
def b_std_multiplier(dt, rng):
    g = golden("grade_mlp")
    cases = [Case(f"golden:grade_mlp s={s}", lambda f, s=s: np.float64(f(s)), {"out": np.float64(g.out32[f"std_multiplier.{i}"].ravel()[0])},
                  2e-7) for i, s in enumerate(g.meta["sparsities"])]
    s = float(rng.uniform(0.55, 0.99))
    cases.append(Case(f"random:s={s:.4f}", lambda f: np.float64(f(s)), {"out": np.float64(_m("mlp").std_multiplier(s))},
                      2e-7))
    return cases


def b_gaussian_topk(dt, rng):
    g = golden("grade_mlp")
    s = g.meta["gaussian_topk_sparsity"]
    cases = [Case("golden:grade_mlp", lambda f, x=g.inputs["gate"].astype(dt): f(x, s),
                  {"out": out_of(g, dt)["gaussian_topk"]}, TOL[dt])]
    B, T = _bt(rng)
    I, s2 = int(rng.integers(8, 40)), float(rng.uniform(0.6, 0.97))
    x = rnd(rng, (B, T, I), dt)
    cases.append(Case(f"random:B={B},T={T},I={I},s={s2:.3f}", lambda f: f(x, s2),
                      {"out": _m("mlp").gaussian_topk(x, s2)}, TOL[dt]))
    return cases


def b_mlp(dt, rng):
    cases = []
    for name in ("text_mlp_sparse", "text_mlp_dense"):
        g = golden(name)
        s = text_cfg(g).activation_sparsity_pattern[g.meta["layer_idx"]]
        cases.append(Case(f"golden:{name}", lambda f, x=g.inputs["x"].astype(dt), p=cast(g.weights, dt), s=s: f(x, p, s),
                          {"out": out_of(g, dt)["out"]}, TOL[dt]))
    g = golden("text_mlp_sparse")
    B, T = _bt(rng)
    s = float(rng.uniform(0.6, 0.97))
    x, p = rnd(rng, (B, T, g.inputs["x"].shape[-1]), dt), perturb(g.weights, rng, dt)
    cases.append(Case(f"random:B={B},T={T},s={s:.3f}", lambda f: f(x, p, s), {"out": _m("mlp").mlp(x, p, s)}, TOL[dt]))
    return cases


# -------------------------------------------------------------------------------------------------- PLE
def _ple_inputs(rng, cfg):
    B, T = _bt(rng)
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    ids.flat[0] = cfg.vocab_size - 1
    return ids


def b_ple_ids(dt, rng):
    g = golden("text_ple")
    cfg = text_cfg(g)
    ids0 = g.inputs["input_ids"].astype(np.int64)
    ids = _ple_inputs(rng, cfg)
    U = cfg.vocab_size_per_layer_input
    return [Case("golden:text_ple", lambda f: f(ids0, U), {"out": _m("ple").ple_ids(ids0, U)}, 0, exact=True),
            Case(f"random:{ids.shape}", lambda f: f(ids, U), {"out": _m("ple").ple_ids(ids, U)}, 0, exact=True)]


def b_per_layer_token_inputs(dt, rng):
    g = golden("text_ple")
    cfg = text_cfg(g)
    L, P = cfg.num_hidden_layers, cfg.hidden_size_per_layer_input
    table = g.weights["embed_tokens_per_layer.weight"].astype(dt)
    rows0 = table[_m("ple").ple_ids(g.inputs["input_ids"].astype(np.int64), cfg.vocab_size_per_layer_input)]
    ids = _ple_inputs(rng, cfg)
    rows = rnd(rng, ids.shape + (L * P,), dt)
    return [Case("golden:text_ple", lambda f: f(rows0, L, P), {"out": out_of(g, dt)["token_inputs"]}, TOL[dt]),
            Case(f"random:{rows.shape}", lambda f: f(rows, L, P),
                 {"out": _m("ple").per_layer_token_inputs(rows, L, P)}, TOL[dt])]


def b_project_per_layer_inputs(dt, rng):
    g = golden("text_ple")          # derived: the reference's token part -> the reference's per_layer_inputs
    cfg = text_cfg(g)
    o = out_of(g, dt)
    emb, tok, p = g.inputs["inputs_embeds"].astype(dt), o["token_inputs"].astype(dt), cast(g.weights, dt)
    B, T = _bt(rng)
    e2 = rnd(rng, (B, T, cfg.hidden_size), dt)
    t2 = rnd(rng, (B, T, cfg.num_hidden_layers, cfg.hidden_size_per_layer_input), dt)
    p2 = perturb(g.weights, rng, dt)
    return [Case("golden:text_ple (token part -> per_layer_inputs)", lambda f: f(emb, tok, p, cfg),
                 {"out": o["per_layer_inputs"]}, TOL[dt]),
            Case(f"random:B={B},T={T}", lambda f: f(e2, t2, p2, cfg),
                 {"out": _m("ple").project_per_layer_inputs(e2, t2, p2, cfg)}, TOL[dt])]


def b_per_layer_inputs(dt, rng):
    g = golden("text_ple")
    cfg = text_cfg(g)
    p = cast(g.weights, dt)
    ids0, emb0 = g.inputs["input_ids"].astype(np.int64), g.inputs["inputs_embeds"].astype(dt)
    ids = _ple_inputs(rng, cfg)
    emb = rnd(rng, ids.shape + (cfg.hidden_size,), dt)
    p2 = perturb(g.weights, rng, dt)
    return [Case("golden:text_ple", lambda f: f(ids0, emb0, p["embed_tokens_per_layer.weight"].__getitem__, p, cfg),
                 {"out": out_of(g, dt)["per_layer_inputs"]}, TOL[dt]),
            Case(f"random:{ids.shape}", lambda f: f(ids, emb, p2["embed_tokens_per_layer.weight"].__getitem__, p2, cfg),
                 {"out": _m("ple").per_layer_inputs(ids, emb, p2["embed_tokens_per_layer.weight"].__getitem__, p2,
                                                    cfg)}, TOL[dt])]


# -------------------------------------------------------------------------------------------------- AltUp
def _altup_random(rng, dt):
    g = golden("text_altup")
    cfg = text_cfg(g)
    B, T = _bt(rng)
    K, D = cfg.altup_num_inputs, cfg.hidden_size
    return g, cfg, rnd(rng, (K, B, T, D), dt), rnd(rng, (B, T, D), dt), perturb(g.weights, rng, dt), (B, T)


def b_router_modalities(dt, rng):
    g, cfg, S, A_, p2, (B, T) = _altup_random(rng, dt)
    p = cast(g.weights, dt)
    return [Case("golden:text_altup", lambda f: f(g.inputs["activated"].astype(dt), p, cfg),
                 {"out": out_of(g, dt)["router_modalities"]}, TOL[dt]),
            Case(f"random:B={B},T={T}", lambda f: f(A_, p2, cfg), {"out": _m("altup").router_modalities(A_, p2, cfg)},
                 TOL[dt])]


def b_predict(dt, rng):
    g, cfg, S, A_, p2, (B, T) = _altup_random(rng, dt)
    p = cast(g.weights, dt)
    return [Case("golden:text_altup", lambda f: f(g.inputs["streams"].astype(dt), p, cfg),
                 {"out": out_of(g, dt)["predict"]}, TOL[dt]),
            Case(f"random:B={B},T={T}", lambda f: f(S, p2, cfg), {"out": _m("altup").predict(S, p2, cfg)}, TOL[dt])]


def b_correct(dt, rng):
    g, cfg, S, A_, p2, (B, T) = _altup_random(rng, dt)
    p, o = cast(g.weights, dt), out_of(g, dt)
    return [Case("golden:text_altup", lambda f: f(o["predict"].astype(dt), g.inputs["activated"].astype(dt), p, cfg),
                 {"out": o["correct"]}, TOL[dt]),
            Case(f"random:B={B},T={T}", lambda f: f(S, A_, p2, cfg), {"out": _m("altup").correct(S, A_, p2, cfg)},
                 TOL[dt])]


def b_scale_corrected_output(dt, rng):
    g, cfg, S, A_, p2, (B, T) = _altup_random(rng, dt)
    p, o = cast(g.weights, dt), out_of(g, dt)
    return [Case("golden:text_altup", lambda f: f(o["correct"][cfg.altup_active_idx].astype(dt), p),
                 {"out": o["scale_corrected_output"]}, TOL[dt]),
            Case(f"random:B={B},T={T}", lambda f: f(A_, p2), {"out": _m("altup").scale_corrected_output(A_, p2)},
                 TOL[dt])]


def b_make_streams(dt, rng):
    g = golden("text_altup_streams")
    cfg = text_cfg(g)
    B, T = _bt(rng)
    x, p2 = rnd(rng, (B, T, cfg.hidden_size), dt), perturb(g.weights, rng, dt)
    return [Case("golden:text_altup_streams", lambda f: f(g.inputs["inputs_embeds"].astype(dt), cast(g.weights, dt), cfg),
                 {"out": out_of(g, dt)["streams"]}, TOL[dt]),
            Case(f"random:B={B},T={T}", lambda f: f(x, p2, cfg), {"out": _m("altup").make_streams(x, p2, cfg)}, TOL[dt])]


def b_collapse_streams(dt, rng):
    g = golden("text_altup_streams")
    cfg = text_cfg(g)
    key = "final_streams32" if dt == np.float32 else "final_streams64"
    B, T = _bt(rng)
    S, p2 = rnd(rng, (cfg.altup_num_inputs, B, T, cfg.hidden_size), dt), perturb(g.weights, rng, dt)
    return [Case("golden:text_altup_streams", lambda f: f(g.inputs[key].astype(dt), cast(g.weights, dt), cfg),
                 {"out": out_of(g, dt)["collapsed"]}, TOL[dt]),
            Case(f"random:B={B},T={T}", lambda f: f(S, p2, cfg), {"out": _m("altup").collapse_streams(S, p2, cfg)},
                 TOL[dt])]


# -------------------------------------------------------------------------------------------------- attention
def b_rope_inv_freq(dt, rng):
    g = golden("grade_attention")
    cases = [Case(f"golden:grade_attention base={b:g}", lambda f, b=b: np.asarray(f(b, g.meta["head_dim"])),
                  {"out": g.out32[f"inv_freq.{t}"]}, 1e-7) for t, b in g.meta["bases"].items()]
    base, E = float(rng.choice([1e4, 1e6, 5e5])), int(rng.choice([8, 16, 32, 64]))
    cases.append(Case(f"random:base={base:g},E={E}", lambda f: np.asarray(f(base, E)),
                      {"out": _m("attention").rope_inv_freq(base, E)}, 1e-7))
    return cases


def b_rope_cos_sin(dt, rng):
    g = golden("grade_attention")
    o = out_of(g, dt)
    cases = []
    for t in g.meta["bases"]:
        inv = g.out32[f"inv_freq.{t}"]
        cases.append(Case(f"golden:grade_attention {t}", lambda f, inv=inv: dict(zip(("cos", "sin"),
                          f(g.inputs["position_ids"].astype(np.int64), inv, dt))),
                          {"cos": o[f"cos.{t}"], "sin": o[f"sin.{t}"]}, TOL[dt]))
    B, T = _bt(rng)
    pos = np.sort(rng.integers(0, 5000, (B, T)), axis=-1)
    inv = _m("attention").rope_inv_freq(1e4, int(rng.choice([8, 16, 32])))
    c, s = _m("attention").rope_cos_sin(pos, inv, dt)
    cases.append(Case(f"random:B={B},T={T},max pos={pos.max()}", lambda f: dict(zip(("cos", "sin"), f(pos, inv, dt))),
                      {"cos": c, "sin": s}, TOL[dt]))
    return cases


def b_rotate_half(dt, rng):
    x = rnd(rng, (int(rng.integers(1, 4)), int(rng.integers(1, 6)), 2 * int(rng.integers(1, 9))), dt)
    g = golden("grade_attention")
    x0 = g.inputs["x"].astype(dt)
    return [Case("golden:grade_attention", lambda f: f(x0), {"out": out_of(g, dt)["rotate_half"]}, TOL[dt]),
            Case(f"random:{x.shape}", lambda f: f(x), {"out": _m("attention").rotate_half(x)}, TOL[dt])]


def b_apply_rope(dt, rng):
    g = golden("grade_attention")
    o = out_of(g, dt)
    x0 = g.inputs["x"].astype(dt)
    cases = [Case(f"golden:grade_attention {t}", lambda f, t=t: f(x0, o[f"cos.{t}"].astype(dt), o[f"sin.{t}"].astype(dt)),
                  {"out": o[f"rope.{t}"]}, TOL[dt]) for t in g.meta["bases"]]
    B, T = _bt(rng)
    H, E = int(rng.integers(1, 4)), 2 * int(rng.integers(2, 9))
    x = rnd(rng, (B, T, H, E), dt)
    c, s = _m("attention").rope_cos_sin(rng.integers(0, 100, (B, T)), _m("attention").rope_inv_freq(1e4, E), dt)
    cases.append(Case(f"random:{x.shape}", lambda f: f(x, c, s), {"out": _m("attention").apply_rope(x, c, s)}, TOL[dt]))
    return cases


def b_attention_mask(dt, rng):
    att = _m("attention")
    cases = []
    for trial in range(3):
        T = int(rng.integers(1, 8))
        past = int(rng.integers(0, 10))
        q = np.arange(past, past + T)
        k = np.arange(int(rng.integers(0, past + 1)), past + T)
        real = rng.random((int(rng.integers(1, 3)), k.size)) > 0.2 if trial != 1 else None
        win = int(rng.integers(2, 6)) if trial != 0 else None
        cases.append(Case(f"random:T={T},past={past},window={win},padding={real is not None}",
                          lambda f, q=q, k=k, real=real, win=win: np.asarray(f(q, k, real, win), bool),
                          {"out": att.attention_mask(q, k, real, win)}, 0, exact=True))
    return cases


def b_layer_sliding_window(dt, rng):
    cases = []
    for name in ("text_model_causal", "text_model_k3"):
        cfg = text_cfg(golden(name))
        want = [_m("attention").layer_sliding_window(cfg, i) for i in range(cfg.num_hidden_layers)]
        cases.append(Case(f"golden:{name} config", lambda f, cfg=cfg: [f(cfg, i) for i in range(cfg.num_hidden_layers)],
                          {"out": want}, 0, exact=True))
    return cases


def _attention_args(x, p, cfg, li, am, pos):
    """The rope tables and mask of a layer, computed with minig3n *before* the graded call."""
    att = _m("attention")
    T = x.shape[1]
    mask = att.attention_mask(np.arange(T), np.arange(T), am, att.layer_sliding_window(cfg, li))
    base = cfg.rope_local_base_freq if cfg.layer_types[li] == "sliding_attention" else cfg.rope_theta
    cos, sin = att.rope_cos_sin(pos, att.rope_inv_freq(base, cfg.head_dim), x.dtype)
    return (x, p, cfg, cfg.layer_types[li], cos, sin, mask)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def b_self_attention(dt, rng):
    att = _m("attention")
    cases = []
    for name in ("text_attention_sliding", "text_attention_full"):
        g = golden(name)
        cfg, li = text_cfg(g), g.meta["layer_idx"]
        args = _attention_args(g.inputs["x"].astype(dt), cast(g.weights, dt), cfg, li,
                               g.inputs["attention_mask"].astype(bool), g.inputs["position_ids"].astype(np.int64))
        cases.append(Case(f"golden:{name}", lambda f, a=args: _first(f(*a)), {"out": out_of(g, dt)["out"]}, TOL[dt]))
    g = golden("text_attention_sliding")
    cfg, li = text_cfg(g), g.meta["layer_idx"]
    B, T = _bt(rng, 13)
    am = np.ones((B, T), bool)
    am[0, :int(rng.integers(0, T))] = False
    pos = np.where(am, np.cumsum(am, -1) - 1, 0)
    args = _attention_args(rnd(rng, (B, T, cfg.hidden_size), dt), perturb(g.weights, rng, dt), cfg, li, am, pos)
    cases.append(Case(f"random:B={B},T={T}", lambda f: _first(f(*args)), {"out": _first(att.self_attention(*args))},
                      TOL[dt]))
    return cases


def b_kv_sharing(dt, rng):
    ks = _m("kv_share")
    cases = []
    for name in ("text_model_causal", "text_model_k3", "generation_greedy"):
        g = golden(name)
        d = g.meta.get("config") or g.meta.get("second_config")
        if d is None:
            continue
        from minig3n.config import TextConfig
        cfg = TextConfig.from_dict(d)
        cases.append(Case(f"golden:{name} config", lambda f, cfg=cfg: f(cfg), {"out": ks.kv_sharing_modes(cfg)}, 0,
                          exact=True))
    return cases


def b_kv_producer(dt, rng):
    ks = _m("kv_share")
    cases = []
    for name in ("text_model_causal", "text_model_k3"):
        cfg = text_cfg(golden(name))
        want = [ks.kv_producer(cfg, i) for i in range(cfg.num_hidden_layers)]
        cases.append(Case(f"golden:{name} config", lambda f, cfg=cfg: [f(cfg, i) for i in range(cfg.num_hidden_layers)],
                          {"out": want}, 0, exact=True))
    return cases


# -------------------------------------------------------------------------------------------------- models
@functools.lru_cache(maxsize=None)
def model_dir(name) -> Path:
    """A checkpoint directory built from a model golden's weights and config (cached per process)."""
    g = golden(name)
    return text_checkpoint_dir(g.weights, g.meta["config"], f"minig3n_grade_{name}_")   # removed at exit


@functools.lru_cache(maxsize=None)
def text_model(name, dt):
    return _m("decoder").load_text_model(model_dir(name), dt)


def _random_ids(rng, cfg, B, T):
    ids = rng.integers(3, cfg.vocab_size, (B, T))
    am = np.ones((B, T), np.int64)
    if B > 1:
        am[1, :int(rng.integers(1, max(2, T // 2)))] = 0
    ids = np.where(am == 1, ids, cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    return ids, am


# -------------------------------------------------------------------------------------------------- KV cache
def _cache_fields(c):
    ks = [None if k is None else np.asarray(k) for k in c.keys]
    vs = [None if v is None else np.asarray(v) for v in c.values]
    return {"keys": ks, "values": vs, "starts": [int(s) for s in c.starts], "length": int(c.length),
            "batch_size": int(c.batch_size)}


def b_kv_cache_empty(dt, rng):
    cases = []
    for name in ("text_model_causal", "text_model_k3"):
        cfg = text_cfg(golden(name))
        B = int(rng.integers(1, 4))
        want = _cache_fields(_m("kv_cache").KVCache.empty(cfg, B, dt))
        want["nbytes"] = 0
        cases.append(Case(f"golden:{name} config, B={B}",
                          lambda C, cfg=cfg, B=B: {**_cache_fields(C.empty(cfg, B, dt)), "nbytes": int(C.empty(cfg, B, dt).nbytes)},
                          want, 0, exact=True))
    return cases


def _drive_cache(C, cfg, B, dt, steps, seed):
    """Advance a cache through ``steps`` calls of fresh random keys, reading ``past`` in between."""
    r = np.random.default_rng(seed)
    c = C.empty(cfg, B, dt)
    G, E = cfg.num_key_value_heads, cfg.head_dim
    seen = []
    for n in steps:
        nk, nv, ns = {}, {}, {}
        for layer in range(cfg.num_hidden_layers):
            past = c.past(layer)
            seen.append(None if past is None else [np.asarray(a) for a in past])
            if past is None:
                continue
            k0, v0, pos = past
            nk[layer] = np.concatenate([k0, rnd(r, (B, n, G, E), dt)], axis=1)
            nv[layer] = np.concatenate([v0, rnd(r, (B, n, G, E), dt)], axis=1)
            ns[layer] = int(pos[0]) if len(pos) else int(c.length)
        c = c.advanced(cfg, nk, nv, ns, n)
    return {**_cache_fields(c), "past": seen, "nbytes": int(c.nbytes)}


def b_kv_cache_advance(dt, rng):
    cfg = text_cfg(golden("text_model_causal"))
    steps = [int(rng.integers(1, cfg.sliding_window + 3))] + [1] * int(rng.integers(2, 7)) + [int(rng.integers(2, 5))]
    B, seed = int(rng.integers(1, 3)), int(rng.integers(2**31))
    want = _drive_cache(_m("kv_cache").KVCache, cfg, B, dt, steps, seed)
    return [Case(f"random:B={B},steps={steps}", lambda C: _drive_cache(C, cfg, B, dt, steps, seed), want, 0,
                 exact=True)]


def _incremental(C, model, ids, am, prefill):
    dec = _m("decoder")
    B, T = ids.shape
    cache = C.empty(model.cfg, B, model.dtype)
    logits, cache = dec.forward(model, ids[:, :prefill], attention_mask=am[:, :prefill], cache=cache)
    steps = [logits]
    for t in range(prefill, T):
        logits, cache = dec.forward(model, ids[:, t:t + 1], attention_mask=am[:, :t + 1], cache=cache)
        steps.append(logits)
    return {"logits": np.concatenate(steps, axis=1)}


def b_kv_cache_decode(dt, rng):
    name = "text_model_causal"
    model = text_model(name, dt)
    cfg = model.cfg
    B, T = int(rng.integers(1, 3)), int(rng.integers(cfg.sliding_window + 2, cfg.sliding_window + 8))
    ids, am = _random_ids(rng, cfg, B, T)
    prefill = int(rng.integers(1, T - 1))
    full, _ = _m("decoder").forward(model, ids, attention_mask=am)
    tol = LOGIT_TOL32 if dt == np.float32 else TOL[dt]
    return [Case(f"random:B={B},T={T},prefill={prefill} (minig3n's forward with your cache = one full pass)",
                 lambda C: _incremental(C, model, ids, am, prefill), {"logits": full}, tol)]


# -------------------------------------------------------------------------------------------------- decoder
def b_per_layer_input_branch(dt, rng):
    g = golden("grade_decoder")
    cfg = text_cfg(g)
    p = cast(g.weights, dt)
    o = out_of(g, dt)
    cases = [Case("golden:grade_decoder", lambda f: f(g.inputs["corrected_active"].astype(dt),
                                                      g.inputs["per_layer_input"].astype(dt), p, cfg),
                  {"out": o["per_layer_input_branch"]}, TOL[dt])]
    B, T = _bt(rng)
    x, ple = rnd(rng, (B, T, cfg.hidden_size), dt), rnd(rng, (B, T, cfg.hidden_size_per_layer_input), dt)
    p2 = perturb(g.weights, rng, dt)
    cases.append(Case(f"random:B={B},T={T}", lambda f: f(x, ple, p2, cfg),
                      {"out": _m("decoder").per_layer_input_branch(x, ple, p2, cfg)}, TOL[dt]))
    return cases


def _layer_call(f, streams, ple, p, cfg, li, am):
    att = _m("attention")
    T = streams.shape[2]
    mask = att.attention_mask(np.arange(T), np.arange(T), am, att.layer_sliding_window(cfg, li))
    pos = np.where(am, np.cumsum(am, -1) - 1, 0)
    base = cfg.rope_local_base_freq if cfg.layer_types[li] == "sliding_attention" else cfg.rope_theta
    cos, sin = att.rope_cos_sin(pos, att.rope_inv_freq(base, cfg.head_dim), streams.dtype)
    out = f(streams, ple, p, cfg, li, cos, sin, mask)
    return out[0] if isinstance(out, tuple) else out


def b_decoder_layer(dt, rng):
    g = golden("text_decoder_layer")
    cfg, li = text_cfg(g), g.meta["layer_idx"]
    am0 = g.inputs["attention_mask"].astype(bool)
    args0 = (g.inputs["streams"].astype(dt), g.inputs["per_layer_input"].astype(dt), cast(g.weights, dt), cfg, li, am0)
    B, T = _bt(rng, 13)
    am = np.ones((B, T), bool)
    am[-1, :int(rng.integers(0, T))] = False
    args = (rnd(rng, (cfg.altup_num_inputs, B, T, cfg.hidden_size), dt),
            rnd(rng, (B, T, cfg.hidden_size_per_layer_input), dt), perturb(g.weights, rng, dt), cfg, li, am)
    return [Case("golden:text_decoder_layer", lambda f: _layer_call(f, *args0), {"out": out_of(g, dt)["out"]}, TOL[dt]),
            Case(f"random:B={B},T={T}", lambda f: _layer_call(f, *args),
                 {"out": _layer_call(_m("decoder").decoder_layer, *args)}, TOL[dt])]


def b_forward(dt, rng):
    tol = LOGIT_TOL32 if dt == np.float32 else TOL[dt]
    cases = []
    for name in ("text_model_causal", "text_model_k3"):
        g = golden(name)
        model = text_model(name, dt)
        ids, am = g.inputs["input_ids"].astype(np.int64), g.inputs["attention_mask"].astype(np.int64)
        cases.append(Case(f"golden:{name}", lambda f, m=model, ids=ids, am=am: {"logits": f(m, ids, attention_mask=am)[0]},
                          {"logits": out_of(g, dt)["logits"]}, tol))
    model = text_model("text_model_causal", dt)
    B, T = _bt(rng, 12)
    ids, am = _random_ids(rng, model.cfg, B, T)
    cases.append(Case(f"random:B={B},T={T}", lambda f: {"logits": f(model, ids, attention_mask=am)[0]},
                      {"logits": _m("decoder").forward(model, ids, attention_mask=am)[0]}, tol))
    return cases


# -------------------------------------------------------------------------------------------------- sampling
def _params(t, k, p):
    return _m("sampling").SamplingParams(t, k, p).validate()


def b_warp(dt, rng):
    g = golden("grade_sampling")
    cases = []
    for i, (t, k, p) in enumerate(g.meta["warp_params"]):
        cases.append(Case(f"golden:grade_sampling t={t},k={k},p={p}",
                          lambda f, t=t, k=k, p=p: _finite(f(g.inputs["logits"], _params(t, k, p))),
                          _finite(g.out64[f"warp.{i}"]), 1e-12))
    V = int(rng.integers(5, 60))
    x = rng.standard_normal(V) * 3
    t, k, p = float(rng.uniform(0.3, 2)), int(rng.integers(0, V)), float(rng.uniform(0.3, 1))
    cases.append(Case(f"random:V={V},t={t:.2f},k={k},p={p:.2f}", lambda f: _finite(f(x, _params(t, k, p))),
                      _finite(_m("sampling").warp(x, _params(t, k, p))), 1e-12))
    return cases


def _finite(x):
    """Warped logits as two outputs: which tokens stay (exact), and their values (relative error)."""
    x = np.asarray(x, np.float64)
    keep = np.isfinite(x)
    return {"kept": keep, "values": np.where(keep, x, 0.0)}


def b_probabilities(dt, rng):
    V = int(rng.integers(5, 60))
    x = rng.standard_normal(V) * 3
    t, k, p = float(rng.uniform(0.3, 2)), int(rng.integers(0, V)), float(rng.uniform(0.3, 1))
    g = golden("grade_sampling")
    cases = [Case(f"golden:grade_sampling t={t_},k={k_},p={p_}",
                  lambda f, a=(t_, k_, p_): np.asarray(f(g.inputs["logits"], _params(*a)), np.float64),
                  {"out": g.out64[f"probs.{i}"]}, 1e-12) for i, (t_, k_, p_) in enumerate(g.meta["warp_params"])]
    cases.append(Case(f"random:V={V},t={t:.2f},k={k},p={p:.2f}", lambda f: np.asarray(f(x, _params(t, k, p)), np.float64),
                      {"out": _m("sampling").probabilities(x, _params(t, k, p))}, 1e-12))
    return cases


def _draws(f, x, params, n, seed):
    rng = np.random.default_rng(seed)
    counts = np.zeros(x.size)
    for _ in range(n):
        counts[int(f(x, params, rng))] += 1
    return counts / n


def b_sample_next(dt, rng):
    V = int(rng.integers(4, 9))
    x = rng.standard_normal(V) * 2
    t, k = float(rng.uniform(0.5, 1.5)), int(rng.integers(0, V))
    params = _params(t, k, 1.0)
    n, seed = 3000, int(rng.integers(2**31))
    probs = _m("sampling").probabilities(x, params)
    return [Case("random:temperature 0 = argmax", lambda f: {"token": int(f(x, _params(0.0, 0, 1.0), None))},
                 {"token": int(np.argmax(x))}, 0, exact=True),
            Case(f"random:V={V},t={t:.2f},k={k}: frequencies of {n} draws (tolerance 0.04 absolute)",
                 lambda f: {"frequencies": _draws(f, x, params, n, seed)}, {"frequencies": probs}, 0.04,
                 notes={"absolute": True})]


# -------------------------------------------------------------------------------------------------- generation
TINY = Path(__file__).resolve().parents[2] / "weights" / "tiny-random-gemma3n"


@functools.lru_cache(maxsize=None)
def tokenizer():
    return _m("tokenizer").Tokenizer.from_dir(TINY)


def _stream(S, ids):
    s = S(tokenizer())
    return {"pieces": [s.push(int(i)) for i in ids] + [s.flush()]}


def b_stream_decoder(dt, rng):
    tok = tokenizer()
    byte_ids = [i for i in range(tok.vocab_size) if tok.is_byte(i)]
    ids = [int(i) for i in rng.integers(3, min(tok.vocab_size, 1024), 12)]
    pos = sorted(rng.choice(len(ids), 4, replace=False))
    for j in pos:
        ids[j] = int(rng.choice(byte_ids))
    ids += [int(b) for b in rng.choice(byte_ids, 2)]
    G = _m("generate").StreamDecoder
    return [Case(f"random:{len(ids)} ids with byte pieces", lambda S: _stream(S, ids), _stream(G, ids), 0, exact=True)]


def _gen(Gen, ids, n, dtype_name):
    gen = Gen.load(TINY, dtype_name)
    P = _m("generate").Prompt
    out = list(gen.generate(P(list(ids)), n, _m("sampling").SamplingParams()))
    return {"tokens": [int(t) for t, _ in out], "pieces": [s for _, s in out]}


def b_generator(dt, rng):
    dname = "float32" if dt == np.float32 else "float64"
    g = golden("generation_greedy")
    n = 16        # greedy: the first 16 of the reference's 64 tokens (a prefix of a greedy run is a greedy run)
    cases = []
    for i, ids in enumerate(g.meta["tiny_prompt_ids"][:2]):
        want = [int(t) for t in g.meta["tiny_tokens"][i]][:n]
        cases.append(Case(f"golden:generation_greedy prompt {i}", lambda G, ids=ids: {"tokens": _gen(G, ids, n, dname)["tokens"]},
                          {"tokens": want}, 0, exact=True))
    ids = [2] + [int(i) for i in rng.integers(3, 1000, int(rng.integers(2, 8)))]
    m = int(rng.integers(4, 12))
    cases.append(Case(f"random:prompt of {len(ids)} ids, {m} new tokens", lambda G: _gen(G, ids, m, dname),
                      _gen(_m("generate").Generator, ids, m, dname), 0, exact=True))
    return cases


# -------------------------------------------------------------------------------------------------- features
def b_hann_window(dt, rng):
    g = golden("grade_features")
    return [Case("golden:grade_features", lambda f: np.asarray(f()), {"out": g.out32["window"]}, 1e-7)]


def b_mel_filterbank(dt, rng):
    g = golden("grade_features")
    cases = [Case(f"golden:grade_features n_mels={m}", lambda f, m=m: np.asarray(f(m)), {"out": g.out64[f"mel.{m}"]},
                  1e-12) for m in g.meta["n_mels"]]
    m = int(rng.integers(8, 100))
    cases.append(Case(f"random:n_mels={m}", lambda f: np.asarray(f(m)), {"out": _m("features").mel_filterbank(m)}, 1e-12))
    return cases


def b_log_mel(dt, rng):
    g = golden("grade_features")
    cases = [Case(f"golden:grade_features {k}", lambda f, k=k, m=m: np.asarray(f(g.inputs[k].astype(np.float32), m)),
                  {"out": g.out32[f"log_mel.{k}"]}, 1e-5) for k, m in g.meta["log_mel"].items()]
    B, A, m = int(rng.integers(1, 3)), int(rng.integers(600, 4000)), int(rng.choice([32, 64, 128]))
    w = (rng.standard_normal((B, A)) * 0.1).astype(np.float32)
    cases.append(Case(f"random:B={B},A={A},n_mels={m}", lambda f: np.asarray(f(w, m)),
                      {"out": _m("features").log_mel(w, m)}, 1e-5))
    return cases


def b_extract_features(dt, rng):
    g = golden("audio_features")
    cases = []
    for case, spec in g.meta["cases"].items():
        n = len([k for k in g.inputs if k.startswith(case + ".wave")])
        waves = [g.inputs[f"{case}.wave{i}"] for i in range(n)]
        if not waves or f"{case}.features" not in g.out32:
            continue
        kw = dict(spec)
        want = {"features": g.out32[f"{case}.features"]}
        if f"{case}.mask" in g.out32:
            want["mask"] = g.out32[f"{case}.mask"].astype(bool)

        def run(f, waves=waves, kw=kw, keys=tuple(want)):
            feats, mask = f(waves, **kw)
            return dict(zip(("features", "mask"), (np.asarray(feats), np.asarray(mask, bool))[:len(keys)]))
        cases.append(Case(f"golden:audio_features {case}", run, want, 1e-5))
    waves = [(rng.standard_normal(int(n)) * 0.1).astype(np.float32) for n in rng.integers(700, 5000, int(rng.integers(1, 3)))]
    feats, mask = _m("features").extract_features(waves)
    cases.append(Case(f"random:{len(waves)} waveforms of {[len(w) for w in waves]} samples",
                      lambda f: dict(zip(("features", "mask"), (lambda r: (np.asarray(r[0]), np.asarray(r[1], bool)))(f(waves)))),
                      {"features": feats, "mask": np.asarray(mask, bool)}, 1e-5))
    return cases


# -------------------------------------------------------------------------------------------------- USM
def audio_cfg(g):
    from minig3n.config import AudioConfig
    return AudioConfig(**g.meta["config"])


def _usm(name, call, dt, rng, random_in):
    """A USM sub-module case fed the reference's own input (``<name>:in``), and one on fresh inputs."""
    g = golden("audio_encoder_tiny")
    cfg, o = audio_cfg(g), out_of(g, dt)
    mask = o["conformer.0:mask"].astype(bool)
    p = cast(sub(g.weights, name + "."), dt)
    want = o[name]
    cases = [Case(f"golden:audio_encoder_tiny {name}", lambda f: call(f, o[name + ":in"].astype(dt), mask, p, cfg),
                  {"out": want.reshape(*want.shape[:2], -1) if name.endswith(".attn") else want}, TOL[dt])]
    x, m = random_in(rng, dt, cfg)
    p2 = perturb(sub(g.weights, name + "."), rng, dt, 0.15)
    ref = call(getattr(_m("usm"), _USM_FN[name]), x, m, p2, cfg)
    cases.append(Case(f"random:{tuple(x.shape)}", lambda f: call(f, x, m, p2, cfg), {"out": ref}, TOL[dt]))
    return cases


_USM_FN = {"conformer.0.ffw_layer_start": "feed_forward", "conformer.0.attention.attn": "local_attention",
           "conformer.0.attention": "conformer_attention", "conformer.0.lconv1d": "light_conv1d",
           "conformer.0": "conformer_block"}


def _btd(rng, dt, cfg):
    B, T = int(rng.integers(1, 3)), int(rng.integers(3, 30))
    m = np.zeros((B, T), bool)
    m[-1, T - int(rng.integers(0, T // 2 + 1)):] = True
    return rnd(rng, (B, T, cfg.hidden_size), dt), m


def b_usm_feed_forward(dt, rng):
    return _usm("conformer.0.ffw_layer_start", lambda f, x, m, p, c: f(x, p, c), dt, rng, _btd)


def b_usm_local_attention(dt, rng):
    return _usm("conformer.0.attention.attn", lambda f, x, m, p, c: f(x, m, p, c), dt, rng, _btd)


def b_usm_conformer_attention(dt, rng):
    return _usm("conformer.0.attention", lambda f, x, m, p, c: f(x, m, p, c), dt, rng, _btd)


def b_usm_light_conv1d(dt, rng):
    return _usm("conformer.0.lconv1d", lambda f, x, m, p, c: f(x, p, c), dt, rng, _btd)


def b_usm_conformer_block(dt, rng):
    return _usm("conformer.0", lambda f, x, m, p, c: f(x, m, p, c), dt, rng, _btd)


def b_usm_group_norm(dt, rng):
    g = golden("audio_encoder_tiny")
    cfg, o = audio_cfg(g), out_of(g, dt)
    name = "subsample_conv_projection.conv_0.norm"
    w = g.weights[name + ".weight"].astype(dt)
    eps = cfg.sscp_conv_group_norm_eps
    B, T, F, C = int(rng.integers(1, 3)), int(rng.integers(1, 12)), int(rng.integers(1, 9)), w.size
    x = rnd(rng, (B, T, F, C), dt)
    w2 = (w * (1 + 0.3 * rng.standard_normal(C))).astype(dt)
    return [Case(f"golden:audio_encoder_tiny {name}", lambda f: f(o[name + ":in"].astype(dt), w, eps), {"out": o[name]},
                 TOL[dt]),
            Case(f"random:{x.shape}", lambda f: f(x, w2, eps), {"out": _m("usm").cumulative_group_norm(x, w2, eps)},
                 TOL[dt])]


def b_usm_subsample(dt, rng):
    g = golden("audio_encoder_tiny")
    cfg, o = audio_cfg(g), out_of(g, dt)
    p = cast(sub(g.weights, "subsample_conv_projection."), dt)
    B, F = int(rng.integers(1, 3)), int(rng.integers(5, 40))
    x = rnd(rng, (B, F, cfg.input_feat_size), dt)
    p2 = perturb(sub(g.weights, "subsample_conv_projection."), rng, dt, 0.15)
    return [Case("golden:audio_encoder_tiny subsample_conv_projection",
                 lambda f: f(g.inputs["features"].astype(dt), p, cfg), {"out": o["subsample_conv_projection"]}, TOL[dt]),
            Case(f"random:{x.shape}", lambda f: f(x, p2, cfg),
                 {"out": _m("usm").subsample_conv_projection(x, p2, cfg)}, TOL[dt])]


def _chain_tol(dt, depth):
    """A whole encoder: float32 errors accumulate over its chained modules (tests/golden_io.py:tol32_whole_model,
    the same bound minig3n's own end-to-end tests use); float64 keeps 1e-10."""
    return tol32_whole_model(depth) if dt == np.float32 else TOL[dt]


def b_usm_encoder(dt, rng):
    cases = []
    for name in ("audio_encoder_tiny", "audio_encoder_tiny_ctx"):
        g = golden(name)
        cfg, o = audio_cfg(g), out_of(g, dt)
        tol = _chain_tol(dt, 1 + cfg.conf_num_hidden_layers)
        args = (g.inputs["features"].astype(dt), g.inputs["mask_invalid"].astype(bool), cast(g.weights, dt), cfg)
        cases.append(Case(f"golden:{name}", lambda f, a=args: dict(zip(("out", "mask"), f(*a))),
                          {"out": o["out"], "mask": o["out_mask"].astype(bool)}, tol))
    g = golden("audio_encoder_tiny")
    cfg = audio_cfg(g)
    tol = _chain_tol(dt, 1 + cfg.conf_num_hidden_layers)
    B, F = int(rng.integers(1, 3)), int(rng.integers(12, 60))
    m = np.zeros((B, F), bool)
    m[-1, F - int(rng.integers(0, F // 2)):] = True
    args = (rnd(rng, (B, F, cfg.input_feat_size), dt), m, perturb(g.weights, rng, dt, 0.1), cfg)
    cases.append(Case(f"random:B={B},F={F}", lambda f: dict(zip(("out", "mask"), f(*args))),
                      dict(zip(("out", "mask"), _m("usm").audio_encoder(*args))), tol))
    return cases


def b_q_scale(dt, rng):
    E = int(rng.choice([8, 16, 64, 192]))
    return [Case(f"random:q_scale({E})", lambda f: {"out": np.float64(f(E))},
                 {"out": np.float64(_m("usm").q_scale(E))}, 1e-7)]


def b_inv_timescales(dt, rng):
    D = 2 * int(rng.integers(4, 400))
    return [Case(f"random:inv_timescales({D})", lambda f: {"out": np.asarray(f(D), np.float64)},
                 {"out": np.asarray(_m("usm").inv_timescales(D), np.float64)}, 1e-7)]


# -------------------------------------------------------------------------------------------------- MobileNetV5
def vision_cfg(g, case):
    from minig3n.config import VisionConfig
    d = dict(g.meta["vision_config"])
    d["model_args"] = dict(d["model_args"], msfa_output_resolution=g.meta["cases"][case]["msfa_output_resolution"])
    return VisionConfig.from_dict(d)


def vision_weights(g, dt):
    return {k[len("timm_model."):]: v.astype(dt) for k, v in g.weights.items() if k.startswith("timm_model.")}


def b_same_padding(dt, rng):
    mv = _m("mobilenetv5")
    cases = []
    for _ in range(4):
        n, k, s, d = int(rng.integers(1, 40)), int(rng.choice([1, 3, 5])), int(rng.integers(1, 3)), int(rng.integers(1, 3))
        cases.append(Case(f"random:n={n},k={k},stride={s},dilation={d}", lambda f, a=(n, k, s, d): tuple(f(*a)),
                          {"out": tuple(mv.same_padding(n, k, s, d))}, 0, exact=True))
    return cases


def b_conv2d(dt, rng):
    g = golden("grade_vision")
    cases = [Case(f"golden:grade_vision {c}", lambda f, c=c, a=a: f(g.inputs["x"].astype(dt), g.inputs[f"w.{c}"].astype(dt),
                                                                     a["stride"], a["dilation"]),
                  {"out": out_of(g, dt)[f"conv.{c}"]}, TOL[dt]) for c, a in g.meta["conv"].items()]
    B, C, H, W = int(rng.integers(1, 3)), int(rng.integers(1, 5)), int(rng.integers(3, 14)), int(rng.integers(3, 14))
    O, k, s = int(rng.integers(1, 6)), int(rng.choice([1, 3, 5])), int(rng.integers(1, 3))
    x, w = rnd(rng, (B, C, H, W), dt), rnd(rng, (O, C, k, k), dt, 0.3)
    b = rnd(rng, (O,), dt) if rng.integers(0, 2) else None                    # with and without a bias
    cases.append(Case(f"random:x{x.shape},w{w.shape},stride={s},bias={b is not None}", lambda f: f(x, w, s, 1, b),
                      {"out": _m("mobilenetv5").conv2d(x, w, s, 1, b)}, TOL[dt]))
    return cases


def b_depthwise_conv2d(dt, rng):
    g = golden("grade_vision")
    cases = [Case(f"golden:grade_vision {c}", lambda f, c=c, a=a: f(g.inputs["x"].astype(dt), g.inputs[f"w.dw.{c}"].astype(dt),
                                                                     a["stride"], a["dilation"]),
                  {"out": out_of(g, dt)[f"dw.{c}"]}, TOL[dt]) for c, a in g.meta["dw"].items()]
    B, C, H, W = int(rng.integers(1, 3)), int(rng.integers(1, 6)), int(rng.integers(3, 14)), int(rng.integers(3, 14))
    k, s, d = int(rng.choice([3, 5])), int(rng.integers(1, 3)), int(rng.integers(1, 3))
    x, w = rnd(rng, (B, C, H, W), dt), rnd(rng, (C, 1, k, k), dt, 0.3)
    cases.append(Case(f"random:x{x.shape},k={k},stride={s},dilation={d}", lambda f: f(x, w, s, d),
                      {"out": _m("mobilenetv5").depthwise_conv2d(x, w, s, d)}, TOL[dt]))
    return cases


def b_rms_norm2d(dt, rng):
    g = golden("grade_vision")
    cases = [Case("golden:grade_vision", lambda f: f(g.inputs["x"].astype(dt), g.inputs["norm_weight"].astype(dt), 1e-6),
                  {"out": out_of(g, dt)["rms_norm2d"]}, TOL[dt])]
    B, C, H, W = int(rng.integers(1, 3)), int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
    x, w = rnd(rng, (B, C, H, W), dt), rnd(rng, (C,), dt)
    cases.append(Case(f"random:{x.shape}", lambda f: f(x, w, 1e-6), {"out": _m("mobilenetv5").rms_norm2d(x, w, 1e-6)},
                      TOL[dt]))
    return cases


def _blocks_of_kind(kind):
    g = golden("vision_encoder")
    cfg = vision_cfg(g, "sq")
    spec = _m("mobilenetv5").encoder_spec(cfg)
    names = [(si, bi, b) for si, st in enumerate(spec.stages) for bi, b in enumerate(st) if b.kind == kind]
    return g, cfg, spec, names


def _block_input_name(spec, si, bi):
    if bi > 0:
        return f"blocks.{si}.{bi - 1}"
    if si == 0:
        return "conv_stem"
    return f"blocks.{si - 1}.{len(spec.stages[si - 1]) - 1}"


def _b_block(kind, fn):
    def build(dt, rng):
        g, cfg, spec, names = _blocks_of_kind(kind)
        p = vision_weights(g, dt)
        cases = []
        for case in ("sq", "odd"):
            ref = {k[len(case) + 1:]: v for k, v in out_of(g, dt).items() if k.startswith(case + ".")}
            for si, bi, b in names:
                name = f"blocks.{si}.{bi}"
                x = ref[_block_input_name(spec, si, bi)].astype(dt)
                cases.append(Case(f"golden:vision_encoder {case}.{name}", lambda f, x=x, w=sub(p, name + "."), b=b: f(x, w, b),
                                  {"out": ref[name]}, TOL[dt]))
        si, bi, b = names[int(rng.integers(len(names)))]
        name = f"blocks.{si}.{bi}"
        B, H, W = int(rng.integers(1, 3)), int(rng.integers(3, 12)), int(rng.integers(3, 12))
        x = rnd(rng, (B, b.in_chs, H, W), dt)
        w = perturb(sub(vision_weights(g, np.float32), name + "."), rng, dt, 0.15)
        cases.append(Case(f"random:{name} on x{x.shape}", lambda f: f(x, w, b),
                          {"out": getattr(_m("mobilenetv5"), fn)(x, w, b)}, TOL[dt]))
        return cases
    return build


def b_msfa(dt, rng):
    g = golden("vision_encoder")
    mv = _m("mobilenetv5")
    cases = []
    for case in ("sq", "odd"):
        cfg = vision_cfg(g, case)
        spec = mv.encoder_spec(cfg)
        ref = {k[len(case) + 1:]: v for k, v in out_of(g, dt).items() if k.startswith(case + ".")}
        last = {si + 1: f"blocks.{si}.{len(st) - 1}" for si, st in enumerate(spec.stages)}
        taps = [ref[last[t]].astype(dt) for t in spec.msfa_taps]
        cases.append(Case(f"golden:vision_encoder {case}.msfa", lambda f, taps=taps, spec=spec: f(taps, sub(vision_weights(g, dt), "msfa."), spec),
                          {"out": ref["msfa"]}, TOL[dt]))
    cfg = vision_cfg(g, "sq")
    spec = mv.encoder_spec(cfg)
    ref = {k[3:]: v for k, v in out_of(g, dt).items() if k.startswith("sq.")}
    last = {si + 1: f"blocks.{si}.{len(st) - 1}" for si, st in enumerate(spec.stages)}
    taps = [rnd(rng, ref[last[t]].shape, dt) for t in spec.msfa_taps]
    p2 = perturb(sub(vision_weights(g, np.float32), "msfa."), rng, dt, 0.15)
    cases.append(Case(f"random:taps {[t.shape for t in taps]}", lambda f: f(taps, p2, spec), {"out": mv.msfa(taps, p2, spec)},
                      TOL[dt]))
    return cases


def b_vision_encoder(dt, rng):
    g = golden("vision_encoder")
    mv = _m("mobilenetv5")
    cases = []
    depth = 2 + sum(len(st) for st in mv.encoder_spec(vision_cfg(g, "sq")).stages)   # stem, blocks, MSFA
    tol = _chain_tol(dt, depth)
    for case in ("sq", "odd"):
        cfg = vision_cfg(g, case)
        px = g.inputs[f"{case}.pixel_values"].astype(dt)
        cases.append(Case(f"golden:vision_encoder {case}", lambda f, px=px, cfg=cfg: f(px, vision_weights(g, dt), cfg),
                          {"out": out_of(g, dt)[f"{case}.msfa"]}, tol))
    cfg = vision_cfg(g, "odd")
    H, W = int(rng.integers(24, 56)), int(rng.integers(24, 56))
    px = rnd(rng, (1, 3, H, W), dt)
    p = vision_weights(g, dt)
    cases.append(Case(f"random:pixels (1, 3, {H}, {W})", lambda f: f(px, p, cfg), {"out": mv.vision_encoder(px, p, cfg)},
                      tol))
    return cases


# -------------------------------------------------------------------------------------------------- embedder
def b_embed_soft(dt, rng):
    g = golden("audio_embedder")
    p, eps = cast(g.weights, dt), g.meta["eps"]
    Dm = g.weights["soft_embedding_norm.weight"].shape[0]
    B, T = _bt(rng)
    x, p2 = rnd(rng, (B, T, Dm), dt, 3.0), perturb(g.weights, rng, dt)
    return [Case("golden:audio_embedder soft", lambda f: f(g.inputs["soft"].astype(dt), p, eps),
                 {"out": out_of(g, dt)["soft"]}, TOL[dt]),
            Case(f"random:B={B},T={T}", lambda f: f(x, p2, eps), {"out": _m("embedder").embed_soft(x, p2, eps)}, TOL[dt])]


def b_embed_hard(dt, rng):
    g = golden("audio_embedder")
    p, eps = cast(g.weights, dt), g.meta["eps"]
    ids0 = g.inputs["ids"].astype(np.int64) - g.meta["vocab_offset"]
    V = g.weights["embedding.weight"].shape[0]
    ids = rng.integers(0, V, _bt(rng))
    p2 = perturb(g.weights, rng, dt)
    return [Case("golden:audio_embedder hard", lambda f: f(ids0, p, eps), {"out": out_of(g, dt)["hard"]}, TOL[dt]),
            Case(f"random:{ids.shape}", lambda f: f(ids, p2, eps), {"out": _m("embedder").embed_hard(ids, p2, eps)},
                 TOL[dt])]


BUILDERS = {
    "laurel": b_laurel,
    "std_multiplier": b_std_multiplier, "gaussian_topk": b_gaussian_topk, "mlp": b_mlp,
    "ple_ids": b_ple_ids, "per_layer_token_inputs": b_per_layer_token_inputs,
    "project_per_layer_inputs": b_project_per_layer_inputs, "per_layer_inputs": b_per_layer_inputs,
    "router_modalities": b_router_modalities, "predict": b_predict, "correct": b_correct,
    "scale_corrected_output": b_scale_corrected_output, "make_streams": b_make_streams,
    "collapse_streams": b_collapse_streams,
    "rope_inv_freq": b_rope_inv_freq, "rope_cos_sin": b_rope_cos_sin, "rotate_half": b_rotate_half,
    "apply_rope": b_apply_rope, "attention_mask": b_attention_mask, "layer_sliding_window": b_layer_sliding_window,
    "self_attention": b_self_attention, "kv_sharing_modes": b_kv_sharing, "kv_producer": b_kv_producer,
    "kv_cache_empty": b_kv_cache_empty, "kv_cache_advance": b_kv_cache_advance, "kv_cache_decode": b_kv_cache_decode,
    "per_layer_input_branch": b_per_layer_input_branch, "decoder_layer": b_decoder_layer, "forward": b_forward,
    "warp": b_warp, "probabilities": b_probabilities, "sample_next": b_sample_next,
    "stream_decoder": b_stream_decoder, "generator": b_generator,
    "hann_window": b_hann_window, "mel_filterbank": b_mel_filterbank, "log_mel": b_log_mel,
    "extract_features": b_extract_features,
    "q_scale": b_q_scale, "inv_timescales": b_inv_timescales, "cumulative_group_norm": b_usm_group_norm,
    "subsample_conv_projection": b_usm_subsample, "feed_forward": b_usm_feed_forward,
    "local_attention": b_usm_local_attention, "conformer_attention": b_usm_conformer_attention,
    "light_conv1d": b_usm_light_conv1d, "conformer_block": b_usm_conformer_block, "audio_encoder": b_usm_encoder,
    "embed_soft": b_embed_soft, "embed_hard": b_embed_hard,
    "same_padding": b_same_padding, "conv2d": b_conv2d, "depthwise_conv2d": b_depthwise_conv2d,
    "rms_norm2d": b_rms_norm2d, "edge_residual": _b_block("er", "edge_residual"),
    "universal_inverted_residual": _b_block("uir", "universal_inverted_residual"),
    "mobile_mqa": _b_block("mqa", "mobile_mqa"), "msfa": b_msfa, "vision_encoder": b_vision_encoder,
}
