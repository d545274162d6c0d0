"""NCHW image primitives in NumPy: dense, depthwise and 1x1 convs, RmsNorm2d, ConvNormAct, resizing.

Convolutions are written out in NumPy: a dense kxk conv gathers its k*k shifted views into columns
(im2col, ``np.lib.stride_tricks``) and does one matmul; a depthwise conv (one kxk filter per channel) is a
sum of k*k shifted views times per-channel taps, never a dense conv with a block-diagonal weight; a 1x1
conv is a matmul over channels. Arrays are NCHW ([B, C, Y, X]) like the reference's. With numba, the float32
matmuls of maps of 64 pixels or more run on compiled tiles (``accel.matmul_channels_first``).

Every conv pads TF-"SAME" style (``padding.same_padding``). The depthwise conv, RmsNorm2d, RmsNorm2d + GELU
(``rms_norm2d_gelu``) and RmsNorm2d * layer scale + skip (``rms_norm2d_add``) have compiled twins in ``accel``
(optional numba extra), used when numba is importable; these NumPy versions are the definition and the twins
are tested against them.

Source: timm 1.0.31 ``timm/layers`` (``create_conv2d``, ``RmsNorm2d``, ``ConvNormAct``) and torch's
``F.interpolate`` (nearest, bilinear without antialiasing).
Left out: grouped convs other than depthwise, mixed kernels, antialiased resizing.
"""
from __future__ import annotations

import numpy as np

from . import accel
from .ops import gelu_tanh
from .padding import pad_same

EPS = 1e-6                 # RmsNorm2d eps everywhere in MobileNetV5


def _windows(xp, k, stride, dilation, Yo, Xo):
    """Strided view of every kxk window of a padded map (no copy).   [B, C, Y', X'] -> [B, C, k, k, Yo, Xo]"""
    sb, sc, sy, sx = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, (xp.shape[0], xp.shape[1], k, k, Yo, Xo),
        (sb, sc, sy * dilation, sx * dilation, sy * stride, sx * stride), writeable=False)


