"""Self-attention of the text decoder: q/k/v norms, RoPE with two bases, GQA, sliding-window masks.

The idea: ordinary causal multi-head attention with grouped key/value heads (N = 8 query heads share
G = 2 K/V heads: query head h reads K/V head h // (N/G)), with three Gemma 3n twists:

* **Norms instead of a scale.** q and k are RMS-normed per head (``q_norm``, ``k_norm``, weight [E]) and v
  by a weightless RMSNorm, all *before* RoPE; the logit scale is 1.0 (no 1/sqrt(E)), no logit softcap.
* **Two RoPE bases.** Sliding-window layers rotate with base ``rope_local_base_freq`` (1e4), full layers
  with ``rope_theta`` (1e6). Rotate-half on contiguous halves (not interleaved pairs).
* **Two masks.** Full layers see every earlier key; sliding layers see the last ``sliding_window`` keys
  including the query itself. With left padding, pad keys are hidden too. Example, T = 5, window 3,
  row 0 = padding (``#`` = attends, ``.`` = masked)::

        full            sliding (window 3)      left-padded, full
        # . . . .       # . . . .               . . . . .   <- pad query: sees nothing -> output 0
        # # . . .       # # . . .               . # . . .
        # # # . .       # # # . .               . # # . .
        # # # # .       . # # # .               . # # # .
        # # # # #       . . # # #               . # # # #

  A query row that sees no key at all (a left-pad position) outputs zeros, as the reference's default
  (SDPA) attention does; eager attention would give a uniform average instead. Those rows are padding.

Positions: the mask works in *cache positions* (index of a token in the padded sequence, 0 = first slot),
exactly like the reference's masks; RoPE uses *position ids* (by default also the cache position; the
reference's ``generate`` passes ``cumsum(attention_mask) - 1`` for left-padded rows).

Source: transformers 5.24 ``Gemma3nTextAttention``, ``Gemma3nRotaryEmbedding``, ``masking_utils``
(``causal_mask_function``, ``sliding_window_overlay``, ``padding_mask_function``); docs/NUMERICS.md §1.6.
Left out: attention dropout, the attention-weights output, bidirectional attention (unused by Gemma 3n).
With numba, a float32 prompt of 64 tokens or more attends on compiled tiles (``accel.gqa_attention``, the same
sums in another order); ``attend`` below is the definition.

Precision: RoPE inverse frequencies are float32 constants (``1 / base ** (arange(0, E, 2) / E)`` in float32;
``rope_inv_freq`` is bit-identical to torch for head_dim <= 64 and off by 1 ulp in one or two of 128 entries
at head_dim 256, torch's vectorised powf not being correctly rounded). In float32 mode the angle
``float32(pos) * inv_freq`` is a float32 product, as in the reference; in float64 mode it is a float64 product.
"""
from __future__ import annotations

import numpy as np

from . import accel
from .config import SLIDING
from .ops import linear, rms_norm, softmax


# RoPE ------------------------------------------------------------------------------------------------------
def rope_inv_freq(base: float, head_dim: int, exact: bool = False) -> np.ndarray:
    """``1 / base ** (arange(0, E, 2) / E)`` as the reference's float32 buffer.   -> [E/2] float32

    ``exact``: computed in float64 instead (float64 ports compared with each other)."""
    if exact:
        return 1.0 / np.float64(base) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [E/2]
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)   # [E/2] float32
    powered = (np.float64(base) ** exponent.astype(np.float64)).astype(np.float32)  # [E/2] rounded powf
    return np.float32(1.0) / powered                                                # [E/2] float32


def rope_cos_sin(position_ids, inv_freq, dtype):
    """cos and sin of ``position * inv_freq``, duplicated over both halves.   [B, T] -> [B, T, E], [B, T, E]"""
    pos = np.asarray(position_ids)                                            # [B, T]
    if np.dtype(dtype) == np.float32:
        angles = pos.astype(np.float32)[..., None] * inv_freq                 # [B, T, E/2] float32 product
        angles = angles.astype(np.float64)                                    # cos/sin rounded from float64
    else:
        angles = pos.astype(np.float64)[..., None] * inv_freq.astype(np.float64)  # [B, T, E/2]
    emb = np.concatenate([angles, angles], axis=-1)                           # [B, T, E]
    return np.cos(emb).astype(dtype), np.sin(emb).astype(dtype)               # [B, T, E] each


