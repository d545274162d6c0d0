"""MobileNetV5: Gemma 3n's vision encoder (an image -> 2048 x 16 x 16 feature map -> 256 soft tokens).

The idea: a convolutional network built from MobileNetV4 blocks, described by one short string per block
(timm's notation, e.g. ``"uir_r1_a5_k0_s1_e4_c640"``). A 3x3 stride-2 stem, then four stages that halve
the resolution at their first block: *edge residual* blocks (a full kxk conv that expands, then a 1x1
that projects), *universal inverted residual* blocks (1x1 expand and 1x1 project, each with an optional
depthwise conv before, between or after), and *mobile multi-query attention* blocks (many query heads,
one shared key/value head computed from a spatially down-sampled map). Every conv is followed by an
RMSNorm over the channels of each pixel (``RmsNorm2d``, eps 1e-6, ``x * w``, no ``1 + w``) and, where
stated, tanh-GELU. The last two stage outputs are fused by the *multi-scale fusion adapter* (MSFA):
nearest-upsample the coarse map, concatenate channels, a 1x1 expand/project FFN, pool to
``msfa_output_resolution`` (16), RMSNorm. The language model reads the 16 x 16 x 2048 map as 256 tokens
(``image_soft_tokens``).

Block strings (``mobilenetv5_arch``: the published table, ``decode_block``, ``encoder_spec``)::

    er_r1_k3_s2_e4_c128 (edge residual), uir_r1_a5_k5_p0_s2_e6_c640 (universal inverted residual),
    mqa_r1_k3_h12_v2_s1_d64_c640 (multi-query attention)

Padding is TensorFlow's "SAME" (``padding.py``): a stride-2 conv on an even input pads more at the
bottom/right, the classic porting bug.

The convs, RmsNorm2d and ConvNormAct are NCHW NumPy primitives in ``conv2d.py`` (with numba twins in
``accel.py``); this file holds the blocks, the MSFA and the encoder.

Source: timm 1.0.31 ``timm/models/mobilenetv5.py`` (``MobileNetV5Encoder``, the MSFA, the 300M arch table),
``_efficientnet_blocks.py`` (``EdgeResidual``, ``UniversalInvertedResidual``, ``MobileAttention``),
``_efficientnet_builder.py`` (string decoding, stride/dilation bookkeeping, feature taps),
``timm/layers`` (``RmsNorm2d``, ``MultiQueryAttention2d``, ``padding.get_same_padding``);
transformers 5.24 ``Gemma3nModel.get_image_features`` for ``image_soft_tokens``.
Left out: training-only parts (drop path, dropout), block kinds MobileNetV5 does not use (``ir``, ``ds``,
``cn``, ``mha``, squeeze-excite, grouped convs, mixed kernels, other activations), the classification head.
"""
from __future__ import annotations

import numpy as np

from . import accel
from .conv2d import (EPS, conv2d, conv_norm_act, depthwise_conv2d, pointwise_conv, resize_bilinear, resize_nearest,
                     rms_norm2d, rms_norm2d_add, rms_norm2d_gelu)
from .errors import InputError
from .mobilenetv5_arch import (MOBILENETV5_300M_ARCH_DEF, PREFIX, BlockSpec, EncoderSpec, decode_block, encoder_spec,
                               make_divisible, vision_weight_shapes)
from .ops import gelu_tanh as gelu
from .padding import same_padding
from .params import sub_params

# The encoder's pieces, reachable from this chapter's module (the walkthrough and grading adapters use them).
__all__ = ["vision_encoder", "image_soft_tokens", "stem", "edge_residual", "universal_inverted_residual",
           "mobile_mqa", "msfa", "BLOCKS", "PREFIX", "EPS", "MOBILENETV5_300M_ARCH_DEF", "BlockSpec", "EncoderSpec",
           "decode_block", "encoder_spec", "make_divisible", "vision_weight_shapes", "conv2d", "depthwise_conv2d",
           "pointwise_conv", "rms_norm2d", "rms_norm2d_gelu", "rms_norm2d_add", "conv_norm_act", "resize_nearest", "resize_bilinear", "same_padding",
           "gelu"]

