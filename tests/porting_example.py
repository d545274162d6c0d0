"""A worked example for docs/PORTING.md: an independent NumPy "port" of the Gemma 3n text decoder that writes
a minig3n trace, with switchable classic bugs for the tools to find.

It is written the way a porter would write one from the reference's modeling code (transformers 5.24
``modeling_gemma3n.py``): one function, float64 throughout, reading ``config.json`` and the safetensors file
directly, recording each module's output under the reference's module path with ``rec(name, array)``. It uses
no minig3n code for the maths (only the safetensors reader and ``minig3n.trace.write_trace``), so it shows
what a foreign trace needs: the names of ``decoder.py``'s docstring, batch axis dropped, forward order.

Bugs (``bugs=`` a set of names; each is a mistake real ports made):

* ``"sparsity_ddof1"``: the activation-sparsity threshold with the sample std (n - 1) instead of the population
  std (``torch.std(..., unbiased=False)``) -> shows first at ``layers.0.mlp`` (a sparse layer);
* ``"gelu_fp16"``: the GELU evaluated on float16-rounded inputs (a mixed-precision kernel) -> every MLP,
  the first at ``layers.0.mlp``; on its own much smaller than a float32 tolerance would allow, so a float64
  comparison finds it;
* ``"embed_bf16"``: the scaled embedding rounded to BF16 (an early, harmless difference that makes every
  later tensor differ);
* ``mlp_scale={layer: factor}``: one layer's ``down_proj`` weight multiplied by ``factor`` (a bad loader).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np

from minig3n.safetensors_io import load_safetensors


def _bf16(x):
    """Round float32 values to the nearest BF16 (ties to even), back as float64."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32).astype(np.float64)