def conv2d(x, w, stride=1, dilation=1, bias=None):
    """Dense kxk conv, TF-"SAME" padding, by im2col + one matmul.   [B, Ci, Y, X] -> [B, Co, Yo, Xo]

    ``w`` [Co, Ci, k, k] (PyTorch layout). Yo = ceil(Y / stride).
    """
    B, Ci, Y, X = x.shape
    Co, k = w.shape[0], w.shape[-1]
    Yo, Xo = -(-Y // stride), -(-X // stride)
    w = w.astype(x.dtype, copy=False)
    if k == 1 and stride == 1:
        y = pointwise_conv(x, w)                                                # [B, Co, Y, X]
    else:
        cols = _windows(pad_same(x, k, stride, dilation), k, stride, dilation, Yo, Xo)  # [B, Ci, k, k, Yo, Xo]
        cols = cols.reshape(B, Ci * k * k, Yo * Xo)                             # [B, Ci*k*k, Yo*Xo] (copy)
        y = _matmul(w.reshape(Co, Ci * k * k), cols).reshape(B, Co, Yo, Xo)     # [B, Co, Yo, Xo]
    return y if bias is None else y + bias.astype(x.dtype, copy=False)[:, None, None]


def depthwise_conv2d(x, w, stride=1, dilation=1):
    """Depthwise kxk conv (one filter per channel), TF-"SAME" padding.   [B, C, Y, X] -> [B, C, Yo, Xo]

    ``w`` [C, 1, k, k]. Computed as a sum of k*k shifted, strided views, each times one tap per channel:
    ``y[c] = sum_ij w[c, i, j] * xpad[c, i*d + s*y, j*d + s*x]``.
    """
    if accel.use_numba(x):  # the same sums, compiled (optional numba extra): accel.py
        return accel.depthwise_conv2d(x, w, stride, dilation)
    B, C, Y, X = x.shape
    k = w.shape[-1]
    Yo, Xo = -(-Y // stride), -(-X // stride)
    xp = pad_same(x, k, stride, dilation)                                      # [B, C, Y', X']
    taps = w.astype(x.dtype, copy=False).reshape(C, k, k)                       # [C, k, k]
    y = np.zeros((B, C, Yo, Xo), dtype=x.dtype)                                 # [B, C, Yo, Xo]
    tmp = np.empty_like(y)                                                      # [B, C, Yo, Xo] scratch
    for i in range(k):
        for j in range(k):
            view = xp[:, :, i * dilation:i * dilation + (Yo - 1) * stride + 1:stride,
                      j * dilation:j * dilation + (Xo - 1) * stride + 1:stride]  # [B, C, Yo, Xo]
            np.multiply(view, taps[:, i, j, None, None], out=tmp)              # [B, C, Yo, Xo]
            y += tmp
    return y


def pointwise_conv(x, w):
    """1x1 conv = a matmul over channels.   [B, Ci, Y, X] -> [B, Co, Y, X];  w [Co, Ci, 1, 1]"""
    B, Ci, Y, X = x.shape
    w2 = w.reshape(w.shape[0], Ci).astype(x.dtype, copy=False)                 # [Co, Ci]
    return _matmul(w2, x.reshape(B, Ci, Y * X)).reshape(B, -1, Y, X)           # [B, Co, Y, X]


def _matmul(w, x):
    """``w @ x`` per image.   [Co, K], [B, K, P] -> [B, Co, P]"""
    if accel.use_matmul(x, w, x.shape[-1]):   # the same product, compiled tiles (numba extra): accel.py
        return accel.matmul_channels_first(w, x)
    return np.matmul(w, x)


def rms_norm2d(x, weight, eps=EPS):
    """timm ``RmsNorm2d``: per pixel over channels, ``x * rsqrt(mean_c(x^2) + eps) * w[c]``.
    [B, C, Y, X] -> [B, C, Y, X]. No float32 island: it computes in the input's dtype."""
    if accel.use_numba(x):  # the same sums, compiled (optional numba extra): accel.py
        return accel.rms_norm2d(x, weight, eps)
    t = x.dtype.type
    ms = np.add.reduce(np.square(x), axis=1, keepdims=True)                     # [B, 1, Y, X]
    ms /= t(x.shape[1])                                                         # mean over channels
    y = x * (t(1.0) / np.sqrt(ms + t(eps)))                                     # [B, C, Y, X]
    y *= weight.astype(x.dtype, copy=False)[:, None, None]                      # [B, C, Y, X]
    return y


def rms_norm2d_gelu(x, weight, eps=EPS):
    """``gelu_tanh(rms_norm2d(x))``: the norm + activation of every ConvNormAct with GELU.
    [B, C, Y, X] -> [B, C, Y, X]. The numba twin does it in one pass over the map (plus NumPy's ``tanh`` on a
    cached chunk) instead of about ten whole-array passes; same operations, same result."""
    if accel.use_numba(x):  # the same sums, compiled (optional numba extra): accel.py
        return accel.rms_norm2d_gelu(x, weight, eps)
    return gelu_tanh(rms_norm2d(x, weight, eps))


def rms_norm2d_add(x, weight, residual=None, gamma=None, eps=EPS):
    """``rms_norm2d(x) * gamma[c] + residual``: a block's last norm, its layer scale and its skip connection
    (``gamma`` and ``residual`` may be None).   [B, C, Y, X] -> [B, C, Y, X]"""
    if accel.use_numba(x):  # the same sums, compiled (optional numba extra): accel.py
        return accel.rms_norm2d_add(x, weight, residual, gamma, eps)
    y = rms_norm2d(x, weight, eps)                                              # [B, C, Y, X]
    if gamma is not None:
        y *= gamma.astype(x.dtype, copy=False)[:, None, None]
    if residual is not None:
        y += residual
    return y


def conv_norm_act(x, p, kernel=1, stride=1, dilation=1, depthwise=False, act=True, bias=None):
    """timm ``ConvNormAct``: conv (``p['conv.weight']``) -> RmsNorm2d (``p['bn.weight']``) -> GELU or not.
    [B, Ci, Y, X] -> [B, Co, Yo, Xo]"""
    w = p["conv.weight"]
    if depthwise:
        x = depthwise_conv2d(x, w, stride, dilation)                            # [B, C, Yo, Xo]
    else:
        x = conv2d(x, w, stride, dilation, bias)                                # [B, Co, Yo, Xo]
    if act:
        return rms_norm2d_gelu(x, p["bn.weight"])                               # [B, Co, Yo, Xo]
    return rms_norm2d(x, p["bn.weight"])                                        # [B, Co, Yo, Xo]


def resize_nearest(x, out_hw):
    """``F.interpolate(mode='nearest')``: source index floor(dst * in/out), the ratio in float32 as torch
    computes it.   [B, C, Y, X] -> [B, C, Yo, Xo]"""
    idx = []
    for n_in, n_out in zip(x.shape[-2:], out_hw):
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        idx.append(np.minimum(src, n_in - 1))
    return x[:, :, idx[0][:, None], idx[1][None, :]]                            # [B, C, Yo, Xo]


def resize_bilinear(x, out_hw):
    """``F.interpolate(mode='bilinear', align_corners=False)`` without antialiasing: source coordinate
    ``(dst + 0.5) * in/out - 0.5`` clamped at 0, linear between its two neighbours.   [B, C, Y, X] -> [B, C, Yo, Xo]"""
    t = x.dtype.type
    for axis, n_out in ((2, out_hw[0]), (3, out_hw[1])):
        n_in = x.shape[axis]
        scale = t(n_in) / t(n_out)
        src = np.maximum(scale * (np.arange(n_out).astype(x.dtype) + t(0.5)) - t(0.5), t(0))
        i0 = src.astype(np.int64)
        i1 = i0 + (i0 < n_in - 1)
        lam = src - i0.astype(x.dtype)
        shape = [1, 1, 1, 1]
        shape[axis] = n_out
        lam = lam.reshape(shape)
        x = np.take(x, i0, axis=axis) * (t(1) - lam) + np.take(x, i1, axis=axis) * lam
    return x
