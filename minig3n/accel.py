"""Optional numba twins of the NumPy kernels where NumPy's whole-array style costs real time.

The idea: minig3n is written in NumPy so that every step reads like the maths. A few kernels are not one
BLAS call but many whole-array passes (a depthwise kxk conv is k*k multiply-and-add passes over the output
plus a padded copy of the input), and there a compiled loop that touches each output once is several times
faster. This module holds those loops, compiled by numba (``pip install 'minig3n[numba]'``); each is the
*twin* of a NumPy function that stays the readable reference in its concept module and calls the twin from
its first line. The twin computes the same sums in the same order and dtype (float32 stays float32 and
accumulates in float32), so its result equals the NumPy one up to the sign of an exact zero; the tests
(``tests/test_accel.py``) check that they agree.

Selection rule (read on every call, so a test or a user can switch it at run time):

* ``MINIG3N_ACCEL`` unset or empty: the numba twin when numba can be imported, else NumPy;
* ``MINIG3N_ACCEL=numpy``: always NumPy;
* ``MINIG3N_ACCEL=numba``: always numba; ``ConfigError`` if numba cannot be imported;
* any other value: ``ConfigError``.

Twins exist for float32 and float64 inputs only (other dtypes take the NumPy path). numba is imported on
the first call that wants it, never at ``import minig3n`` (about 0.2 s). Kernels are compiled with
``cache=True``: the first process compiles them (about 1.6 s for both kernels in both dtypes) into
``minig3n/__pycache__``; later processes load them from there (about 0.2 s).

Twins, and what they bought on the 300M vision encoder (768 x 768 image, float32, one thread, cProfile;
the encoder took 10.0 s in NumPy, 8.4 s with the first two twins on the November machine; figures against the
reference in tests/bench/README.md):

* ``depthwise_conv2d`` (``conv2d.depthwise_conv2d``): TF-"SAME" depthwise conv, NCHW, 45 calls,
  1.49 s -> 0.19 s. NumPy makes k*k passes over the output plus a padded copy; the twin reads each input
  row from cache, skips the padding instead of copying it, and splits strided inputs into column phases
  so every inner loop is contiguous (vectorised).
* ``rms_norm2d`` (``conv2d.rms_norm2d``): RMSNorm over the channels of each pixel, 0.82 s -> 0.46 s for
  184 calls: two reads and one write of the map instead of about seven whole-array passes.
* ``rms_norm2d_gelu`` (``conv2d.rms_norm2d_gelu``, issue 12): the norm and tanh-GELU of every ConvNormAct
  with an activation, in chunks of pixels whose tanh argument fits in L2; the ``tanh`` itself stays NumPy's
  (SIMD) ufunc, called on the chunk in place. On a [1, 512, 192, 192] map: 37 ms against 99 ms for NumPy's
  norm then GELU (AMD EPYC, one thread).
* ``rms_norm2d_add`` (``conv2d.rms_norm2d_add``, issue 12): a block's last norm, its layer scale and its
  skip connection in one pass (no ``h * gamma`` and ``h + x`` temporaries).

Every twin above computes the NumPy version's operations in the same order, so the results are identical
in the tests (``tests/test_accel.py`` allows 1e-6 / 1e-12 relative, for a compiler that would fuse a
multiply-add).

* ``linear`` (``ops.linear``, issue 12): the float32 matrix products of the audio tower (and
  of float32 checkpoints' prompts), at least 64 tokens, on the BF16 kernels' 6-row x 64-token tiles
  (``_gemm_kernels.gemm_parallel``, which takes float32 weights as they are, on numba's threads). The twin of
  ``x @ W.T`` is BLAS, which orders its float32 sums its own way: the two agree to a few 1e-7 relative, not
  exactly (``tests/test_bf16.py``: 2e-6). Why: the audio encoder is mostly these products, and on the
  2-core machines here the tiles ran 320-380 GFLOP/s on its shapes against OpenBLAS's 130-250
  (tests/bench/README.md).
* ``matmul_channels_first`` (``conv2d.pointwise_conv`` and the dense convs' im2col product, issue 12): the
  vision tower's ``W @ x`` with the pixels as tokens, at least 64 of them, on the same tiles
  (``_gemm_kernels.gemm_channels_first``: each thread copies its own groups of 64 pixels once and runs every
  weight row past them). Twin: ``np.matmul`` (BLAS), within 2e-6 (``tests/test_tile_kernels.py``).
* ``mqa_attention`` (``mobilenetv5.mobile_mqa``, issue 12): the multi-query attention of one image, per
  (head, group of 64 queries): logits, softmax and values on the same tiles, with a vectorised float32 exp
  (``exp_nonpositive``, within 3 ulp of NumPy's). Twin: the NumPy loop in ``mobile_mqa``, within 5e-6.
  Why both: on the 2-core Zen 5 here the tiles ran 250-450 GFLOP/s on the tower's products against
  OpenBLAS's (forced Haswell kernel) 130-230, the attention 340-390 against about 100; and once the
  1x1 convs were compiled, the attention left on BLAS lost time to the two thread pools waiting on each
  other. Together: the encoder at 768 x 768 from 5.2 to 3.2-3.6 s (tests/bench/README.md).

* ``gqa_attention`` (``attention.attend``, issue 12): the decoder's attention over a prompt of 64 tokens or
  more, per (query head, group of 64 queries), as ``mqa_attention`` with the mask applied in the softmax.
  Twin: ``attend``'s NumPy code, within 5e-6. A 128-token E2B prefill: 1.03 -> 1.01 s (BLAS's small
  products there waited on numba's threads); a 256 x 512 block 3.7 against 12.8 ms.

Left out, because numba does not pay there: the audio encoder's other steps (SiLU, the group norm and the
light conv are in-place NumPy instead); a compiled ``tanh`` for the GELU (NumPy's SIMD ``tanh`` is 4-5x
faster than the scalar libm call numba makes without SVML, and a hand-written one, like the attention's exp,
would be one more approximation to check); the im2col copy before the dense convs (a memory copy already);
and threads in the norms over channels (each pixel reads C rows N * 4 bytes apart, so a pixel run per thread
was no faster: 0.25 against 0.21 s for the encoder's ``_norm_gelu_pre_loops``). The depthwise conv and the
GELU's last pass do run their channels in parallel (depthwise: 0.17 -> 0.08 s on the 300M encoder).
"""
from __future__ import annotations

