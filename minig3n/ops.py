"""The few primitives every tower uses: RMSNorm, tanh-GELU, SiLU, softplus, soft-capping, Linear.

The idea: Gemma 3n builds everything from these. The one trap worth repeating: every Gemma 3n RMSNorm
multiplies by its weight as ``x * w``. There is no ``(1 + w)`` offset (Gemma 2/3 had one; Gemma 3n's
converter copied the JAX scales unchanged), and a few norms have no weight at all (v_norm, the embedders'
post-projection norms).

Source: transformers 5.24 ``Gemma3nRMSNorm`` and ``ACT2FN["gelu_pytorch_tanh"]``; timm ``RmsNorm2d``.
Left out: training-time clipping and dropout.

All functions work in the dtype of their input (float32 or float64); constants are the float32 values
the reference uses, cast to that dtype.
"""
import numpy as np

from . import accel
from .bf16 import BF16Weight
from .bf16 import linear as bf16_linear
from .bf16 import linear_columns as bf16_linear_columns
from .bf16 import linear_masked as bf16_linear_masked
from .bf16 import linear_nonzero as bf16_linear_nonzero
from .bf16 import linear_rows as bf16_linear_rows

SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))   # 0.7978846 as float32, the reference's constant
GELU_CUBIC = np.float32(0.044715)


def constant(value: float, dtype, exact: bool = False):
    """A scalar constant in ``dtype``: the reference's float32 value (default) or, with ``exact`` (float64 ports
    compared with each other: ``exact_constants``), ``value`` itself."""
    t = np.dtype(dtype).type
    return t(value) if exact else t(np.float32(value))