def rotate_half(x):
    """``[x1, x2] -> [-x2, x1]`` over the last axis (contiguous halves).   [..., E] -> [..., E]"""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)           # [..., E]


def apply_rope(x, cos, sin):
    """``x cos + rotate_half(x) sin`` per head.   [B, T, H, E], [B, T, E] -> [B, T, H, E]"""
    return x * cos[:, :, None, :] + rotate_half(x) * sin[:, :, None, :]       # [B, T, H, E]


# Masks -----------------------------------------------------------------------------------------------------
def attention_mask(q_pos, k_pos, key_is_real=None, sliding_window=None):
    """Which keys each query may read: ``k <= q`` (and ``k > q - window`` for sliding layers), real keys only.

    q_pos [T], k_pos [S]: cache positions; key_is_real [B, S] bool (None = all real). -> [B, T, S] bool"""
    q = np.asarray(q_pos)[:, None]                                            # [T, 1]
    k = np.asarray(k_pos)[None, :]                                            # [1, S]
    allowed = k <= q                                                          # [T, S]
    if sliding_window is not None:
        allowed = allowed & (k > q - sliding_window)                          # [T, S]
    allowed = allowed[None]                                                   # [1, T, S]
    if key_is_real is not None:
        allowed = allowed & np.asarray(key_is_real, dtype=bool)[:, None, :]   # [B, T, S]
    return allowed


# Projections -----------------------------------------------------------------------------------------------
def query_states(x, p, cfg, cos, sin):
    """``rope(q_norm(q_proj(x)))`` per head.   [B, T, D] -> [B, T, N, E]"""
    B, T, _ = x.shape
    q = linear(x, p["q_proj.weight"]).reshape(B, T, cfg.num_attention_heads, cfg.head_dim)  # [B, T, N, E]
    q = rms_norm(q, p["q_norm.weight"], cfg.rms_norm_eps)                     # [B, T, N, E]
    return apply_rope(q, cos, sin)                                            # [B, T, N, E]


def key_value_states(x, p, cfg, cos, sin):
    """``k = rope(k_norm(k_proj(x)))``, ``v = rms_norm(v_proj(x))`` (weightless).   [B, T, D] -> 2 x [B, T, G, E]"""
    B, T, _ = x.shape
    G, E = cfg.num_key_value_heads, cfg.head_dim
    k = linear(x, p["k_proj.weight"]).reshape(B, T, G, E)                     # [B, T, G, E]
    k = apply_rope(rms_norm(k, p["k_norm.weight"], cfg.rms_norm_eps), cos, sin)  # [B, T, G, E]
    v = linear(x, p["v_proj.weight"]).reshape(B, T, G, E)                     # [B, T, G, E]
    v = rms_norm(v, None, cfg.rms_norm_eps)                                   # [B, T, G, E] v_norm: no weight
    return k, v


def with_past(past_kv, kv):
    """The cached keys and values followed by this call's: ``past_kv`` (or None) and ``kv``, (k, v) each.

    2 x [B, S0, G, E], 2 x [B, T, G, E] -> 2 x [B, S0 + T, G, E]"""
    if past_kv is None:
        return kv
    return tuple(np.concatenate([held, new], axis=1) for held, new in zip(past_kv, kv))  # [B, S, G, E]s


