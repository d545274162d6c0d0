"""TensorFlow "SAME" padding, the padding every MobileNetV5 conv uses.

Padding is TensorFlow's "SAME" (timm ``pad_type='same'``). For an input length n, kernel k, stride s,
dilation d: the output has ``ceil(n / s)`` positions and the input is padded by
``total = max((ceil(n/s) - 1) * s + (k - 1) * d + 1 - n, 0)`` zeros, ``total // 2`` before and the rest
after. At stride 1 with an odd kernel that is the familiar symmetric ``(k-1)/2`` on each side, but a
stride-2 conv on an even input pads **more at the bottom/right**: k3 on n=768 pads (0, 1), k5 pads (1, 2).
PyTorch-style symmetric padding shifts every strided conv by one pixel and is the classic porting bug.

Source: timm 1.0.31 ``timm/layers/padding.py`` (``get_same_padding``, ``pad_same``).
Left out: timm's other padding modes (``valid``, symmetric integers), which MobileNetV5 does not use.
"""
from __future__ import annotations

import numpy as np


def same_padding(n: int, k: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one axis of length n (timm ``get_same_padding``)."""
    total = max((-(-n // stride) - 1) * stride + (k - 1) * dilation + 1 - n, 0)
    return total // 2, total - total // 2


def pad_same(x, k, stride, dilation):
    """Zero-pad the last two axes TF-"SAME" style.   [B, C, Y, X] -> [B, C, Y', X']"""
    (t, b), (l, r) = same_padding(x.shape[-2], k, stride, dilation), same_padding(x.shape[-1], k, stride, dilation)
    if t or b or l or r:
        x = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))                            # [B, C, Y', X']
    return x