def rms_norm(x, weight=None, eps=1e-6):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis.   [..., D] -> [..., D]

    Computed as ``x * (mean(x^2) + eps) ** -0.5`` like the reference. ``weight`` None = no scale.
    """
    ms = np.mean(np.square(x), axis=-1, keepdims=True)            # [..., 1]
    y = x * np.power(ms + x.dtype.type(eps), x.dtype.type(-0.5))  # [..., D]
    if weight is not None:
        y *= weight.astype(x.dtype, copy=False)                   # [..., D] in place: one temporary less
    return y


def gelu_tanh(x):
    """GELU, tanh approximation: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.   [...] -> [...]

    The constants are those of torch's GELU kernel in the input dtype: float32-rounded for float32 input
    (``SQRT_2_OVER_PI``, ``GELU_CUBIC``), full double values for float64 input (torch computes
    ``M_SQRT2 * M_2_SQRTPI * 0.5`` and ``0.044715`` in the kernel's scalar type; it is a native op, not a
    float32 island, so the lifted float64 reference uses the double constants).
    The operations run in torch's order (``x^3`` as ``(x * x) * x``, then times 0.044715), in place on one
    temporary (the vision encoder's activations are large); used by the MLP, the PLE gate and MobileNetV5.
    """
    t = x.dtype.type
    h = x * x                                     # [...]
    h *= x                                        # x^3
    h *= t(0.044715)                              # == GELU_CUBIC for float32
    h += x
    h *= t(np.sqrt(2.0 / np.pi))                  # == SQRT_2_OVER_PI for float32
    np.tanh(h, out=h)
    h += t(1.0)
    h *= x
    h *= t(0.5)                                   # exact: a power of two
    return h


def silu(x):
    """``x * sigmoid(x)``.   [...] -> [...]"""
    return x / (x.dtype.type(1.0) + np.exp(-x))


def softplus(x):
    """``log(1 + exp(x))``, computed without overflow.   [...] -> [...]"""
    return np.logaddexp(x.dtype.type(0.0), x)


def softcap(x, cap):
    """``cap * tanh(x / cap)``: squashes logits smoothly into (-cap, cap).   [...] -> [...]"""
    c = x.dtype.type(cap)
    return c * np.tanh(x / c)


def linear(x, weight, bias=None):
    """``x W^T (+ b)`` with W in PyTorch's [out, in] layout.   [..., in] -> [..., out]

    W may be a ``bf16.BF16Weight`` (a BF16 matrix kept as stored): then ``bf16.linear`` widens it inside the
    product. A float32 W with float32 x of at least 64 tokens, with numba: ``accel.linear`` (compiled tiles,
    the same products summed in another order than BLAS's)."""
    if isinstance(weight, BF16Weight):
        y = bf16_linear(x, weight)
        return y if bias is None else y + bias.astype(x.dtype, copy=False)
    rows = x.size // max(x.shape[-1], 1)
    if accel.use_matmul(x, weight, rows):   # the same product, compiled tiles (numba extra): accel.py
        y = accel.linear(x.reshape(rows, x.shape[-1]), weight).reshape(*x.shape[:-1], weight.shape[0])
    else:
        y = x @ weight.astype(x.dtype, copy=False).T
    return y if bias is None else y + bias.astype(x.dtype, copy=False)


def linear_rows(x, weight, rows):
    """``x W[rows]^T``: only the outputs of weight rows ``rows`` (reading only those rows; no bias).
    [..., in], [out, in], [R] int -> [..., R]"""
    if isinstance(weight, BF16Weight):
        return bf16_linear_rows(x, weight, rows)
    return x @ weight[rows].astype(x.dtype, copy=False).T


def linear_columns(x, weight, cols):
    """``x W[:, cols]^T``: the product with weight columns ``cols`` only, ``x`` holding just their inputs
    (the other inputs are zeros; no bias).   [..., K], [out, in], [K] int -> [..., out]

    Only a BF16 weight skips the other columns (``bf16.linear_columns`` reads them from its transpose). A plain
    array's columns are strided, and picking 5 % of them out of an E2B ``down_proj`` took 9.8 ms against
    2.7 ms for the whole BLAS product: so the inputs are put back among zeros and the whole matrix is used."""
    if isinstance(weight, BF16Weight):
        return bf16_linear_columns(x, weight, cols)
    full = np.zeros((*x.shape[:-1], weight.shape[1]), dtype=x.dtype)           # [..., in]
    full[..., cols] = x
    return full @ weight.astype(x.dtype, copy=False).T


def linear_masked(x, weight, keep):
    """``x W^T`` where ``keep`` is True, zeros elsewhere (no bias).   [..., in], [out, in], [..., out] bool ->
    [..., out]

    A BF16 weight multiplies each row only with the tokens that keep it (``bf16.linear_masked``); a plain array
    is multiplied whole and the rest set to zero (the same values where kept)."""
    if isinstance(weight, BF16Weight):
        return bf16_linear_masked(x, weight, keep)
    return np.where(keep, linear(x, weight), x.dtype.type(0.0))


def linear_nonzero(x, weight):
    """``x W^T`` (no bias), where a BF16 weight reads, for each token, only the columns of its nonzero inputs
    (``bf16.linear_nonzero``); a plain array is multiplied whole.   [..., in], [out, in] -> [..., out]"""
    if isinstance(weight, BF16Weight):
        return bf16_linear_nonzero(x, weight)
    return linear(x, weight)


def prepare_columns(weight) -> None:
    """Make the column-by-column copy ``linear_columns`` reads from a BF16 weight now (``BF16Weight.columns``,
    kept with the weight); nothing for a plain array, which ``linear_columns`` multiplies whole."""
    if isinstance(weight, BF16Weight):
        weight.columns()


def softmax(x, axis=-1, where=None):
    """Numerically stable softmax: ``exp(x - max) / sum``.   [...] -> [...]

    ``where`` (bool, broadcastable to ``x``): only those entries take part; the others get probability 0, and
    a row with no entry at all gets all zeros (not NaN), as attention over no visible key does."""
    if where is None:
        m = np.max(x, axis=axis, keepdims=True)
        e = np.exp(x - m)
        return e / np.sum(e, axis=axis, keepdims=True)
    x = np.where(where, x, -np.inf)
    seen = np.asarray(where).any(axis=axis, keepdims=True)
    m = np.where(seen, np.max(x, axis=axis, keepdims=True), 0.0)
    e = np.exp(x - m)
    return e / np.where(seen, np.sum(e, axis=axis, keepdims=True), 1.0)
