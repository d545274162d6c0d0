"""The gated MLP with Gaussian top-k activation sparsity.

The idea: a GeGLU feed-forward, ``down(gelu_tanh(gate(x)) * up(x))``, where on the first layers (sparsity
s > 0, 0.95 on layers 0..9 of E2B/E4B) the gate pre-activation is first shifted down by
``mean + std * Phi^-1(s)`` (statistics over the I axis, per token, population std) and ReLU'd. If the gate
values were Gaussian, this keeps the top (1 - s) = 5% of them; no sorting is needed. GELU is applied to the
shifted, ReLU'd value (not a mask on gelu(gate)). Each layer may have its own intermediate size I
(MatFormer sub-models narrow them).

What the sparsity buys: a unit whose shifted gate is <= 0 contributes exactly ``gelu(0) * up = 0``, so its
row of ``up_proj`` and its column of ``down_proj`` need not be read at all. For one token (decode) 95% of
the units are dropped, and whenever the kept units are at most ``LIVE_FRACTION`` of I, ``mlp`` computes the
up projection of the kept units only (``ops.linear_rows``: their rows) and the down projection from the
kept units only (``ops.linear_columns``: their columns). A column of ``down_proj`` [D, I] is strided, one
value per row, and 5% of the columns touch nearly every cache line of the matrix; so a BF16 ``down_proj``
is read through its transpose (``BF16Weight.columns``: the matrix once more, stored column by column, where
a column is one contiguous run), made by the prompt's pass (right before its down projection when that
takes the path below, else right after the whole product); a plain array is still multiplied whole, the zeros put back. On E2B the two skip about 640 MB of
the 4.8 GB of weights a decode step reads, for 335 MB more memory. A prompt's tokens each keep their own 5%,
which together cover most units; when at most ``LIVE_FRACTION`` of the (token, unit) pairs are kept, the up
projection is computed at the kept pairs only (``ops.linear_masked``: each row of ``up_proj`` with the tokens
that keep it) and each token's down projection from its nonzero inputs only (``ops.linear_nonzero``): with BF16
weights and numba that skips two thirds of a sparse layer's MLP products in the prompt (E2B, 128 tokens:
two 16 ms products become 6-7 ms each). (The reference multiplies by the zeros instead; the kept units'
values are the same dot products, summed in another order.)

Source: transformers 5.24 ``Gemma3nTextMLP`` / ``_gaussian_topk``; the "Spark Transformer" statistical
top-k (Gemma 3n tech report); docs/NUMERICS.md §1.7.
Left out: nothing used at inference.

The z-score Phi^-1(s) is the reference's float32 value, computed the way torch does
(``Normal(0, 1).icdf(float32 s) = erfinv(2 s - 1) * sqrt(2)`` in float32), e.g. 1.6448535919189453 for 0.95
(the exact value is 1.6448536269514722). ``std_multiplier`` reproduces torch's value bit for bit for 0.95 and
for all but 3 of 990 values of s on a 0.001 grid (those 3 are 1 ulp off).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from .ops import gelu_tanh, linear, linear_columns, linear_masked, linear_nonzero, linear_rows, prepare_columns

LIVE_FRACTION = 0.25     # sparse layers: the kept units' products only when they are at most this share


def std_multiplier(sparsity: float) -> np.float32:
    """Phi^-1(sparsity) as the reference's float32 constant (see the module docstring)."""
    f = np.float32
    y = f(2.0) * f(sparsity) - f(1.0)                                         # float32 2s - 1 (exact)
    erfinv = f(NormalDist().inv_cdf((float(y) + 1.0) / 2.0) / math.sqrt(2.0))  # correctly rounded erfinv(y)
    return f(erfinv * f(math.sqrt(2.0)))


def gaussian_topk(gate, sparsity: float, exact: bool = False):
    """``relu(gate - (mean + std * Phi^-1(s)))`` over the last axis.   [B, T, I] -> [B, T, I]

    ``exact``: Phi^-1(s) computed in float64 instead of the reference's float32 value."""
    z = gate.dtype.type(NormalDist().inv_cdf(sparsity) if exact else std_multiplier(sparsity))
    mean = np.mean(gate, axis=-1, keepdims=True)                              # [B, T, 1]
    std = np.sqrt(np.mean(np.square(gate - mean), axis=-1, keepdims=True))    # [B, T, 1] population std
    return np.maximum(gate - (mean + std * z), gate.dtype.type(0.0))          # [B, T, I]


def mlp(x, p, sparsity: float = 0.0, rec=None, exact: bool = False):
    """``down_proj(gelu_tanh(sparsify(gate_proj(x))) * up_proj(x))``.   [B, T, D] -> [B, T, D]

    ``p``: ``gate_proj.weight`` [I, D], ``up_proj.weight`` [I, D], ``down_proj.weight`` [D, I].
    ``rec(name, array)``, if given, receives the pre-activation gate as ``gate_proj``; ``exact``: the z-score in
    float64 (``gaussian_topk``)."""
    gate = linear(x, p["gate_proj.weight"])                                   # [B, T, I]
    if rec is not None:
        rec("gate_proj", gate)
    if sparsity > 0.0:
        gate = gaussian_topk(gate, sparsity, exact)                           # [B, T, I]
        kept = gate > 0                                                       # [B, T, I]
        live = np.flatnonzero(kept.any(axis=(0, 1)))                          # [I'] units some token keeps
        if len(live) <= LIVE_FRACTION * gate.shape[-1]:                      # the kept units only (decode):
            h = gelu_tanh(gate[..., live]) * linear_rows(x, p["up_proj.weight"], live)  # [B, T, I']
            return linear_columns(h, p["down_proj.weight"], live)             # [B, T, D]
        if np.count_nonzero(kept) <= LIVE_FRACTION * kept.size:              # each token its own few (prompt):
            h = gelu_tanh(gate) * linear_masked(x, p["up_proj.weight"], kept)  # [B, T, I] 0 where dropped
            return linear_nonzero(h, p["down_proj.weight"])                   # [B, T, D]
    up = linear(x, p["up_proj.weight"])                                       # [B, T, I]
    out = linear(gelu_tanh(gate) * up, p["down_proj.weight"])                 # [B, T, D]
    if sparsity > 0.0:
        prepare_columns(p["down_proj.weight"])     # for the decode steps to come (a BF16 weight's transpose)
    return out