def attend(q, k, v, mask):
    """``softmax(q k^T + mask) v`` per head, GQA, scaling 1.0.   [B, T, N, E], [B, S, G, E] x2, [B|1, T, S] -> [B, T, N*E]

    Rows with no visible key give zeros (see the module docstring)."""
    B, T, N, E = q.shape
    if accel.use_matmul(q, k[0, :, 0], T):   # the same attention, compiled tiles (numba extra): accel.py
        return accel.gqa_attention(q, k, v, mask)
    G = k.shape[2]
    qh = q.transpose(0, 2, 1, 3).reshape(B, G, N // G, T, E)                  # [B, G, N/G, T, E] head h -> h // (N/G)
    kh = k.transpose(0, 2, 3, 1)[:, :, None]                                  # [B, G, 1, E, S]
    vh = v.transpose(0, 2, 1, 3)[:, :, None]                                  # [B, G, 1, S, E]
    scores = qh @ kh                                                          # [B, G, N/G, T, S]
    m = np.asarray(mask, dtype=bool)[:, None, None]                           # [B, 1, 1, T, S]
    out = softmax(scores, axis=-1, where=m) @ vh                              # [B, G, N/G, T, E]
    return out.reshape(B, N, T, E).transpose(0, 2, 1, 3).reshape(B, T, N * E)  # [B, T, N*E] head-major


# Bounded memory for long prompts -----------------------------------------------------------------------------
ATTN_CHUNK = 256         # query rows per block when a call has more queries than this


class KeyBand:
    """What a layer's mask is made of, for ``attend_blocks``: query and key cache positions, which keys are
    real (None = all), the sliding window (None = full layer). Lets long prompts build their masks block by
    block instead of one [T, S] array."""

    def __init__(self, q_pos, k_pos, key_is_real=None, sliding_window=None):
        self.q_pos, self.k_pos = np.asarray(q_pos), np.asarray(k_pos)   # [T], [S] increasing
        self.key_is_real, self.sliding_window = key_is_real, sliding_window  # [B, S] bool | None, int | None

    def mask(self, t0=0, t1=None, k0=0, k1=None):
        """``attention_mask`` of query rows t0:t1 against keys k0:k1.   -> [B|1, t1-t0, k1-k0] bool"""
        real = None if self.key_is_real is None else self.key_is_real[:, k0:k1]
        return attention_mask(self.q_pos[t0:t1], self.k_pos[k0:k1], real, self.sliding_window)


def attend_blocks(q, k, v, band: KeyBand, chunk: int = ATTN_CHUNK):
    """``attend`` with the score memory bounded: O(chunk x keys) for full layers, O(chunk x (chunk + window))
    for sliding ones.   [B, T, N, E], [B, S, G, E] x2 -> [B, T, N*E]

    Up to ``chunk`` queries: one ``attend`` call over every key (the plain path, bit for bit). More: blocks of
    ``chunk`` query rows, each against only the keys it may see (causal: keys up to its last query; sliding:
    from its first query's window start). The keys left out are exactly those the mask hides (their softmax
    weight is an exact 0), so each row's result is the same sum over fewer terms: equal up to float rounding
    (the order of the sums changes with their length)."""
    B, T, N, E = q.shape
    if T <= chunk:
        return attend(q, k, v, band.mask())
    out = np.empty((B, T, N * E), dtype=q.dtype)                              # [B, T, N*E]
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        first, last = band.q_pos[t0], band.q_pos[t1 - 1]
        k0 = 0 if band.sliding_window is None else int(np.searchsorted(band.k_pos, first - band.sliding_window + 1))
        k1 = int(np.searchsorted(band.k_pos, last, side="right"))
        out[:, t0:t1] = attend(q[:, t0:t1], k[:, k0:k1], v[:, k0:k1], band.mask(t0, t1, k0, k1))
    return out


def self_attention(x, p, cfg, layer_type, cos, sin, mask, past_kv=None, shared_kv=None, rec=None):
    """One attention block.   [B, T, D] -> ([B, T, D], (k [B, S, G, E], v [B, S, G, E]))

    ``past_kv``: the cached (k, v) of this layer (keys before this call), or None. ``shared_kv``: the producer's
    (k, v) for a KV-shared layer (then this layer computes no K/V). ``mask`` [B|1, T, S] matches the keys used,
    or a ``KeyBand`` describing it (then long prompts attend block by block: ``attend_blocks``).
    Returns the output and the keys/values it attended over (what a producer stores and shares).
    ``rec(name, array)``, if given, receives ``q`` (after q_norm and RoPE) and, unless KV-shared, this call's
    ``k`` (after k_norm and RoPE) and ``v`` (after v_norm)."""
    q = query_states(x, p, cfg, cos, sin)                                     # [B, T, N, E]
    if rec is not None:
        rec("q", q)
    if shared_kv is not None:
        k, v = shared_kv                                                      # [B, S, G, E] each
    else:
        k, v = key_value_states(x, p, cfg, cos, sin)                          # [B, T, G, E] each
        if rec is not None:
            rec("k", k)
            rec("v", v)
        k, v = with_past(past_kv, (k, v))                                    # [B, S, G, E] each
    if isinstance(mask, KeyBand):
        out = attend_blocks(q, k, v, mask)                                    # [B, T, N*E] bounded memory
    else:
        out = attend(q, k, v, mask)                                           # [B, T, N*E]
    return linear(out, p["o_proj.weight"]), (k, v)                            # [B, T, D]


def layer_sliding_window(cfg, layer_idx: int):
    """The window of a sliding layer, None for a full layer."""
    return cfg.sliding_window if cfg.layer_types[layer_idx] == SLIDING else None
