"""The USM audio encoder: log-mel frames -> one 1536-wide vector per 160 ms of audio.

The idea: a Conformer (convolution-augmented Transformer) in the Universal Speech Model flavour.

1. **Sub-sample conv projection (SSCP)**: two 3x3 convolutions with stride 2 over (time, mel) shrink time
   by 4 (10 ms -> 40 ms per frame) and mel bins 128 -> 64 -> 32; after each, a *cumulative* group norm
   (statistics over everything seen so far, so the encoder could run streaming) and a ReLU; the 32 mel x
   32 channel map of each frame is flattened and projected to D = 1536.
2. **Conformer blocks** (x12), each: a half-step feed-forward (``x + 0.5 * FFW(x)``), local self-attention
   (each frame sees itself and the 12 frames before it, with relative-position logits and a tanh cap),
   a light-weight convolution module (GLU, causal depthwise conv of width 5), another half-step
   feed-forward, and a final RMSNorm.
3. **Time reduction**: keep every 4th frame (a stride, not pooling): 40 ms -> 160 ms per output vector;
   30 s of audio = 2997 mel frames -> 750 -> **188** outputs.

Masks: ``mask_invalid`` is True on *padded* frames (the reference's ``audio_mel_mask``, i.e. the negation
of ``features.extract_features``'s validity mask). The SSCP ignores the mask (padded mel frames are
convolved like real ones); the mask is subsampled by taking ``mask[min(4 t, F - 1)]``; attention never
attends to padded keys; padded frames are zeroed before each light conv; outputs at padded frames are 0.
A query whose whole window is padded attends *uniformly* to its attention block's 24 context slots (the
reference's softmax over all-masked logits); only padded frames can be such queries.

Attention is computed, like the reference, on blocks of ``W = conf_attention_chunk_size`` (12) queries
against a context of ``C = W + P + R`` keys (P = context_left - 1 = 12 past frames, R = context_right = 0),
with logits ``q_t . k_s + q_t . Pe(t - s)`` for ``0 <= t - s <= P`` (``Pe`` = projected sinusoids of the
distance). The reference's "relative shift" (pad, reshape, slice) is written here as a direct gather:
entry (w, c) of a block takes the position term of distance ``P - (c - w)``.

Weights ``p``: a mapping with the HF names under ``model.audio_tower.`` (``subsample_conv_projection.
conv_0.conv.weight``, ``conformer.0.attention.attn.q_proj.weight``, ...): see ``audio_weight_shapes``.

Precision (docs/NUMERICS.md §0, §2, §8): float32 mode follows the reference (the cumulative sums of
the group norm accumulate in float64 and round to float32, as torch does on CPU). float64 mode is float64
throughout, with the reference's float32-valued constants: the attention q-scale and the inverse
timescales of the position signal (``inv_timescales`` reproduces torch's float32 ``exp``, including the
ten entries of the default width where it is not correctly rounded).

Source: transformers 5.24 modeling_gemma3n.py (``Gemma3nAudioEncoder``, ``Gemma3nAudioSubSampleConvProjection``,
``Gemma3nAudioSSCPConvBlock``, ``Gemma3nAudioCumulativeGroupNorm``, ``Gemma3nAudioConformerBlock``,
``Gemma3nAudioConformerFeedForward``, ``Gemma3nAudioConformerAttention``, ``Gemma3nAudioAttention``,
``Gemma3nAudioRelativePositionEmbedding``, ``Gemma3nAudioConformerLightConv1d``); USM: arXiv 2303.01037;
Conformer: arXiv 2005.08100.
Left out: the ``gradient_clipping`` clamps at +-1e10 (no-ops at inference), training-only paths.
"""
from __future__ import annotations

import math

import numpy as np

from .params import sub_params
from .config import AudioConfig
from .errors import InputError
from .ops import linear, rms_norm, softcap, softmax, softplus

# torch 2.14.1's float32 exp (CPU) is faithfully but not correctly rounded: for the default width
# (768 timescales) it lands one ulp away from the correctly rounded value at these indices. The
# reference tier checks the resulting table against Gemma3nAudioRelativePositionEmbedding.inv_timescales.
_TORCH_EXP_ULP_NUDGES = {768: {82: 1, 123: 1, 231: -1, 343: 1, 371: 1, 472: 1, 518: 1, 520: 1, 529: 1, 743: 1}}


