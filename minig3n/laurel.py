"""LAuReL (Learned Augmented Residual Layer): a cheap low-rank branch added next to attention.

The idea: instead of the plain residual ``x``, add a learned low-rank linear map of it,
``x + norm(W_right (W_left x))`` with rank R (laurel_rank = 64) much smaller than D. In Gemma 3n it runs on
the *normed* active stream n (the attention input) and its output is averaged with the attention branch:
``h = (a + attn + laurel(n)) / sqrt(2)`` (see ``decoder.decoder_layer``).

Source: Menghani et al., "LAuReL: Learned Augmented Residual Layer" (ICML 2025), the "LR" (low-rank)
variant; transformers 5.24 ``Gemma3nTextLaurelBlock``; docs/NUMERICS.md §1.5 step 3.
Left out: the paper's other variants (learned residual weights, previous-activation mixing).
"""
from __future__ import annotations

from .ops import linear, rms_norm


def laurel(x, p, eps=1e-6):
    """``x + post_laurel_norm(linear_right(linear_left(x)))``.   [B, T, D] -> [B, T, D]

    ``p``: ``linear_left.weight`` [R, D], ``linear_right.weight`` [D, R], ``post_laurel_norm.weight`` [D]."""
    low = linear(x, p["linear_left.weight"])                                  # [B, T, R]
    up = linear(low, p["linear_right.weight"])                                # [B, T, D]
    return x + rms_norm(up, p["post_laurel_norm.weight"], eps)                # [B, T, D]
