"""The KV cache: the keys and values earlier forward calls computed, so a new token only computes its own.

The idea: attention at step t needs K/V of every visible earlier token. ``KVCache`` holds, per layer, the
keys and values (after k_norm/RoPE and v_norm) of the tokens seen so far:

* full-attention layers keep all of them;
* sliding-window layers keep only the last ``sliding_window - 1`` (all a future query can still see: the
  window includes the query itself), as the reference's ``DynamicSlidingWindowLayer`` does;
* KV-shared layers (``kv_share``) keep nothing: they read their producer's K/V of the same call.

The cache is an explicit, immutable value: ``decoder.forward(..., cache=c)`` returns a *new* ``KVCache`` and
leaves ``c`` untouched (so a caller may keep it, e.g. to branch). ``length`` counts the positions held (the
padded sequence length so far); new tokens take cache positions ``length, length + 1, ...``.

Source: transformers 5.24 ``cache_utils.DynamicCache`` / ``DynamicLayer`` / ``DynamicSlidingWindowLayer``
and the Gemma 3n ``DummyLayer`` for shared layers.
Left out: static (pre-allocated) caches, cropping, beam reordering, offloading, quantised caches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SLIDING
from .kv_share import is_kv_shared, kv_sharing_modes


@dataclass(frozen=True)
class KVCache:
    keys: tuple          # per layer: [B, S_l, G, E] or None (KV-shared layers store nothing)
    values: tuple        # per layer: [B, S_l, G, E] or None
    starts: tuple        # per layer: cache position of the first key held (> 0 once a window has slid)
    length: int          # positions seen so far (cache + all earlier calls); the next token's cache position
    batch_size: int

    @classmethod
    def empty(cls, cfg, batch_size: int, dtype=np.float32) -> "KVCache":
        """A cache holding nothing, for ``batch_size`` rows of working dtype ``dtype``."""
        G, E = cfg.num_key_value_heads, cfg.head_dim
        keys, values = [], []
        for i in range(cfg.num_hidden_layers):
            blank = None if is_kv_shared(cfg, i) else np.zeros((batch_size, 0, G, E), dtype=dtype)  # [B, 0, G, E]
            keys.append(blank)
            values.append(blank)
        return cls(tuple(keys), tuple(values), (0,) * cfg.num_hidden_layers, 0, batch_size)

    def past(self, layer_idx: int):
        """(k, v, key cache positions) held for ``layer_idx``; None for a KV-shared layer."""
        k = self.keys[layer_idx]
        if k is None:
            return None
        start = self.starts[layer_idx]
        return k, self.values[layer_idx], np.arange(start, start + k.shape[1])   # [B, S, G, E] x2, [S]

    def advanced(self, cfg, new_keys: dict, new_values: dict, new_starts: dict, num_new: int) -> "KVCache":
        """The cache after a forward call of ``num_new`` tokens; ``new_*[l]`` are layer l's full K/V and start
        position (past + new). Sliding layers are cut to their last ``sliding_window - 1`` keys."""
        keys, values, starts = list(self.keys), list(self.values), list(self.starts)
        for layer, k in new_keys.items():
            v, start = new_values[layer], new_starts[layer]
            if cfg.layer_types[layer] == SLIDING:
                drop = max(k.shape[1] - (cfg.sliding_window - 1), 0)
                k, v, start = k[:, drop:], v[:, drop:], start + drop                 # [B, <= W-1, G, E]
            keys[layer], values[layer], starts[layer] = k, v, start
        return KVCache(tuple(keys), tuple(values), tuple(starts), self.length + num_new, self.batch_size)

    @property
    def nbytes(self) -> int:
        """Memory held by the cache."""
        return sum(a.nbytes for a in self.keys + self.values if a is not None)


class ForwardKV:
    """The K/V bookkeeping of one forward call (a scratch object of that call, not model state).

    For each layer, ``inputs(li)`` gives what attention needs: this layer's cached (k, v) (or None), the
    producer's (k, v) of this same call for a KV-shared layer (or None), and the cache positions ``k_pos``
    [S] of the keys it will attend over. ``record(li, k, v, k_pos)`` keeps the layer's full K/V (a producer's
    also for its consumers); ``new_cache()`` is the advanced cache (None when the call had no cache)."""

    def __init__(self, cfg, cache, past: int, num_new: int):
        self.cfg, self.cache, self.past, self.num_new = cfg, cache, past, num_new
        self.modes = kv_sharing_modes(cfg)
        self.shared = {}                                                      # layer type -> (k, v, k_pos)
        self.new_k, self.new_v, self.new_start = {}, {}, {}

    def inputs(self, li: int):
        """-> (past_kv, shared_kv, k_pos) for layer ``li``."""
        if self.modes[li] == "reuse":
            k_s, v_s, k_pos = self.shared[self.cfg.layer_types[li]]
            return None, (k_s, v_s), k_pos
        held = self.cache.past(li) if self.cache is not None else None
        start = int(held[2][0]) if held is not None and len(held[2]) else self.past
        past_kv = held[:2] if held is not None and held[0].shape[1] else None
        return past_kv, None, np.arange(start, self.past + self.num_new)     # [S]

    def record(self, li: int, k, v, k_pos) -> None:
        if self.modes[li] == "store":
            self.shared[self.cfg.layer_types[li]] = (k, v, k_pos)
        if self.modes[li] != "reuse":
            self.new_k[li], self.new_v[li], self.new_start[li] = k, v, int(k_pos[0])

    def new_cache(self):
        if self.cache is None:
            return None
        return self.cache.advanced(self.cfg, self.new_k, self.new_v, self.new_start, self.num_new)