import os

import numpy as np

from .errors import ConfigError
from .padding import same_padding

ENV = "MINIG3N_ACCEL"
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_numba = None            # the numba module once imported; False if the import failed
_jitted: dict = {}       # kernel name -> numba dispatcher
_NO_NUMBA = (f"{ENV}=numba but numba cannot be imported: pip install 'minig3n[numba]' "
             f"(or unset {ENV} to use the NumPy kernels)")


def _import_numba():
    global _numba
    if _numba is None:
        try:
            import numba
            _numba = numba
        except ImportError:
            _numba = False
    return _numba


def mode() -> str:
    """``"numpy"`` or ``"numba"``: which implementation the kernels in this module's list use now."""
    value = os.environ.get(ENV, "").strip().lower()
    if value == "numpy":
        return "numpy"
    if value not in ("", "numba"):
        raise ConfigError(f"environment variable {ENV}={os.environ[ENV]!r}: expected 'numpy', 'numba' or unset")
    if _import_numba():
        return "numba"
    if value == "numba":
        raise ConfigError(_NO_NUMBA)
    return "numpy"


def use_numba(x) -> bool:
    """True when the numba twin should run on the array ``x`` (the rule above; float32/float64 only: the
    twins, like the NumPy code, cast their weights to ``x``'s dtype)."""
    return np.asarray(x).dtype in _DTYPES and mode() == "numba"


prange = range           # the loops' parallel range: numba.prange once numba is imported (_kernel)
_PARALLEL = {"depthwise_conv2d", "gelu_post"}   # the loops with a prange


def _kernel(name: str):
    """The compiled twin of the plain-Python loop ``_<name>_loops`` (compiled once, cached on disk). A ``prange``
    loop's iterations write disjoint outputs: the result does not depend on numba's thread count."""
    global prange
    if name not in _jitted:
        if not _import_numba():
            raise ConfigError(_NO_NUMBA)
        prange = _numba.prange
        _jitted[name] = _numba.njit(cache=True, nogil=True, parallel=name in _PARALLEL)(globals()[f"_{name}_loops"])
    return _jitted[name]


# ----------------------------------------------------------------------------------------------------
# Depthwise conv (twin of conv2d.depthwise_conv2d)
# ----------------------------------------------------------------------------------------------------