# ----------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------

def stem(x, p):
    """conv 3x3 stride 2 (with bias: zeros in the checkpoints; absent = zeros), RmsNorm2d, GELU.
    [B, 3, Y, X] -> [B, C, Y/2, X/2]"""
    bias = p["conv.bias"] if "conv.bias" in p else None
    return conv_norm_act(x, p, 3, stride=2, bias=bias)


def edge_residual(x, p, b: BlockSpec):
    """ER ("fused MBConv"): full kxk conv expanding to mid channels (stride s) -> norm -> GELU, then a
    (1x1) conv projecting to out channels -> norm; residual iff in == out and stride 1. No layer scale.
    [B, Ci, Y, X] -> [B, Co, Y/s, X/s]"""
    h = conv2d(x, p["conv_exp.weight"], b.stride, b.dilation)                   # [B, mid, Yo, Xo]
    h = rms_norm2d_gelu(h, p["bn1.weight"])                                     # [B, mid, Yo, Xo]
    h = conv2d(h, p["conv_pwl.weight"])                                         # [B, Co, Yo, Xo]
    return rms_norm2d_add(h, p["bn2.weight"], x if b.has_skip else None)        # norm (+ x)   [B, Co, Yo, Xo]


def universal_inverted_residual(x, p, b: BlockSpec):
    """UIR: [depthwise a (start), norm, no act] -> 1x1 expand, norm, GELU -> [depthwise k (mid), norm,
    GELU] -> 1x1 project, norm -> [depthwise p (end), norm, no act] -> layer scale -> + x (iff in == out
    and stride 1). The stride sits on the mid conv if there is one, else on the start, else on the end.
    [B, Ci, Y, X] -> [B, Co, Y/s, X/s]"""
    h = x
    if b.dw_start:
        s = 1 if b.dw_mid else b.stride
        h = conv_norm_act(h, sub_params(p, "dw_start"), b.dw_start, s, b.dilation, depthwise=True, act=False)  # [B, Ci, .]
    h = conv_norm_act(h, sub_params(p, "pw_exp"))                                     # [B, mid, Y', X']
    if b.dw_mid:
        h = conv_norm_act(h, sub_params(p, "dw_mid"), b.dw_mid, b.stride, b.dilation, depthwise=True)  # [B, mid, Yo, Xo]
    # The last conv's norm, the layer scale and the skip connection in one step (rms_norm2d_add).
    if b.dw_end:
        h = conv_norm_act(h, sub_params(p, "pw_proj"), act=False)                     # [B, Co, Yo, Xo]
        s = b.stride if not (b.dw_start or b.dw_mid) else 1
        h, last = depthwise_conv2d(h, p["dw_end.conv.weight"], s, b.dilation), "dw_end"  # [B, Co, Yo, Xo]
    else:
        h, last = conv2d(h, p["pw_proj.conv.weight"]), "pw_proj"                    # [B, Co, Yo, Xo]
    return rms_norm2d_add(h, p[f"{last}.bn.weight"], x if b.has_skip else None,
                          p["layer_scale.gamma"])                                     # norm * gamma (+ x)


QUERY_BLOCK = 256         # mobile_mqa: queries per softmax block (logits of 256 x 576 keys: 590 KB)