# ---------------------------------------------------------------------------------------------------------
# Constants the reference keeps as float32 buffers
# ---------------------------------------------------------------------------------------------------------

def q_scale(head_dim: int) -> np.float32:
    """``head_dim^-0.5 / softplus(0)``: the attention query scale (0.10411754 for E = 192), a float32 value.

    ``1 / softplus(0) = 1 / ln 2`` undoes the softplus of a zero ``per_dim_scale``: with untrained
    per-dim scales the queries are scaled by exactly ``E^-0.5``.
    """
    return np.float32(head_dim ** -0.5) * (np.float32(1.0) / np.float32(math.log(2.0)))


def inv_timescales(hidden_size: int) -> np.ndarray:
    """``exp(-i ln(1e4) / (n - 1))``, i = 0..n-1, n = D / 2, as the reference's float32 buffer.   -> [D/2]"""
    n = hidden_size // 2
    step = np.float32(-math.log(1.0e4) / max(n - 1, 1))
    arg = np.arange(n, dtype=np.float32) * step                                   # [D/2] float32
    out = np.exp(arg.astype(np.float64)).astype(np.float32)                       # [D/2] correctly rounded
    bits = out.view(np.int32).copy()                                              # [D/2] the float32 bit patterns
    for i, ulps in _TORCH_EXP_ULP_NUDGES.get(n, {}).items():
        bits[i] += ulps
    return bits.view(np.float32)


def timing_signal(positions, hidden_size: int, dtype) -> np.ndarray:
    """Sinusoids of relative positions: ``[sin(d * omega), cos(d * omega)]`` (all sines first).   [K] -> [K, D]"""
    d = np.asarray(positions, dtype=dtype)[:, None]                               # [K, 1]
    t = d * inv_timescales(hidden_size).astype(dtype)[None, :]                    # [K, D/2]
    return np.concatenate([np.sin(t), np.cos(t)], axis=-1)                        # [K, D]


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------

def sigmoid(x):
    """``1 / (1 + exp(-x))`` without overflow warnings.   [...] -> [...]"""
    e = np.exp(-np.abs(x))                                                       # [...] in (0, 1]: never overflows
    one = x.dtype.type(1.0)
    num = np.where(x >= 0, one, e)                                               # [...] 1 / (1 + e) or e / (1 + e)
    e += one
    num /= e
    return num


def silu_(h):
    """``ops.silu`` (``x / (1 + exp(-x))``, the same operations) computed in place in ``h``, with one
    temporary: the FFN's [T, 4D] activations are the largest arrays of the encoder.   [...] -> [...]"""
    t = np.negative(h)                                                           # [...]
    np.exp(t, out=t)
    t += h.dtype.type(1.0)
    h /= t
    return h


def _w(p, name, dtype):
    return np.asarray(p[name]).astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------------------------
# 1. Sub-sample conv projection
# ---------------------------------------------------------------------------------------------------------

def conv2d(x, weight, stride):
    """Plain 2-D convolution, no padding, no bias, channels last.   [B, T, F, Ci] -> [B, T', F', Co]

    weight [Co, Ci, kT, kF] (PyTorch layout); T' = (T - kT) // sT + 1, F' likewise.
    """
    Co, Ci, kT, kF = weight.shape
    sT, sF = stride
    win = np.lib.stride_tricks.sliding_window_view(x, (kT, kF), axis=(1, 2))    # [B, T-kT+1, F-kF+1, Ci, kT, kF]
    win = win[:, ::sT, ::sF]                                                     # [B, T', F', Ci, kT, kF]
    B, To, Fo = win.shape[:3]
    cols = win.reshape(B * To * Fo, Ci * kT * kF)                                # [B*T'*F', Ci*kT*kF]
    y = cols @ weight.reshape(Co, Ci * kT * kF).astype(x.dtype, copy=False).T    # [B*T'*F', Co]
    return y.reshape(B, To, Fo, Co)


