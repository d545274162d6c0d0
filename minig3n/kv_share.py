"""KV sharing: the last layers reuse the keys and values of an earlier layer instead of computing their own.

The idea: Gemma 3n's top ``num_kv_shared_layers`` layers ("consumers") have no K/V projections of their
own. Each consumer reads the final K (after k_norm and RoPE) and V (after v_norm) of one "producer": the
last non-consumer layer of the same attention type (sliding or full). It still computes its own queries and
applies the mask of its own type. For E2B and E4B (first consumer 20) the producers are layer 18 (sliding)
and layer 19 (full). This saves the K/V projections and, with a cache, the cache memory of every consumer.

Source: transformers 5.24 ``Gemma3nTextConfig.kv_sharing_modes`` (configuration_gemma3n.py) and
``Gemma3nTextAttention.forward`` (``shared_kv_states``): modes are None (ordinary layer), "store" (producer)
and "reuse" (consumer). In 5.24 sharing happens with or without a cache, in the same forward pass.
A consequence the decoder uses (``decoder._forward``, prefill with ``logits_to_keep``): a consumer writes no
cache, and everything it does is per position except attention, which reads the producer's K/V, not the
consumer's own hidden states. So from the first consumer on, the hidden states of positions whose logits are
not kept feed nothing at all, and of the layer just before it only the K/V of every position are read again.
The decoder computes that layer's K/V over the whole prompt, then carries on with only the kept positions
(for E2B: 11 of 30 layers on 1 token instead of the whole prompt, the first of them reading its own K/V as a
consumer would). The kept positions' numbers are the same computation; the reference computes every
position anyway.

Left out: the older behaviour (before transformers 4.56), where consumers used their own checkpoint weights
when no cache was passed (docs/NUMERICS.md §6.1).

    >>> from minig3n.config import e2b_config
    >>> kv_sharing_modes(e2b_config().text)[17:22]
    [None, 'store', 'store', 'reuse', 'reuse']
"""
from __future__ import annotations

from .errors import ConfigError


def kv_sharing_modes(cfg) -> list:
    """Per layer: None, "store" (the producer of its type) or "reuse" (a consumer), as the reference."""
    L, first = cfg.num_hidden_layers, cfg.num_hidden_layers - cfg.num_kv_shared_layers
    if cfg.num_kv_shared_layers == 0:
        return [None] * L
    missing = sorted(set(cfg.layer_types[first:]) - set(cfg.layer_types[:first]))
    if missing:   # the reference raises ValueError here: every type needs a producer
        raise ConfigError(f"config key 'num_kv_shared_layers': layers {first}..{L - 1} reuse K/V of an earlier "
                          f"layer of their type, but no layer before {first} is of type {missing}: that type would "
                          "have no producer")
    modes = [None if i < first else "reuse" for i in range(L)]
    for layer_type in sorted(set(cfg.layer_types)):
        modes[max(i for i in range(first) if cfg.layer_types[i] == layer_type)] = "store"
    return modes


def kv_producer(cfg, layer_idx: int) -> int | None:
    """The layer whose K/V layer ``layer_idx`` reuses, or None if it computes its own."""
    modes = kv_sharing_modes(cfg)
    if modes[layer_idx] != "reuse":
        return None
    layer_type = cfg.layer_types[layer_idx]
    return max(i for i, m in enumerate(modes) if m == "store" and cfg.layer_types[i] == layer_type)


def kv_producers(cfg) -> dict:
    """{layer type: the producer layer whose K/V that type's consumers reuse}, for the types that have
    consumers (empty when no layer shares)."""
    modes = kv_sharing_modes(cfg)
    consumer_types = {cfg.layer_types[i] for i, m in enumerate(modes) if m == "reuse"}
    return {cfg.layer_types[i]: i for i, m in enumerate(modes) if m == "store" and cfg.layer_types[i] in consumer_types}


def is_kv_shared(cfg, layer_idx: int) -> bool:
    """True for a consumer layer (it has no k_proj/v_proj/k_norm and stores nothing in a cache)."""
    return layer_idx >= cfg.num_hidden_layers - cfg.num_kv_shared_layers and cfg.num_kv_shared_layers > 0