def mobile_mqa(x, p, b: BlockSpec):
    """Mobile multi-query attention: xn = RmsNorm2d(x) (no act); h query heads of width d from a 1x1 conv;
    ONE key head and ONE value head (width d), each from its own path: [depthwise k3 stride v -> norm] ->
    1x1 conv. Every query head attends over the M = (Y/v)(X/v) key pixels with softmax(q k^T / sqrt(d)).
    Heads are laid out as channels head*d + j, projected back by a 1x1 conv, layer-scaled, added to x.
    [B, C, Y, X] -> [B, C, Y, X]"""
    B, C, Y, X = x.shape
    h, d = b.num_heads, b.key_dim
    xn = rms_norm2d(x, p["norm.weight"])                                        # [B, C, Y, X]
    q = pointwise_conv(xn, p["attn.query.proj.weight"]).reshape(B, h, d, Y * X)  # [B, h, d, Y*X]
    kv = []
    for name in ("key", "value"):
        t = xn
        if b.kv_stride > 1:
            t = depthwise_conv2d(t, p[f"attn.{name}.down_conv.weight"], b.kv_stride, b.dilation)  # [B, C, Ym, Xm]
            t = rms_norm2d(t, p[f"attn.{name}.norm.weight"])                    # [B, C, Ym, Xm]
        t = pointwise_conv(t, p[f"attn.{name}.proj.weight"])                    # [B, d, Ym, Xm]
        kv.append(t.reshape(B, 1, d, -1))                                       # [B, 1, d, M]
    k, v = kv
    # One key/value head serves every query head. Queries go in blocks of QUERY_BLOCK per head, so that a
    # block's logits [QUERY_BLOCK, M] stay in cache through the softmax (the same numbers as one big
    # softmax: each row only sees its own keys). The matmuls read q and write o channels-first through
    # transposed views (BLAS takes them as they are): no transposed copies.
    q = q * x.dtype.type(d ** -0.5)                                             # [B, h, d, Y*X] scaled
    o = np.empty_like(q)                                                        # [B, h, d, Y*X] = o^T per head
    for bi in range(B):
        if accel.use_matmul(q, k[bi, 0], Y * X):  # the same attention, compiled tiles (numba extra): accel.py
            o[bi] = accel.mqa_attention(q[bi], k[bi, 0], v[bi, 0])
            continue
        for hi in range(h):
            for n0 in range(0, Y * X, QUERY_BLOCK):
                n1 = min(Y * X, n0 + QUERY_BLOCK)
                logits = q[bi, hi, :, n0:n1].T @ k[bi, 0]                       # [n, M]
                # softmax over the keys, in place (ops.softmax's operations, without its temporaries)
                logits -= np.max(logits, axis=-1, keepdims=True)
                np.exp(logits, out=logits)
                logits /= np.sum(logits, axis=-1, keepdims=True)                # [n, M] probs
                np.matmul(v[bi, 0], logits.T, out=o[bi, hi, :, n0:n1])          # [d, n]
    o = pointwise_conv(o.reshape(B, h * d, Y, X), p["attn.output.proj.weight"])  # [B, Co, Y, X]
    o *= p["layer_scale.gamma"].astype(o.dtype, copy=False)[:, None, None]     # [B, Co, Y, X]
    if b.has_skip:
        o += x
    return o


BLOCKS = {"er": edge_residual, "uir": universal_inverted_residual, "mqa": mobile_mqa}


def msfa(features, p, spec: EncoderSpec):
    """Multi-scale fusion adapter: resize the coarser maps up to the first (finest) map's size (nearest),
    concatenate channels, FFN (1x1 expand x2 -> norm -> GELU -> 1x1 project -> norm; no residual, no layer
    scale), then to ``msfa_resolution``: average pooling when the size divides evenly, else bilinear;
    finally RmsNorm2d.   [[B, C_i, Y_i, X_i], ...] -> [B, 2048, r, r]"""
    hi = features[0].shape[-2:]
    parts = [resize_nearest(f, hi) if (f.shape[-2] < hi[0] or f.shape[-1] < hi[1]) else f for f in features]
    x = np.concatenate(parts, axis=1)                                           # [B, C0+C1, Y, X]
    x = conv_norm_act(x, sub_params(p, "ffn.pw_exp"))                                 # [B, mid, Y, X]
    x = conv_norm_act(x, sub_params(p, "ffn.pw_proj"), act=False)                     # [B, 2048, Y, X]
    ro, co = spec.msfa_resolution
    if (hi[0], hi[1]) != (ro, co):
        if hi[0] % ro or hi[1] % co:
            x = resize_bilinear(x, (ro, co))                                    # [B, 2048, r, r]
        else:
            B, C = x.shape[:2]
            sy, sx = hi[0] // ro, hi[1] // co
            x = x.reshape(B, C, ro, sy, co, sx).mean(axis=(3, 5))               # [B, 2048, r, r]
    return rms_norm2d(x, p["norm.weight"])                                      # [B, 2048, r, r]