def cumulative_group_norm(x, weight, eps):
    """Group norm (one group) with statistics accumulated over time.   [B, T, F, C] -> [B, T, F, C]

    With ``n_t = (t + 1) F C``: ``mu_t = (sum_{t' <= t} sum_{f,c} x) / n_t`` and
    ``var_t = (sum_{t' <= t} sum_{f,c} (x[t'] - mu_{t'})^2) / n_t``: each past step's squares are taken
    around *its own* running mean (not the textbook cumulative variance).
    ``y = (x - mu_t) / sqrt(var_t + eps) * w[c]``. The time cumsums run in float64 and are cast back to
    the working dtype (torch's CPU cumsum of float32 does exactly that).
    """
    dt = x.dtype
    B, T, F, C = x.shape
    count = (np.arange(1, T + 1, dtype=np.float64) * (F * C)).astype(dt)[None, :, None, None]  # [1, T, 1, 1]
    step_sum = x.sum(axis=(2, 3), keepdims=True)                                 # [B, T, 1, 1]
    mean = np.cumsum(step_sum.astype(np.float64), axis=1).astype(dt) / count     # [B, T, 1, 1]
    d = x - mean                                                                 # [B, T, F, C]
    step_sq = np.square(d).sum(axis=(2, 3), keepdims=True)                       # [B, T, 1, 1]
    var = np.cumsum(step_sq.astype(np.float64), axis=1).astype(dt) / count       # [B, T, 1, 1]
    inv_std = dt.type(1.0) / np.sqrt(var + dt.type(eps))                         # [B, T, 1, 1]
    d *= inv_std                                                                 # in place: (x - mu) * inv_std
    d *= weight.astype(dt, copy=False)
    return d                                                                     # [B, T, F, C]


def sscp_conv_block(x, p, kernel, stride, eps):
    """Zero-pad (time: 0 before, kT - 1 after; mel: 1 each side), conv, cumulative group norm, ReLU.

    [B, T, F, Ci] -> [B, ceil(T / sT), F', Co]. The time padding is "reverse causal": output frame t reads
    input frames sT t .. sT t + kT - 1, and the zeros are added in the log-mel domain.
    """
    kT, _ = kernel
    xp = np.pad(x, ((0, 0), (0, kT - 1), (1, 1), (0, 0)))                        # [B, T + kT - 1, F + 2, Ci]
    y = conv2d(xp, _w(p, "conv.weight", x.dtype), stride)                        # [B, T', F', Co]
    y = cumulative_group_norm(y, _w(p, "norm.weight", x.dtype), eps)             # [B, T', F', Co]
    return np.maximum(y, x.dtype.type(0.0))                                      # [B, T', F', Co]


def subsample_conv_projection(features, p, cfg: AudioConfig, trace=None, name=""):
    """log-mel -> encoder frames.   [B, F, M] -> [B, F', D], F' = ceil(ceil(F / 2) / 2)"""
    x = features[..., None]                                                      # [B, F, M, 1]
    for i in range(2):
        x = sscp_conv_block(x, sub_params(p, f"conv_{i}"), cfg.sscp_conv_kernel_size[i], cfg.sscp_conv_stride_size[i],
                            cfg.sscp_conv_group_norm_eps)                        # [B, T_i, F_i, C_i]
        if trace is not None:
            trace[f"{name}.conv_{i}"] = x.transpose(0, 3, 1, 2)                  # [B, C, T, F] as the reference
    B, T, F, C = x.shape
    flat = x.reshape(B, T, F * C)                                                # [B, F', F*C] (index f*C + c)
    return linear(flat, p["input_proj_linear.weight"])                           # [B, F', D]


def subsample_mask(mask_invalid, n_out: int, cfg: AudioConfig):
    """SSCP output frame t takes the input mask at frame ``min(t * stride_product, F - 1)``.   [B, F] -> [B, F']"""
    stride = int(np.prod([s[0] for s in cfg.sscp_conv_stride_size]))
    idx = np.minimum(np.arange(n_out) * stride, mask_invalid.shape[1] - 1)      # [F']
    return mask_invalid[:, idx]                                                  # [B, F']


# ---------------------------------------------------------------------------------------------------------
# 2. Conformer block
# ---------------------------------------------------------------------------------------------------------

