"""The text chapter's seam: tests call only these functions. To grade another implementation, set
``MINIG3N_STUDENT`` (tests/adapters/_impl.py, walkthrough/ASSIGNMENTS.md) or make each ``run_*`` call it
instead of minig3n (same arguments, same return values).

Conventions: ``p`` holds the module's weights under HF names relative to the module (``linear_left.weight``),
as NumPy arrays (float32 in the fixtures; implementations compute in the dtype of the activations);
``cfg`` is a ``minig3n.config.TextConfig``; ``attention_mask`` is [B, S] of 1/0 (1 = real token, left
padding); ``position_ids`` [B, T] ints. Streams are [K, B, T, D].
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from minig3n.config import SLIDING, TextConfig
from tests.adapters._impl import impl
from tests.golden_io import text_checkpoint_dir

# Every call below goes through impl(<module>): minig3n's function, or a student's re-implementation of it
# when MINIG3N_STUDENT names a directory holding <module>.py (see tests/adapters/_impl.py).
altup, attention, decoder, kv_share, laurel, mlp, ple = (impl(m) for m in (
    "altup", "attention", "decoder", "kv_share", "laurel", "mlp", "ple"))
kv_cache = impl("kv_cache")


def text_config(config_dict: dict) -> TextConfig:
    """A fixture's ``meta["config"]`` (HF ``Gemma3nTextConfig`` keys) -> TextConfig."""
    return TextConfig.from_dict(config_dict)


# Per-layer embeddings ----------------------------------------------------------------------------------------
def run_ple(input_ids, inputs_embeds, p, cfg):
    """-> (token part [B, T, L, P], per_layer_inputs [B, T, L, P]); p: embed_tokens_per_layer.weight, ..."""
    table = p["embed_tokens_per_layer.weight"].astype(inputs_embeds.dtype)
    rows = table[ple.ple_ids(input_ids, cfg.vocab_size_per_layer_input)]
    tok = ple.per_layer_token_inputs(rows, cfg.num_hidden_layers, cfg.hidden_size_per_layer_input)
    return tok, ple.per_layer_inputs(input_ids, inputs_embeds, table.__getitem__, p, cfg)


# AltUp -------------------------------------------------------------------------------------------------------
def run_router_modalities(x, p, cfg):
    return altup.router_modalities(x, p, cfg)


def run_altup_predict(streams, p, cfg):
    return altup.predict(streams, p, cfg)


def run_altup_correct(predictions, activated, p, cfg):
    return altup.correct(predictions, activated, p, cfg)


def run_scale_corrected_output(x, p):
    return altup.scale_corrected_output(x, p)


def run_make_streams(inputs_embeds, p, cfg):
    """p: altup_projections.{i}.weight -> [K, B, T, D]"""
    return altup.make_streams(inputs_embeds, p, cfg)


def run_collapse_streams(streams, p, cfg):
    """p: altup_unembed_projections.{i}.weight -> [B, T, D] (before the final norm)"""
    return altup.collapse_streams(streams, p, cfg)


# LAuReL, MLP -------------------------------------------------------------------------------------------------
def run_laurel(x, p, cfg):
    return laurel.laurel(x, p, cfg.rms_norm_eps)


def run_mlp(x, p, cfg, layer_idx):
    return mlp.mlp(x, p, cfg.activation_sparsity_pattern[layer_idx])


def run_std_multiplier(sparsity):
    return mlp.std_multiplier(sparsity)


# Attention ---------------------------------------------------------------------------------------------------
def run_rope(x, position_ids, base, head_dim):
    """x [B, T, H, E] -> RoPE-rotated x (float32 angles in float32 mode)."""
    cos, sin = attention.rope_cos_sin(position_ids, attention.rope_inv_freq(base, head_dim), x.dtype)
    return attention.apply_rope(x, cos, sin)


def run_rope_inv_freq(base, head_dim):
    return attention.rope_inv_freq(base, head_dim)


def run_attention_mask(q_pos, k_pos, key_is_real=None, sliding_window=None):
    return attention.attention_mask(q_pos, k_pos, key_is_real, sliding_window)


def _rope(cfg, layer_idx, position_ids, dtype):
    base = cfg.rope_local_base_freq if cfg.layer_types[layer_idx] == SLIDING else cfg.rope_theta
    return attention.rope_cos_sin(position_ids, attention.rope_inv_freq(base, cfg.head_dim), dtype)


def run_self_attention(x, p, cfg, layer_idx, attention_mask, position_ids):
    """A non-shared layer's attention over its own keys, no cache. -> [B, T, D]"""
    B, T, _ = x.shape
    mask = attention.attention_mask(np.arange(T), np.arange(T), attention_mask,
                                    attention.layer_sliding_window(cfg, layer_idx))
    out, _ = attention.self_attention(x, p, cfg, cfg.layer_types[layer_idx], *_rope(cfg, layer_idx, position_ids,
                                                                                     x.dtype), mask)
    return out


def run_kv_sharing_modes(cfg):
    return kv_share.kv_sharing_modes(cfg)


def run_kv_producer(cfg, layer_idx):
    return kv_share.kv_producer(cfg, layer_idx)


# Decoder layer and model -------------------------------------------------------------------------------------
def run_decoder_layer(streams, per_layer_input, p, cfg, layer_idx, attention_mask, position_ids):
    """A non-shared layer, no cache. -> streams [K, B, T, D]"""
    T = streams.shape[2]
    mask = attention.attention_mask(np.arange(T), np.arange(T), attention_mask,
                                    attention.layer_sliding_window(cfg, layer_idx))
    out, _ = decoder.decoder_layer(streams, per_layer_input, p, cfg, layer_idx,
                                   *_rope(cfg, layer_idx, position_ids, streams.dtype), mask)
    return out


_DIRS: dict = {}


def checkpoint_dir(weights: dict, config_dict: dict) -> Path:
    """Write HF-named weights + config.json into a temporary checkpoint directory (cached per content)."""
    key = (json.dumps(config_dict, sort_keys=True), tuple(sorted((k, v.shape, float(np.sum(v))) for k, v in weights.items())))
    if key not in _DIRS:
        _DIRS[key] = text_checkpoint_dir(weights, config_dict, "minig3n_text_")   # removed at exit
    return _DIRS[key]


def run_load_model(model_dir, dtype):
    return decoder.load_text_model(model_dir, dtype)


def run_forward(model, input_ids, attention_mask=None, cache=None, trace=None, position_ids=None):
    """-> (logits [B, T, V], cache)"""
    return decoder.forward(model, input_ids, attention_mask=attention_mask, cache=cache, trace=trace,
                           position_ids=position_ids)


def run_empty_cache(cfg, batch_size, dtype):
    return kv_cache.KVCache.empty(cfg, batch_size, dtype)


def run_incremental(model, input_ids, attention_mask, prefill: int):
    """Prefill ``prefill`` tokens with an empty cache, then one token per call. -> (logits [B, T, V], cache)"""
    B, T = input_ids.shape
    cache = kv_cache.KVCache.empty(model.cfg, B, model.dtype)
    logits, cache = decoder.forward(model, input_ids[:, :prefill], attention_mask=attention_mask[:, :prefill],
                                    cache=cache)
    steps = [logits]
    for t in range(prefill, T):
        logits, cache = decoder.forward(model, input_ids[:, t:t + 1], attention_mask=attention_mask[:, :t + 1],
                                        cache=cache)
        steps.append(logits)
    return np.concatenate(steps, axis=1), cache