def depthwise_conv2d(x, w, stride=1, dilation=1):
    """Depthwise kxk conv, TF-"SAME" padding, as ``conv2d.depthwise_conv2d``.
    [B, C, Y, X] -> [B, C, Yo, Xo];  w [C, 1, k, k]"""
    x = np.ascontiguousarray(x)
    B, C, Y, X = x.shape
    k = w.shape[-1]
    taps = np.ascontiguousarray(np.asarray(w).astype(x.dtype, copy=False).reshape(C, k, k))  # [C, k, k]
    top, _ = same_padding(Y, k, stride, dilation)
    left, _ = same_padding(X, k, stride, dilation)
    Yo, Xo = -(-Y // stride), -(-X // stride)
    y = np.zeros((B, C, Yo, Xo), dtype=x.dtype)                                 # [B, C, Yo, Xo]
    _kernel("depthwise_conv2d")(x, taps, y, stride, dilation, top, left)
    return y


def _depthwise_conv2d_loops(x, taps, y, stride, dilation, top, left):
    """y[b, c, yo, xo] += taps[c, i, j] * x[b, c, yo*s + i*d - top, xo*s + j*d - left], taps in the order
    (i, j) = (0, 0), (0, 1), ... as the NumPy version adds its shifted views; positions in the zero
    padding are skipped (they would add exact zeros). One output row at a time stays in cache.

    With stride s > 1 each channel is first split into s column phases (``phases[r, yi, m] =
    x[.., yi, m*s + r]``), so that every tap reads a contiguous run: column ``xo*s + off`` is
    ``phases[off % s, yi, xo + off // s]``. Contiguous inner loops are what the compiler vectorises."""
    B, C, Y, X = x.shape
    k = taps.shape[1]
    Yo, Xo = y.shape[2], y.shape[3]
    # Per tap column j (the same for every row and channel): its phase, shift and valid output columns.
    phase, shift = np.empty(k, np.int64), np.empty(k, np.int64)
    lo, hi = np.empty(k, np.int64), np.empty(k, np.int64)
    for j in range(k):
        off = j * dilation - left                                          # column xo * stride + off
        phase[j] = off % stride
        shift[j] = (off - phase[j]) // stride
        n = (X - phase[j] + stride - 1) // stride                          # columns in that phase
        lo[j], hi[j] = max(0, -shift[j]), min(Xo, n - shift[j])
    for bc in prange(B * C):                                                # one channel per iteration
        b, c = bc // C, bc % C
        if stride == 1:
            phases = x[b, c:c + 1]                                          # [1, Y, X] view, no copy
        else:
            phases = np.empty((stride, Y, (X + stride - 1) // stride), dtype=x.dtype)  # [s, Y, ceil(X/s)]
            for r in range(stride):
                for yi in range(Y):
                    for m in range((X - r + stride - 1) // stride):
                        phases[r, yi, m] = x[b, c, yi, m * stride + r]
        for yo in range(Yo):
            out = y[b, c, yo]
            for i in range(k):
                yi = yo * stride + i * dilation - top
                if yi < 0 or yi >= Y:
                    continue
                for j in range(k):
                    if hi[j] <= lo[j]:
                        continue
                    t = taps[c, i, j]
                    dst = out[lo[j]:hi[j]]
                    src = phases[phase[j], yi, lo[j] + shift[j]:hi[j] + shift[j]]
                    for m in range(hi[j] - lo[j]):
                        dst[m] += src[m] * t


# ----------------------------------------------------------------------------------------------------
# RmsNorm2d (twin of conv2d.rms_norm2d)
# ----------------------------------------------------------------------------------------------------

def rms_norm2d(x, weight, eps):
    """timm ``RmsNorm2d`` over the channels of each pixel, as ``conv2d.rms_norm2d``.
    [B, C, Y, X] -> [B, C, Y, X]"""
    x = np.ascontiguousarray(x)
    B, C, Y, X = x.shape
    t = x.dtype.type
    w = np.ascontiguousarray(np.asarray(weight).astype(x.dtype, copy=False))   # [C]
    y = np.empty_like(x)                                                        # [B, C, Y, X]
    _kernel("rms_norm2d")(x.reshape(B, C, Y * X), w, y.reshape(B, C, Y * X), t(C), t(eps), t(1.0))
    return y


def _rms_norm2d_loops(x, w, y, count, eps, one):
    """Per pixel n: ``ms = x[0]^2 + x[1]^2 + ...`` (channels in order, as NumPy's reduction over a
    non-contiguous axis adds them), ``inv = one / sqrt(ms / count + eps)``, ``y[c] = (x[c] * inv) * w[c]``.
    ``count``, ``eps``, ``one`` come in the working dtype, so float32 stays float32 throughout."""
    B, C, N = x.shape
    ms = np.empty(N, dtype=x.dtype)                                             # [Y*X]
    for b in range(B):
        ms[:] = 0
        for c in range(C):
            row = x[b, c]
            for n in range(N):
                ms[n] += row[n] * row[n]
        for n in range(N):
            ms[n] = one / np.sqrt(ms[n] / count + eps)                          # now the inverse rms
        for c in range(C):
            row, out, wc = x[b, c], y[b, c], w[c]
            for n in range(N):
                out[n] = row[n] * ms[n] * wc


# ----------------------------------------------------------------------------------------------------
# RmsNorm2d + GELU (twin of conv2d.rms_norm2d_gelu) and RmsNorm2d * gamma + residual (conv2d.rms_norm2d_add)
# ----------------------------------------------------------------------------------------------------

_CHUNK = 1 << 17         # elements of one chunk's tanh scratch (512 KiB in float32): stays in L2


def rms_norm2d_gelu(x, weight, eps):
    """``gelu_tanh(rms_norm2d(x))``, as ``conv2d.rms_norm2d_gelu``.   [B, C, Y, X] -> [B, C, Y, X]

    In chunks of pixels: a compiled pass normalises the chunk and writes the GELU's tanh argument to a
    scratch that fits in cache, NumPy's (SIMD) ``tanh`` runs on the scratch in place, a second compiled pass
    finishes ``0.5 x (1 + tanh)``. The same operations in the same order as NumPy's ``rms_norm2d`` then
    ``ops.gelu_tanh``, on the same ``tanh``: the result is identical."""
    x = np.ascontiguousarray(x)
    B, C, Y, X = x.shape
    N, t = Y * X, x.dtype.type
    w = np.ascontiguousarray(np.asarray(weight).astype(x.dtype, copy=False))   # [C]
    y = np.empty_like(x)                                                        # [B, C, Y, X]
    xf, yf = x.reshape(B, C, N), y.reshape(B, C, N)
    step = max(16, _CHUNK // max(C, 1) // 16 * 16)                              # pixels per chunk
    scratch = np.empty(C * min(step, N), dtype=x.dtype)
    pre, post = _kernel("norm_gelu_pre"), _kernel("gelu_post")
    for b in range(B):
        for n0 in range(0, N, step):
            n1 = min(N, n0 + step)
            u = scratch[:C * (n1 - n0)].reshape(C, n1 - n0)                     # [C, chunk]
            pre(xf[b], w, yf[b], u, n0, n1, t(C), t(eps), t(1.0), t(0.044715), t(np.sqrt(2.0 / np.pi)))
            np.tanh(u, out=u)
            post(yf[b], u, n0, n1, t(1.0), t(0.5))
    return y


def _norm_gelu_pre_loops(x, w, y, u, n0, n1, count, eps, one, cubic, sqrt_2_pi):
    """Pixels n0..n1-1 of one image: ``y = x * inv_rms * w`` (as ``_rms_norm2d_loops``) and the tanh
    argument ``u = ((y*y*y) * cubic + y) * sqrt_2_pi`` in ``ops.gelu_tanh``'s order."""
    C = x.shape[0]
    m = n1 - n0
    ms = np.zeros(m, dtype=x.dtype)                                             # [chunk]
    for c in range(C):
        row = x[c, n0:n1]
        for n in range(m):
            ms[n] += row[n] * row[n]
    for n in range(m):
        ms[n] = one / np.sqrt(ms[n] / count + eps)
    for c in range(C):
        row, out, uc, wc = x[c, n0:n1], y[c, n0:n1], u[c], w[c]
        for n in range(m):
            v = row[n] * ms[n] * wc
            out[n] = v
            uc[n] = (v * v * v * cubic + v) * sqrt_2_pi


def _gelu_post_loops(y, u, n0, n1, one, half):
    """``y = (tanh + 1) * y * 0.5`` on pixels n0..n1-1 (``u`` holds the tanh)."""
    C = y.shape[0]
    for c in prange(C):
        out, uc = y[c, n0:n1], u[c]
        for n in range(n1 - n0):
            out[n] = (uc[n] + one) * out[n] * half


def rms_norm2d_add(x, weight, residual, gamma, eps):
    """``rms_norm2d(x) * gamma + residual`` (either may be None), as ``conv2d.rms_norm2d_add``.
    [B, C, Y, X] -> [B, C, Y, X]. One read of the residual, one write, no temporaries; identical result."""
    x = np.ascontiguousarray(x)
    B, C, Y, X = x.shape
    t = x.dtype.type
    w = np.ascontiguousarray(np.asarray(weight).astype(x.dtype, copy=False))   # [C]
    g = np.ascontiguousarray(np.asarray(gamma).astype(x.dtype, copy=False)) if gamma is not None \
        else np.ones(C, x.dtype)                                                # [C] (x 1 is exact)
    has_res = residual is not None
    r = np.ascontiguousarray(np.asarray(residual).astype(x.dtype, copy=False)).reshape(B, C, Y * X) if has_res \
        else x.reshape(B, C, Y * X)
    y = np.empty_like(x)                                                        # [B, C, Y, X]
    _kernel("rms_norm2d_add")(x.reshape(B, C, Y * X), w, g, r, has_res, y.reshape(B, C, Y * X), t(C), t(eps),
                              t(1.0))
    return y


def _rms_norm2d_add_loops(x, w, g, r, has_res, y, count, eps, one):
    """``y[c] = x[c] * inv * w[c] * g[c] (+ r[c])``: ``_rms_norm2d_loops``, then NumPy's ``h * gamma``
    and ``h + x`` in that order."""
    B, C, N = x.shape
    ms = np.empty(N, dtype=x.dtype)                                             # [Y*X]
    for b in range(B):
        ms[:] = 0
        for c in range(C):
            row = x[b, c]
            for n in range(N):
                ms[n] += row[n] * row[n]
        for n in range(N):
            ms[n] = one / np.sqrt(ms[n] / count + eps)
        for c in range(C):
            row, out, wc, gc = x[b, c], y[b, c], w[c], g[c]
            if has_res:
                res = r[b, c]
                for n in range(N):
                    out[n] = row[n] * ms[n] * wc * gc + res[n]
            else:
                for n in range(N):
                    out[n] = row[n] * ms[n] * wc * gc


# ----------------------------------------------------------------------------------------------------
# float32 matrix product (twin of ``x @ W.T`` in ops.linear)
# ----------------------------------------------------------------------------------------------------
MIN_ROWS = 64       # fewer tokens than one group of _gemm_kernels' tiles: BLAS


def use_matmul(x, w, rows: int) -> bool:
    """True when the compiled float32 product should run: float32 ``x`` and 2-D float32 ``w``, at least
    ``MIN_ROWS`` tokens, numba mode."""
    return (x.dtype == np.float32 and w.dtype == np.float32 and w.ndim == 2 and rows >= MIN_ROWS
            and mode() == "numba")


def linear(x, w):
    """``x @ w.T`` for float32 x [N, in], w [out, in] (``ops.linear``): ``_gemm_kernels.gemm_parallel``.
    [N, in] -> [N, out]"""
    from . import _gemm_kernels                          # numba is importable: mode() said "numba"
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    y = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)                   # [N, out]
    _gemm_kernels.gemm_parallel(x, w, y)
    return y


def matmul_channels_first(w, x):
    """``w @ x`` per image for float32 w [out, K], x [B, K, P] (a 1x1 conv, a dense conv's im2col columns):
    ``_gemm_kernels.gemm_channels_first``.   [B, K, P] -> [B, out, P]"""
    from . import _gemm_kernels                          # numba is importable: mode() said "numba"
    w = np.ascontiguousarray(w)
    y = np.empty((x.shape[0], w.shape[0], x.shape[2]), dtype=np.float32)        # [B, out, P]
    for b in range(x.shape[0]):
        _gemm_kernels.gemm_channels_first(w, np.ascontiguousarray(x[b]), y[b], _numba.get_num_threads())
    return y


def mqa_attention(q, k, v):
    """Multi-query attention for one image (``mobilenetv5.mobile_mqa``): softmax(q^T k) over the keys, times
    v, channels first: ``_gemm_kernels.mqa_attention``.   q [h, d, N] (scaled), k, v [d, M] -> [h, d, N]"""
    from . import _gemm_kernels                          # numba is importable: mode() said "numba"
    o = np.empty(q.shape, dtype=np.float32)                                     # [h, d, N]
    _gemm_kernels.mqa_attention(np.ascontiguousarray(q), np.ascontiguousarray(k.T), np.ascontiguousarray(v), o)
    return o


def gqa_attention(q, k, v, mask):
    """The decoder's attention for a prompt (``attention.attend``): ``_gemm_kernels.gqa_attention`` per batch
    row.   q [B, T, N, E], k, v [B, S, G, E], mask [B|1, T, S] -> [B, T, N*E]"""
    from . import _gemm_kernels                          # numba is importable: mode() said "numba"
    B, T, N, E = q.shape
    visible = np.broadcast_to(np.asarray(mask, dtype=bool), (B, T, k.shape[1]))  # [B, T, S]
    o = np.empty(q.shape, dtype=np.float32)                                     # [B, T, N, E]
    for b in range(B):
        _gemm_kernels.gqa_attention(np.ascontiguousarray(q[b]), np.ascontiguousarray(k[b].transpose(1, 0, 2)),
                                    np.ascontiguousarray(v[b].transpose(1, 2, 0)),
                                    np.ascontiguousarray(visible[b].T), o[b])
    return o.reshape(B, T, N * E)