def feed_forward(x, p, cfg: AudioConfig):
    """Half-step FFW: ``x + 0.5 * RMSNorm_post(silu(RMSNorm_pre(x) W1^T) W2^T)``.   [B, T, D] -> [B, T, D]"""
    eps = cfg.rms_norm_eps
    h = rms_norm(x, p["pre_layer_norm.weight"], eps)                             # [B, T, D]
    h = silu_(linear(h, p["ffw_layer_1.weight"]))                                # [B, T, 4D] (in place)
    h = rms_norm(linear(h, p["ffw_layer_2.weight"]), p["post_layer_norm.weight"], eps)  # [B, T, D]
    return x + h * x.dtype.type(cfg.conf_residual_weight)                        # [B, T, D]


def _blocks_with_context(x, W: int, P: int, R: int):
    """For each block u of W query frames, the C = W + P + R frames ``u W - P .. u W + W - 1 + R``
    (zeros / False outside the sequence).   [B, T, ...] -> [B, U, C, ...], U = ceil(T / W)"""
    B, T = x.shape[:2]
    U = (T + W - 1) // W
    C = W + P + R
    pad = [(0, 0), (P, U * W - T + R)] + [(0, 0)] * (x.ndim - 2)
    xp = np.pad(x, pad)                                                          # [B, P + U W + R, ...]
    idx = np.arange(U)[:, None] * W + np.arange(C)[None, :]                      # [U, C]
    return xp[:, idx]                                                            # [B, U, C, ...]


def local_attention(x, mask_invalid, p, cfg: AudioConfig):
    """Chunked local self-attention with relative positions and a logit cap.   [B, T, D] -> [B, T, D]

    (Heads concatenated, before the output projection ``post``.) Weights ``p`` = ``attention.attn.*``.
    """
    dt = x.dtype
    B, T, D = x.shape
    N = cfg.conf_num_attention_heads
    E = D // N
    W = cfg.conf_attention_chunk_size
    P = max(0, cfg.conf_attention_context_left - 1)                              # past frames in the window
    R = cfg.conf_attention_context_right                                         # future frames in the window
    C = W + P + R
    U = (T + W - 1) // W
    K = P + R + 1                                                                # distances P, P-1, ..., -R

    q = linear(x, p["q_proj.weight"]).reshape(B, T, N, E)                        # [B, T, N, E]
    k = linear(x, p["k_proj.weight"]).reshape(B, T, N, E)                        # [B, T, N, E]
    v = linear(x, p["v_proj.weight"]).reshape(B, T, N, E)                        # [B, T, N, E]
    q = q * dt.type(q_scale(E)) * softplus(_w(p, "per_dim_scale", dt))           # [B, T, N, E]

    qb = np.pad(q, ((0, 0), (0, U * W - T), (0, 0), (0, 0))).reshape(B, U, W, N, E)  # [B, U, W, N, E]
    qb = qb.transpose(0, 3, 1, 2, 4)                                             # [B, N, U, W, E]
    kc = _blocks_with_context(k, W, P, R).transpose(0, 3, 1, 4, 2)               # [B, N, U, E, C]
    vc = _blocks_with_context(v, W, P, R).transpose(0, 3, 1, 2, 4)               # [B, N, U, C, E]
    key_ok = _blocks_with_context(~mask_invalid, W, P, R)                        # [B, U, C] (False outside)

    # Content term and relative-position term.
    content = qb @ kc                                                            # [B, N, U, W, C]
    sig = timing_signal(np.arange(P, -R - 1, -1), D, dt)                         # [K, D]
    pe = linear(sig, p["relative_position_embedding.pos_proj.weight"]).reshape(K, N, E)  # [K, N, E]
    pos = qb @ pe.transpose(1, 2, 0)[None, :, None]                              # [B, N, U, W, K]
    # Query w of a block and context slot c are t - s = w + P - c apart: position column f = c - w.
    f = np.arange(C)[None, :] - np.arange(W)[:, None]                            # [W, C]
    in_band = (f >= 0) & (f < K)                                                 # [W, C]
    pos = np.concatenate([pos, np.zeros_like(pos[..., :1])], axis=-1)            # [B, N, U, W, K + 1]
    pos = pos[..., np.arange(W)[:, None], np.where(in_band, f, K)]               # [B, N, U, W, C]

    logits = softcap(content + pos, cfg.conf_attention_logit_cap)                # [B, N, U, W, C]
    allowed = key_ok[:, None, :, None, :] & in_band                              # [B, 1, U, W, C]
    logits = np.where(allowed, logits, np.finfo(dt).min)                         # [B, N, U, W, C]
    probs = softmax(logits, axis=-1)                                             # [B, N, U, W, C]
    ctx = probs @ vc                                                             # [B, N, U, W, E]
    ctx = ctx.transpose(0, 2, 3, 1, 4).reshape(B, U * W, N * E)[:, :T]          # [B, T, D]
    return ctx


