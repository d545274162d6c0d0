"""The Gemma 3n text decoder: embeddings, AltUp streams, decoder layers, collapse, norm, tied LM head.

The idea, one forward pass (docs/NUMERICS.md §1):

1. ``embed_tokens(ids) * sqrt(D)`` (or the multimodal merge's ``inputs_embeds``) and the per-layer
   embeddings (``ple``: one P-wide vector per token per layer).
2. AltUp: K streams (``altup.make_streams``).
3. L decoder layers (``decoder_layer``): predict -> norm -> LAuReL + attention -> MLP -> correct ->
   per-layer-input branch into streams 1..K-1.
4. ``altup.collapse_streams`` -> final RMSNorm -> logits with the token-embedding matrix (tied head) ->
   softcap ``30 tanh(x / 30)``.

Source: transformers 5.24 ``Gemma3nTextDecoderLayer``, ``Gemma3nTextModel``, ``Gemma3nForCausalLM``
(and the language part of ``Gemma3nForConditionalGeneration``).
Left out: training (loss, dropout), output_attentions / hidden-states tuples (use ``trace``), static caches.

Weights are read lazily from a ``Checkpoint``: a layer's tensors when the layer first runs, the
per-layer-embedding table only row by row (``Checkpoint.rows``), never whole.

Trace names (``forward(..., trace={})``; batch row 0, batch axis dropped; ``X`` = the model prefix,
``model.`` for Gemma3nForCausalLM checkpoints, ``model.language_model.`` for multimodal ones), in this order:
``X.embed_tokens`` [T, D] (only when ``inputs_embeds`` is None; else ``X.inputs_embeds`` [T, D], the merged
embeddings the reference's language model receives), ``X.embed_tokens_per_layer`` [T, L*P],
``X.per_layer_model_projection`` [T, L*P], ``X.per_layer_projection_norm`` [T, L, P],
``X.altup_projections.{i}`` [T, D], ``X.altup_streams`` [K, T, D]* (the K streams after magnitude matching:
layer 0's input); per layer ``X.layers.{l}.`` + ``input_layernorm``, ``laurel``, ``self_attn.q`` [T, N, E]*
(after q_norm and RoPE), ``self_attn.k`` / ``self_attn.v`` [T, G, E]* (this call's keys after k_norm and RoPE,
values after v_norm; not on KV-shared layers), ``self_attn`` (after o_proj), ``post_attention_layernorm``,
``pre_feedforward_layernorm``, ``mlp.gate_proj`` [T, I]* (the pre-activation gate), ``mlp``,
``post_feedforward_layernorm``, ``altup`` (the corrected active stream times correct_output_scale),
``per_layer_input_gate``, ``per_layer_projection``, ``post_per_layer_input_norm`` (all [T, D] or [T, P]),
then ``X.layers.{l}`` [K, T, D] (the layer's output streams); ``X.altup_unembed_projections.{i}`` [T, D],
``X.norm`` [T, D], ``lm_head`` [T, V] (before the softcap) and ``logits`` [T, V]. Names marked * are recorded
only into a ``FineTrace`` (``minig3n trace --fine``). Each is the output of
the reference module of that name (a forward hook there gives the same array), except ``inputs_embeds``,
``altup_streams`` and ``self_attn.q/k/v``: values inside the reference's forward code (``self_attn.v`` is
``v_norm``'s output; tests/reference/trace_reference.py shows where each is caught).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import altup as altup_mod
from .attention import KeyBand, key_value_states, layer_sliding_window, rope_cos_sin, rope_inv_freq
from .attention import self_attention, with_past
from .checkpoint import Checkpoint
from .config import FULL, SLIDING, TextConfig
from .errors import InputError, NumericsError
from .finite import NonFinite, all_finite, locate
from .kv_cache import ForwardKV
from .laurel import laurel
from .mlp import mlp
from .ops import constant, gelu_tanh, linear, rms_norm, softcap
from .params import sub_params
from .ple import per_layer_inputs
from .weight_shapes import text_weight_shapes


@dataclass
class TextModel:
    """What a forward pass needs; no mutable state (the checkpoint only caches tensors it converted)."""

    cfg: TextConfig
    ckpt: Checkpoint
    prefix: str              # "model.language_model." (multimodal checkpoint) or "model." (Gemma3nForCausalLM)

    @property
    def dtype(self):
        return self.ckpt.dtype

    def params(self, sub: str = ""):
        """The tensors under ``prefix + sub`` keyed by the rest of their name."""
        return self.ckpt.params(self.prefix + sub)


def load_text_model(model_dir_or_checkpoint, dtype=None, constants: str = "reference") -> TextModel:
    """Open a checkpoint directory (or wrap an open ``Checkpoint``) and check every text tensor's shape.

    dtype: float32 (default) or float64 for a directory; an open Checkpoint computes in its own dtype (passing
    another one is an error). constants: "reference" (the reference's float32 values of sqrt(D), D^-0.5,
    sqrt(P), 1/sqrt(2), 1/D, the RoPE frequencies and the sparsity z-score, also in float64: what the lifted
    reference computes) or "exact" (float64 only: those constants computed exactly in float64, to compare
    float64 ports with each other). The choice rides on the model's config as ``cfg.exact_constants`` (an
    attribute, not a config.json key)."""
    if isinstance(model_dir_or_checkpoint, Checkpoint):
        ckpt = model_dir_or_checkpoint
        if dtype is not None and np.dtype(dtype) != ckpt.dtype:
            raise InputError(f"load_text_model: the checkpoint was opened as {ckpt.dtype.name}, not "
                             f"{np.dtype(dtype).name}; open it with Checkpoint(dir, dtype)")
    else:
        ckpt = Checkpoint(model_dir_or_checkpoint, np.float32 if dtype is None else dtype)
    cfg, prefix = ckpt.config.text, ckpt.text_prefix
    shapes = text_weight_shapes(cfg, prefix)
    ckpt.check_shapes(shapes)
    if constants not in ("reference", "exact"):
        raise InputError(f"constants must be 'reference' or 'exact', got {constants!r}")
    if constants == "exact":
        if ckpt.dtype != np.float64:
            raise InputError("exact constants (--constants exact) need float64 (--dtype float64)")
        import dataclasses
        cfg = dataclasses.replace(cfg)
        object.__setattr__(cfg, "exact_constants", True)   # read with getattr(cfg, "exact_constants", False)
    table = prefix + "embed_tokens_per_layer.weight"             # read row by row, never whole
    head = prefix + "embed_tokens.weight"                        # the tied LM head: read last, so fetched last
    order = [n for n in shapes if n not in (table, head)] + [head]
    kept = [n for n in order if ckpt.keeps_bf16(n)]
    if kept:
        from .bf16 import load_kernels, prepare_columns_behind
        load_kernels()                                           # numba's own files first, then the weights
    ckpt.prefetch(kept)                                          # BF16 kept: start reading, in compute order
    down = {f"{prefix}layers.{i}.mlp.down_proj.weight" for i, s in enumerate(cfg.activation_sparsity_pattern) if s}
    behind = [n for n in kept if n in down]  # read by columns (mlp.py): their column copies are made on a
    if behind:                               # background thread as the reader delivers them, in its order
        prepare_columns_behind(ckpt.get, behind)
    return TextModel(cfg, ckpt, prefix)


# Pieces ------------------------------------------------------------------------------------------------------
def check_input_ids(input_ids, cfg, past_length: int = 0) -> np.ndarray:
    """Validate token ids: an integer array [B, T], ids in [0, vocab_size), fits max_position_embeddings."""
    ids = np.asarray(input_ids)                                               # [B, T]
    if ids.dtype.kind not in "iu":
        raise InputError(f"input_ids must be integers, got dtype {ids.dtype}")
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise InputError(f"input_ids must have shape [batch, tokens] with both >= 1, got shape {list(ids.shape)}")
    bad = (ids < 0) | (ids >= cfg.vocab_size)                                 # [B, T]
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise InputError(f"input_ids[{b}, {t}] = {int(ids[b, t])} is out of range: ids must lie in "
                         f"[0, vocab_size={cfg.vocab_size})")
    if past_length + ids.shape[1] > cfg.max_position_embeddings:
        raise InputError(f"sequence too long: {past_length} cached + {ids.shape[1]} new tokens exceed "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    return ids.astype(np.int64, copy=False)


def embed_tokens(model: TextModel, input_ids) -> np.ndarray:
    """``embed_tokens.weight[ids] * sqrt(D)`` (the float32 value of sqrt(D)).   [B, T] -> [B, T, D]"""
    ids = check_input_ids(input_ids, model.cfg)
    rows = model.ckpt.rows(model.prefix + "embed_tokens.weight", ids)          # [B, T, D]
    exact = getattr(model.cfg, "exact_constants", False)
    return rows * constant(model.cfg.hidden_size ** 0.5, rows.dtype, exact)   # [B, T, D]


def positions_from_mask(attention_mask, past_length: int = 0):
    """Position ids the reference's ``generate`` uses with left padding: ``cumsum(mask) - 1``, pads at 0.

    attention_mask [B, S_total] -> position ids of the last ``S_total - past_length`` slots, [B, T]."""
    m = np.asarray(attention_mask).astype(np.int64)                           # [B, S_total]
    pos = np.where(m == 0, 0, np.cumsum(m, axis=-1) - 1)                      # [B, S_total]
    return pos[:, past_length:]                                               # [B, T]


def per_layer_input_branch(corrected_active, per_layer_input, p, cfg, rec=None):
    """``post_per_layer_input_norm(per_layer_projection(gelu(per_layer_input_gate(Q_0 * s)) * ple_l))``.

    [B, T, D], [B, T, P] -> [B, T, D]. Only streams 1..K-1 receive it (stream 0 stays ``Q_0``).
    ``rec(name, array)``, if given, receives the named intermediates (for ``trace``)."""
    rec = rec or (lambda name, x: None)
    g = corrected_active                                                      # [B, T, D]
    if cfg.altup_correct_scale:
        g = altup_mod.scale_corrected_output(g, sub_params(p, "altup"))             # [B, T, D]
        rec("altup", g)
    gate = linear(g, p["per_layer_input_gate.weight"])                        # [B, T, P]
    rec("per_layer_input_gate", gate)
    gate = gelu_tanh(gate) * per_layer_input                                  # [B, T, P]
    e = linear(gate, p["per_layer_projection.weight"])                        # [B, T, D]
    rec("per_layer_projection", e)
    e = rms_norm(e, p["post_per_layer_input_norm.weight"], cfg.rms_norm_eps)  # [B, T, D]
    rec("post_per_layer_input_norm", e)
    return e


def decoder_layer(streams, per_layer_input, p, cfg, layer_idx, cos, sin, mask, past_kv=None, shared_kv=None,
                  rec=None):
    """One decoder layer.   [K, B, T, D], [B, T, P] -> ([K, B, T, D], (k, v) [B, S, G, E] each)

    ``p``: the layer's tensors (``self_attn.q_proj.weight``, ``altup.router_norm.weight`` ...). ``cos``/``sin``
    [B, T, E] for this layer's RoPE base; ``mask`` [B|1, T, S] over the keys; ``past_kv`` this layer's cached
    (k, v); ``shared_kv`` the producer's (k, v) for a KV-shared layer. ``rec(name, array)``, if given, receives
    each intermediate (batch axis first) under its module name relative to the layer, and the output streams
    under ""."""
    eps, t = cfg.rms_norm_eps, streams.dtype.type
    rec = rec or _no_rec

    p_altup = sub_params(p, "altup")
    predictions = altup_mod.predict(streams, p_altup, cfg)                    # [K, B, T, D]
    active = predictions[cfg.altup_active_idx]                                # [B, T, D]  a
    normed = rms_norm(active, p["input_layernorm.weight"], eps)               # [B, T, D]  n
    rec("input_layernorm", normed)
    lau = laurel(normed, sub_params(p, "laurel"), eps)                              # [B, T, D]
    rec("laurel", lau)
    attn, kv = self_attention(normed, sub_params(p, "self_attn"), cfg, cfg.layer_types[layer_idx], cos, sin, mask,
                              past_kv=past_kv, shared_kv=shared_kv,
                              rec=_sub(rec, "self_attn"))                     # [B, T, D]
    rec("self_attn", attn)
    attn = rms_norm(attn, p["post_attention_layernorm.weight"], eps)          # [B, T, D]
    rec("post_attention_layernorm", attn)
    h = (active + attn + lau) / t(math.sqrt(2))                               # [B, T, D] (a + attn) + laurel
    x = rms_norm(h, p["pre_feedforward_layernorm.weight"], eps)               # [B, T, D]
    rec("pre_feedforward_layernorm", x)
    x = mlp(x, sub_params(p, "mlp"), cfg.activation_sparsity_pattern[layer_idx],
            _sub(rec, "mlp"), getattr(cfg, "exact_constants", False))        # [B, T, D]
    rec("mlp", x)
    x = rms_norm(x, p["post_feedforward_layernorm.weight"], eps)              # [B, T, D]
    rec("post_feedforward_layernorm", x)
    out = h + x                                                               # [B, T, D]  o
    corrected = altup_mod.correct(predictions, out, p_altup, cfg)             # [K, B, T, D]
    e = per_layer_input_branch(corrected[cfg.altup_active_idx], per_layer_input, p, cfg, rec)  # [B, T, D]
    corrected = np.concatenate([corrected[:1], corrected[1:] + e[None]])      # [K, B, T, D] streams 1.. get e
    rec("", corrected.transpose(1, 0, 2, 3))                                  # [B, K, T, D]
    return corrected, kv


def layer_key_values(streams, p, cfg, cos, sin, past_kv=None):
    """The (k, v) that ``decoder_layer`` attends over and caches, without the rest of the layer:
    predict -> active stream -> input_layernorm -> ``key_value_states``, after the cached ``past_kv``.

    [K, B, T, D] -> 2 x [B, S, G, E]. Used for the last layer before the KV consumers (``_forward``)."""
    active = altup_mod.predict(streams, sub_params(p, "altup"), cfg)[cfg.altup_active_idx]  # [B, T, D]
    normed = rms_norm(active, p["input_layernorm.weight"], cfg.rms_norm_eps)  # [B, T, D]
    return with_past(past_kv, key_value_states(normed, sub_params(p, "self_attn"), cfg, cos, sin))  # [B, S, G, E]


# The forward pass ------------------------------------------------------------------------------------------
def forward(model: TextModel, input_ids, *, trace=None, **kw):
    """The forward pass (``_forward``), with NaN / infinity caught where it first appears: the embeddings,
    each layer's output and new K/V, and the logits are checked (``finite.all_finite``, one pass each); if one
    fails, the forward runs again recording every traced tensor and NumericsError names the first non-finite
    one (``finite.locate``)."""
    try:
        return _forward(model, input_ids, trace=trace, **kw)
    except NonFinite as e:
        raise locate(lambda t: _forward(model, input_ids, trace=t, check=False, **kw), e.where) from None


def _forward(model: TextModel, input_ids, *, inputs_embeds=None, attention_mask=None, cache=None, trace=None,
             position_ids=None, logits_to_keep: int = 0, check: bool = True):
    """Logits for ``input_ids`` [B, T] (int).   -> (logits [B, T, V] (or the last ``logits_to_keep``), cache)

    inputs_embeds [B, T, D]: replaces ``embed_tokens(input_ids)`` everywhere (the multimodal merge); the PLE
    token part still uses input_ids (ids >= vocab_size_per_layer_input read row 0).
    attention_mask [B, S_total] of 1/0 (1 = real token, left padding), covering cache + new tokens; None = all
    real. Query rows at pad positions attend to nothing and get a zero attention output.
    cache: a ``KVCache`` (e.g. ``KVCache.empty(cfg, B, dtype)``) or None. With a cache, cache positions continue
    at ``cache.length`` and a *new* KVCache is returned (the one passed in is not modified); without one, the
    returned cache is None. KV-shared layers reuse their producer's K/V of this same call either way.
    position_ids [B, T]: RoPE positions; default the cache positions ``cache.length + arange(T)`` (what the
    reference's forward does). The reference's ``generate`` passes ``positions_from_mask(attention_mask)``.
    trace: a dict to fill with named intermediate outputs for batch row 0 (names: module docstring).
    logits_to_keep: 0 = logits at every position; n > 0 = only the last n (saves the big LM-head matmul and,
    without a trace, the KV-shared layers' work on the other positions: kv_share.py)."""
    cfg, dtype = model.cfg, np.dtype(model.dtype)
    past = cache.length if cache is not None else 0
    ids = check_input_ids(input_ids, cfg, past)
    B, T = ids.shape
    if cache is not None and cache.batch_size != B:
        raise InputError(f"the cache holds {cache.batch_size} rows but input_ids has {B}")
    root, X = model.params(), model.prefix.rstrip(".")
    rec = _recorder(trace, X)                                                 # trace: batch row 0 by module name

    # 1. embeddings and per-layer inputs
    if inputs_embeds is None:
        h0 = embed_tokens(model, ids)                                          # [B, T, D]
        rec("embed_tokens", h0)
    else:
        h0 = _check_embeds(inputs_embeds, B, T, cfg).astype(dtype, copy=False)  # [B, T, D]
        rec("inputs_embeds", h0)                                              # the merged embeddings
        if check and not all_finite(h0):
            raise NumericsError(f"inputs_embeds: {int(h0.size - np.isfinite(h0).sum())} of {h0.size} values are "
                                "NaN or infinite (the multimodal merge, or the embeddings given)")
    table = model.prefix + "embed_tokens_per_layer.weight"
    ple = per_layer_inputs(ids, h0, lambda i: model.ckpt.rows(table, i), root, cfg, rec)  # [B, T, L, P]
    if check and not all_finite(h0, ple):
        raise NonFinite(f"{X}.embed_tokens" if not all_finite(h0) else f"{X}.embed_tokens_per_layer")

    # 2. positions, RoPE tables and masks
    cache_pos = past + np.arange(T)                                           # [T]
    cos_sin = rope_tables(cfg, cache_pos, position_ids, B, T, dtype)          # layer type -> [B, T, E] pair
    mask_for = layer_masks(cfg, cache_pos, attention_mask, B, past + T)       # (layer, k_pos) -> [B|1, T, S]

    # 3. AltUp streams and the layers
    streams = altup_mod.make_streams(h0, root, cfg, rec)                      # [K, B, T, D]
    if getattr(rec, "fine", False):
        rec("altup_streams", streams.transpose(1, 0, 2, 3))                   # [B, K, T, D] magnitude-matched
    kv = ForwardKV(cfg, cache, past, T)
    only_kept = 0 < logits_to_keep < T and trace is None                      # the consumers' shortcut
    for li in range(cfg.num_hidden_layers):
        p_layer = model.params(f"layers.{li}")
        past_kv, shared_kv, k_pos = kv.inputs(li)
        if only_kept and li == cfg.first_kv_shared_layer - 1:
            # The layers after this one are KV consumers (or there are none): they write no cache and read
            # the producers' K/V, so of this layer only the K/V of every position is read again (kv_share.py).
            # Those come first; the rest of this layer and every later one run on the positions whose logits
            # are kept, this layer reading its own K/V as a consumer would. (A trace gets every position of
            # every layer, as the reference computes them.)
            shared_kv = layer_key_values(streams, p_layer, cfg, *cos_sin[cfg.layer_types[li]], past_kv)
            past_kv, keep = None, slice(T - logits_to_keep, T)
            streams, ple = streams[:, :, keep], ple[:, keep]                  # [K, B, T', D], [B, T', L, P]
            cos_sin = {t: (c[:, keep], s[:, keep]) for t, (c, s) in cos_sin.items()}  # [B, T', E] pairs
            mask_for = layer_masks(cfg, cache_pos[keep], attention_mask, B, past + T)  # queries: kept rows
        streams, (k, v) = decoder_layer(streams, ple[:, :, li], p_layer, cfg, li, *cos_sin[cfg.layer_types[li]],
                                        mask_for(li, k_pos), past_kv, shared_kv,
                                        _recorder(trace, f"{X}.layers.{li}"))  # [K, B, T, D]
        if check and not all_finite(streams, k, v):
            raise NonFinite(f"{X}.layers.{li}")
        kv.record(li, k, v, k_pos)

    # 4. collapse, norm, tied head, softcap
    if logits_to_keep:
        streams = streams[:, :, -logits_to_keep:]                             # [K, B, T', D]
    hidden = altup_mod.collapse_streams(streams, root, cfg, rec)              # [B, T, D]
    hidden = rms_norm(hidden, root["norm.weight"], cfg.rms_norm_eps)          # [B, T, D]
    rec("norm", hidden)
    logits = linear(hidden, root["embed_tokens.weight"])                      # [B, T, V] tied LM head
    rec("lm_head", logits)
    if cfg.final_logit_softcapping is not None:
        logits = softcap(logits, cfg.final_logit_softcapping)                 # [B, T, V]
    rec("logits", logits)
    if check and not all_finite(logits):
        raise NonFinite("logits")
    return logits, kv.new_cache()


# Helpers of forward ------------------------------------------------------------------------------------------
class FineTrace(dict):
    """A trace dict that also asks for the finer names (``self_attn.q/k/v``, ``mlp.gate_proj``,
    ``altup_streams``; module docstring): ``forward(..., trace=FineTrace())``. A plain dict gets the others."""

    fine = True


def _recorder(trace, prefix: str):
    """``rec(name, x)``: store batch row 0 of ``x`` in ``trace`` under the reference's module name,
    ``prefix.name`` (``prefix`` itself for name "", and ``lm_head`` / ``logits`` unprefixed, as the reference
    names them). Without a trace it does nothing. ``rec.fine``: the trace wants the finer names."""
    if trace is None:
        return _no_rec

    def rec(sub, x):
        trace[sub if sub in ("lm_head", "logits") else f"{prefix}.{sub}" if sub else prefix] = np.array(x[0])
    rec.fine = getattr(trace, "fine", False)
    return rec


def _sub(rec, module: str):
    """The recorder a sub-module gets for the finer names (None when the trace does not want them)."""
    if not getattr(rec, "fine", False):
        return None
    return lambda name, x: rec(f"{module}.{name}", x)


def _no_rec(name, x):
    pass


def _check_embeds(inputs_embeds, B: int, T: int, cfg) -> np.ndarray:
    h0 = np.asarray(inputs_embeds)
    if h0.shape != (B, T, cfg.hidden_size):
        raise InputError(f"inputs_embeds must have shape {[B, T, cfg.hidden_size]}, got {list(h0.shape)}")
    return h0


def rope_tables(cfg, cache_pos, position_ids, B: int, T: int, dtype) -> dict:
    """{layer type: (cos, sin) [B, T, E]} at ``position_ids`` (default: the cache positions), each type with
    its own RoPE base (full attention ``rope_theta``, sliding ``rope_local_base_freq``)."""
    if position_ids is None:
        position_ids = np.broadcast_to(cache_pos, (B, T))                     # [B, T]
    elif np.shape(position_ids) != (B, T):
        raise InputError(f"position_ids must have shape {[B, T]}, got {list(np.shape(position_ids))}")
    rope = {FULL: cfg.rope_theta, SLIDING: cfg.rope_local_base_freq}
    exact = getattr(cfg, "exact_constants", False)
    return {lt: rope_cos_sin(position_ids, rope_inv_freq(rope[lt], cfg.head_dim, exact), dtype)
            for lt in set(cfg.layer_types)}                                   # [B, T, E] pairs


def layer_masks(cfg, cache_pos, attention_mask, B: int, total: int):
    """``mask_for(layer_idx, k_pos)`` -> the ``attention.KeyBand`` of that layer over keys at cache positions
    ``k_pos`` (query and key positions, real keys, window: attention builds the [B|1, T, S] mask from it,
    block by block for long prompts). ``attention_mask`` [B, total] of 1/0 or None."""
    if attention_mask is not None:
        key_is_real = np.asarray(attention_mask)                              # [B, S_total]
        if key_is_real.shape != (B, total):
            raise InputError(f"attention_mask must have shape [batch, cached + new tokens] = {[B, total]}, "
                             f"got {list(key_is_real.shape)}")
        key_is_real = key_is_real.astype(bool)                                # [B, S_total]

    def mask_for(layer_idx, k_pos):   # the mask's ingredients; attention builds it block by block
        real = None if attention_mask is None else key_is_real[:, k_pos]      # [B, S]
        return KeyBand(cache_pos, k_pos, real, layer_sliding_window(cfg, layer_idx))
    return mask_for