# ----------------------------------------------------------------------------------------------------
# The encoder and the way into the language model
# ----------------------------------------------------------------------------------------------------

def vision_encoder(pixel_values, p, vision_cfg, trace=None, prefix: str = PREFIX):
    """Pixels -> feature map.   [B, 3, Y, X] -> [B, 2048, r, r] (r = msfa_output_resolution, 16)

    ``p``: the tensors under ``model.vision_tower.timm_model`` (a ``params.ParamView`` or a dict keyed
    ``conv_stem.conv.weight``, ``blocks.2.1.pw_exp.conv.weight``, ``msfa.norm.weight``, ...).
    ``trace``: a dict to receive every block's output under the reference's module path
    (``<prefix>.conv_stem``, ``<prefix>.blocks.<s>.<b>``, ``<prefix>.msfa``).
    Works in the dtype of ``pixel_values`` (float32 or float64; anything else is taken as float32).
    """
    x = np.asarray(pixel_values)
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"pixel_values must have shape [batch, 3, height, width], got {list(x.shape)}")
    if min(x.shape) == 0:
        raise InputError(f"pixel_values is empty: shape {list(x.shape)}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    spec = encoder_spec(vision_cfg)
    taps = []
    x = stem(x, sub_params(p, "conv_stem"))                                           # [B, C, Y/2, X/2]
    _record(trace, f"{prefix}.conv_stem", x)
    if 0 in spec.msfa_taps:
        taps.append(x)
    for si, blocks in enumerate(spec.stages):
        for bi, b in enumerate(blocks):
            x = BLOCKS[b.kind](x, sub_params(p, f"blocks.{si}.{bi}"), b)              # [B, C_b, Y_b, X_b]
            _record(trace, f"{prefix}.blocks.{si}.{bi}", x)
        if si + 1 in spec.msfa_taps:
            taps.append(x)
    out = msfa(taps, sub_params(p, "msfa"), spec)                                     # [B, 2048, r, r]
    _record(trace, f"{prefix}.msfa", out)
    return out


def image_soft_tokens(features, p_embed_vision, vision_cfg=None):
    """Encoder output -> soft tokens in the text model's space (``Gemma3nModel.get_image_features``).
    [B, Cv, r, r] -> [B, r*r, Dt]

    Flatten the map row-major to r*r tokens of width Cv (token index ``r*row + col``), multiply by
    ``sqrt(Cv)`` (vision hidden_size 2048: 45.254833; the reference multiplies by a Python float, so the
    factor is that double rounded to the working dtype), then the embedder's soft path
    (``RMSNorm_noW(RMSNorm_soft(z) W^T)``). The scale only acts through the norm's eps, but it is there.
    (The reference multiplies in place, so the ``last_hidden_state`` that ``get_image_features`` returns is
    the *scaled* map; ``vision_encoder`` returns the unscaled one, as the vision tower does.)
    ``p_embed_vision``: tensors under ``model.embed_vision``; ``vision_cfg`` supplies hidden_size and
    rms_norm_eps (defaults: the map's channel count, 1e-6).
    """
    from .embedder import embed_soft

    f = np.asarray(features)
    if f.ndim != 4:
        raise InputError(f"vision features must have shape [batch, channels, rows, cols], got {list(f.shape)}")
    B, C = f.shape[:2]
    hidden = getattr(vision_cfg, "hidden_size", C) if vision_cfg is not None else C
    eps = getattr(vision_cfg, "rms_norm_eps", 1e-6) if vision_cfg is not None else 1e-6
    if C != hidden:
        raise InputError(f"vision features have {C} channels, vision_config.hidden_size is {hidden}")
    z = f.reshape(B, C, -1).transpose(0, 2, 1)                                  # [B, r*r, Cv]
    z = z * f.dtype.type(hidden ** 0.5)                                         # [B, r*r, Cv]
    return embed_soft(z, p_embed_vision, eps)                                   # [B, r*r, Dt]


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------

def _record(trace, name, x):
    if trace is not None:
        trace[name] = x