def conformer_attention(x, mask_invalid, p, cfg: AudioConfig):
    """``x + RMSNorm_post_norm(post(Attn(RMSNorm_pre_attn(x))))``.   [B, T, D] -> [B, T, D]"""
    eps = cfg.rms_norm_eps
    h = rms_norm(x, p["pre_attn_norm.weight"], eps)                              # [B, T, D]
    h = local_attention(h, mask_invalid, sub_params(p, "attn"), cfg)                    # [B, T, D]
    h = linear(h, p["post.weight"])                                              # [B, T, D]
    return x + rms_norm(h, p["post_norm.weight"], eps)                           # [B, T, D]


def light_conv1d(x, p, cfg: AudioConfig):
    """GLU, causal depthwise conv (kernel k, k - 1 zeros on the left), norm, SiLU, linear, residual.

    [B, T, D] -> [B, T, D]. ``z[t] = sum_j w[:, j] * y[t - (k - 1) + j]``.
    """
    eps = cfg.rms_norm_eps
    D = x.shape[-1]
    y = linear(rms_norm(x, p["pre_layer_norm.weight"], eps), p["linear_start.weight"])  # [B, T, 2D]
    y = y[..., :D] * sigmoid(y[..., D:])                                         # [B, T, D] GLU
    w = _w(p, "depthwise_conv1d.weight", x.dtype)[:, 0, :]                       # [D, k]
    k = w.shape[1]
    T = x.shape[1]
    yp = np.pad(y, ((0, 0), (k - 1, 0), (0, 0)))                                 # [B, T + k - 1, D]
    z = yp[:, 0:T] * w[:, 0]                                                     # [B, T, D]
    tmp = np.empty_like(z)                                                       # [B, T, D] scratch
    for j in range(1, k):
        np.multiply(yp[:, j:j + T], w[:, j], out=tmp)
        z += tmp                                                                 # [B, T, D]
    z = silu_(rms_norm(z, p["conv_norm.weight"], eps))                           # [B, T, D] (in place)
    return linear(z, p["linear_end.weight"]) + x                                 # [B, T, D]


def conformer_block(x, mask_invalid, p, cfg: AudioConfig):
    """FFW/2, attention, (zero padded frames), light conv, FFW/2, RMSNorm.   [B, T, D] -> [B, T, D]"""
    x = feed_forward(x, sub_params(p, "ffw_layer_start"), cfg)                          # [B, T, D]
    x = conformer_attention(x, mask_invalid, sub_params(p, "attention"), cfg)           # [B, T, D]
    x = x * (~mask_invalid)[..., None].astype(x.dtype)                           # [B, T, D]
    x = light_conv1d(x, sub_params(p, "lconv1d"), cfg)                                  # [B, T, D]
    x = feed_forward(x, sub_params(p, "ffw_layer_end"), cfg)                            # [B, T, D]
    return rms_norm(x, p["norm.weight"], cfg.rms_norm_eps)                       # [B, T, D]


# ---------------------------------------------------------------------------------------------------------
# 3. The encoder
# ---------------------------------------------------------------------------------------------------------