def port_trace(model_dir, ids, bugs=(), mlp_scale=None) -> dict:
    """Run ``ids`` (one sequence) through the port; return {trace name: array} in forward order."""
    model_dir = Path(model_dir)
    c = json.loads((model_dir / "config.json").read_text())
    c = c.get("text_config", c)
    W, _ = load_safetensors(model_dir / "model.safetensors", np.float64)
    X = "model." if "model.embed_tokens.weight" in W else "model.language_model."
    w = lambda name: W[X + name]   # noqa: E731
    D, L, P, K = c["hidden_size"], c["num_hidden_layers"], c["hidden_size_per_layer_input"], c["altup_num_inputs"]
    H, G, E, eps = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["rms_norm_eps"]
    trace = {}

    def rec(name, x):
        trace[name] = np.array(x)

    def norm(x, weight=None):
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
        return y if weight is None else y * weight          # Gemma 3n: x * w, not x * (1 + w)

    def gelu(x):
        if "gelu_fp16" in bugs:
            x = x.astype(np.float16).astype(np.float64)
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    def router(x, li):
        r = norm(x, w(f"layers.{li}.altup.router_norm.weight")) / D
        return np.tanh(r @ w(f"layers.{li}.altup.modality_router.weight").T)

    def match_rms(y, target_rms):
        return y * target_rms / np.sqrt(np.maximum(np.mean(y * y, -1, keepdims=True), 1e-5))

    ids = np.asarray(ids)
    T = len(ids)
    # embeddings
    h0 = W[X + "embed_tokens.weight"][ids] * math.sqrt(D)
    if "embed_bf16" in bugs:
        h0 = _bf16(h0)
    rec(X + "embed_tokens", h0)
    ple_rows = W[X + "embed_tokens_per_layer.weight"][np.where(ids < c["vocab_size_per_layer_input"], ids, 0)]
    ple_tok = ple_rows * math.sqrt(P)
    rec(X + "embed_tokens_per_layer", ple_tok)
    proj = h0 @ w("per_layer_model_projection.weight").T
    rec(X + "per_layer_model_projection", proj)
    proj = norm(proj.reshape(T, L, P) / math.sqrt(D), w("per_layer_projection_norm.weight"))
    rec(X + "per_layer_projection_norm", proj)
    ple = (proj + ple_tok.reshape(T, L, P)) / math.sqrt(2)                   # [T, L, P]
    rms0 = np.sqrt(np.mean(h0 * h0, -1, keepdims=True))
    streams = [h0]
    for i in range(K - 1):
        y = h0 @ w(f"altup_projections.{i}.weight").T
        rec(X + f"altup_projections.{i}", y)
        streams.append(match_rms(y, rms0))
    streams = np.stack(streams)                                               # [K, T, D]
    # RoPE
    pos = np.arange(T, dtype=np.float64)
    bases = {t: c["rope_parameters"][t]["rope_theta"] for t in ("full_attention", "sliding_attention")}

    def rope(x, base):                                                        # [T, heads, E]
        inv = 1.0 / base ** (np.arange(0, E, 2) / E)
        ang = np.concatenate([pos[:, None] * inv] * 2, axis=-1)[:, None]     # [T, 1, E]
        rot = np.concatenate([-x[..., E // 2:], x[..., :E // 2]], axis=-1)
        return x * np.cos(ang) + rot * np.sin(ang)

    first_shared = L - c["num_kv_shared_layers"]
    producers = {t: max(i for i in range(first_shared) if c["layer_types"][i] == t) for t in set(c["layer_types"])}
    kv_of = {}
    z = {s: NormalDist().inv_cdf(s) for s in set(c["activation_sparsity_pattern"]) if s > 0}
    for li in range(L):
        n = f"{X}layers.{li}"
        lt = c["layer_types"][li]
        # AltUp predict
        coefs = (router(streams[0], li) @ w(f"layers.{li}.altup.prediction_coefs.weight").T).reshape(T, K, K)
        pred = np.einsum("tij,jtd->itd", coefs, streams) + streams
        a = pred[0]
        x = norm(a, w(f"layers.{li}.input_layernorm.weight"))
        rec(n + ".input_layernorm", x)
        low = x @ w(f"layers.{li}.laurel.linear_left.weight").T
        lau = x + norm(low @ w(f"layers.{li}.laurel.linear_right.weight").T,
                       w(f"layers.{li}.laurel.post_laurel_norm.weight"))
        rec(n + ".laurel", lau)
        # attention (KV-shared layers read their producer's k, v)
        q = rope(norm((x @ w(f"layers.{li}.self_attn.q_proj.weight").T).reshape(T, H, E),
                      w(f"layers.{li}.self_attn.q_norm.weight")), bases[lt])
        if li >= first_shared:
            k, v = kv_of[producers[lt]]
        else:
            k = rope(norm((x @ w(f"layers.{li}.self_attn.k_proj.weight").T).reshape(T, G, E),
                          w(f"layers.{li}.self_attn.k_norm.weight")), bases[lt])
            v = norm((x @ w(f"layers.{li}.self_attn.v_proj.weight").T).reshape(T, G, E))
            kv_of[li] = (k, v)
        allowed = np.tril(np.ones((T, T), bool))
        if lt == "sliding_attention":
            allowed &= ~np.tril(np.ones((T, T), bool), -c["sliding_window"])
        kh, vh = np.repeat(k, H // G, axis=1), np.repeat(v, H // G, axis=1)  # [T, H, E]
        s = np.einsum("thd,shd->hts", q, kh)                                  # scaling 1 (q_norm/k_norm instead)
        s = np.where(allowed[None], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", p, vh).reshape(T, H * E) @ w(f"layers.{li}.self_attn.o_proj.weight").T
        rec(n + ".self_attn", att)
        att = norm(att, w(f"layers.{li}.post_attention_layernorm.weight"))
        rec(n + ".post_attention_layernorm", att)
        h = (a + att + lau) / math.sqrt(2)
        y = norm(h, w(f"layers.{li}.pre_feedforward_layernorm.weight"))
        rec(n + ".pre_feedforward_layernorm", y)
        gate = y @ w(f"layers.{li}.mlp.gate_proj.weight").T
        sparsity = c["activation_sparsity_pattern"][li]
        if sparsity > 0:
            std = np.std(gate, axis=-1, keepdims=True, ddof=1 if "sparsity_ddof1" in bugs else 0)
            gate = np.maximum(gate - (gate.mean(-1, keepdims=True) + std * z[sparsity]), 0)
        down = w(f"layers.{li}.mlp.down_proj.weight") * (mlp_scale or {}).get(li, 1.0)
        m = (gelu(gate) * (y @ w(f"layers.{li}.mlp.up_proj.weight").T)) @ down.T
        rec(n + ".mlp", m)
        m = norm(m, w(f"layers.{li}.post_feedforward_layernorm.weight"))
        rec(n + ".post_feedforward_layernorm", m)
        out = h + m
        # AltUp correct, then the per-layer input into streams 1..K-1
        gains = router(out, li) @ w(f"layers.{li}.altup.correction_coefs.weight").T + 1     # [T, K]
        corr = pred + gains.T[:, :, None] * (out - a)[None]
        g = corr[0] * w(f"layers.{li}.altup.correct_output_scale")
        rec(n + ".altup", g)
        g = g @ w(f"layers.{li}.per_layer_input_gate.weight").T
        rec(n + ".per_layer_input_gate", g)
        e = (gelu(g) * ple[:, li]) @ w(f"layers.{li}.per_layer_projection.weight").T
        rec(n + ".per_layer_projection", e)
        e = norm(e, w(f"layers.{li}.post_per_layer_input_norm.weight"))
        rec(n + ".post_per_layer_input_norm", e)
        corr[1:] += e
        streams = corr
        rec(n, streams)
    # collapse, norm, tied head, softcap
    rms0 = np.sqrt(np.mean(streams[0] ** 2, -1, keepdims=True))
    outs = [streams[0]]
    for i in range(K - 1):
        y = streams[i + 1] @ w(f"altup_unembed_projections.{i}.weight").T
        rec(X + f"altup_unembed_projections.{i}", y)
        outs.append(match_rms(y, rms0))
    hid = norm(np.mean(outs, axis=0), w("norm.weight"))
    rec(X + "norm", hid)
    logits = hid @ W[X + "embed_tokens.weight"].T
    rec("lm_head", logits)
    cap = c["final_logit_softcapping"]
    rec("logits", cap * np.tanh(logits / cap))
    return trace