def audio_encoder(features, mask_invalid, p, cfg: AudioConfig, trace=None, name="model.audio_tower"):
    """log-mel features -> encoder outputs and their padding mask.

    features [B, F, M] (float32 or float64: the working dtype), mask_invalid [B, F] bool (True = padded,
    the reference's ``audio_mel_mask``) -> (out [B, F', D], mask_invalid [B, F']), with
    F' = ceil(ceil(ceil(F / 2) / 2) / conf_reduction_factor). ``trace``: None, or a dict that receives
    named activations (reference module paths under ``name``).
    """
    features = np.asarray(features)                                              # [B, F, M]
    mask_invalid = np.asarray(mask_invalid)                                      # [B, F]
    if features.dtype not in (np.float32, np.float64):
        raise InputError(f"audio features must be float32 or float64, got {features.dtype}")
    if features.ndim != 3 or features.shape[2] != cfg.input_feat_size:
        raise InputError(f"audio features must have shape [batch, frames, {cfg.input_feat_size}], got "
                         f"{features.shape}")
    if mask_invalid.shape != features.shape[:2] or mask_invalid.dtype != np.bool_:
        raise InputError(f"audio mask must be bool with shape {features.shape[:2]} (True = padded frame), got "
                         f"{mask_invalid.dtype} {mask_invalid.shape}")
    if features.shape[1] == 0:
        raise InputError("audio is too short: it gave no mel frames (at least 513 samples, 32 ms, are needed)")

    x = subsample_conv_projection(features, sub_params(p, "subsample_conv_projection"), cfg, trace,
                                  f"{name}.subsample_conv_projection")           # [B, F1, D]
    mask = subsample_mask(mask_invalid, x.shape[1], cfg)                         # [B, F1]
    if trace is not None:
        trace[f"{name}.subsample_conv_projection"] = x
    for i in range(cfg.conf_num_hidden_layers):
        x = conformer_block(x, mask, sub_params(p, f"conformer.{i}"), cfg)              # [B, F1, D]
        if trace is not None:
            trace[f"{name}.conformer.{i}"] = x
    r = cfg.conf_reduction_factor
    if r > 1:
        x, mask = x[:, ::r], mask[:, ::r]                                        # [B, F', D], [B, F']
    x = np.where(mask[..., None], x.dtype.type(0.0), x)                          # [B, F', D]
    if trace is not None:
        trace[name] = x
    return x, mask


def audio_weight_shapes(cfg: AudioConfig, prefix: str = "model.audio_tower.") -> dict[str, tuple]:
    """Every tensor the audio encoder reads, with the shape the config implies."""
    D, M = cfg.hidden_size, cfg.input_feat_size
    N = cfg.conf_num_attention_heads
    E = D // N
    c0, c1 = cfg.sscp_conv_channel_size
    (k0t, k0f), (k1t, k1f) = cfg.sscp_conv_kernel_size
    f = M
    for (kt, kf), (st, sf) in zip(cfg.sscp_conv_kernel_size, cfg.sscp_conv_stride_size):
        f = (f + 2 - kf) // sf + 1
    s = prefix + "subsample_conv_projection."
    shapes = {
        s + "conv_0.conv.weight": (c0, 1, k0t, k0f), s + "conv_0.norm.weight": (c0,),
        s + "conv_1.conv.weight": (c1, c0, k1t, k1f), s + "conv_1.norm.weight": (c1,),
        s + "input_proj_linear.weight": (D, f * c1),
    }
    for i in range(cfg.conf_num_hidden_layers):
        b = f"{prefix}conformer.{i}."
        for ffw in ("ffw_layer_start", "ffw_layer_end"):
            shapes.update({
                f"{b}{ffw}.pre_layer_norm.weight": (D,), f"{b}{ffw}.ffw_layer_1.weight": (4 * D, D),
                f"{b}{ffw}.ffw_layer_2.weight": (D, 4 * D), f"{b}{ffw}.post_layer_norm.weight": (D,),
            })
        shapes.update({
            b + "attention.pre_attn_norm.weight": (D,),
            b + "attention.attn.per_dim_scale": (E,),
            b + "attention.attn.q_proj.weight": (N * E, D),
            b + "attention.attn.k_proj.weight": (N * E, D),
            b + "attention.attn.v_proj.weight": (N * E, D),
            b + "attention.attn.relative_position_embedding.pos_proj.weight": (N * E, D),
            b + "attention.post.weight": (D, D),
            b + "attention.post_norm.weight": (D,),
            b + "lconv1d.pre_layer_norm.weight": (D,),
            b + "lconv1d.linear_start.weight": (2 * D, D),
            b + "lconv1d.depthwise_conv1d.weight": (D, 1, cfg.conf_conv_kernel_size),
            b + "lconv1d.conv_norm.weight": (D,),
            b + "lconv1d.linear_end.weight": (D, D),
            b + "norm.weight": (D,),
        })
    return shapes
