"""The compiled kernels of ``bf16`` (a private module: imported only when numba is, on the first BF16 GEMV).

Each kernel has its NumPy twin in ``bf16`` (``gemv_numpy``, ``widen``); tests/test_bf16.py checks they agree.
Threads: ``prange`` over blocks of output rows, numba's thread count (``NUMBA_NUM_THREADS``, default the
number of cores). Threading layer: ``workqueue`` unless ``NUMBA_THREADING_LAYER`` says otherwise. On this
project's shared 2-core machines (load 7-10) the OpenMP layer's spinning barriers made a parallel GEMV
3-4x slower than the workqueue layer (8192 x 2048: 28.9 ms against 7.6 ms, same minute).
"""
import os

import numba
import numpy as np

if not os.environ.get("NUMBA_THREADING_LAYER"):
    numba.config.THREADING_LAYER = "workqueue"

_FAST = {"reassoc", "contract"}     # lets LLVM vectorise the float32 dot product (order not sequential)


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def gemv_rows(x, bits, y, o0, o1, row):
    """y[n, o] = sum_i widen(bits[o, i]) * x[n, i] for o in [o0, o1), float32; ``row`` a uint32 scratch [in]."""
    N, I = x.shape
    wf = row.view(np.float32)
    for o in range(o0, o1):
        for i in range(I):
            row[i] = np.uint32(bits[o, i]) << np.uint32(16)
        for n in range(N):
            s = np.float32(0.0)
            for i in range(I):
                s += wf[i] * x[n, i]
            y[n, o] = s


@numba.njit(cache=True, nogil=True)
def gemv_serial(x, bits, y):
    """The whole GEMV on the calling thread (small matrices: waking the others costs more)."""
    gemv_rows(x, bits, y, 0, bits.shape[0], np.empty(x.shape[1], np.uint32))


@numba.njit(cache=True, nogil=True, parallel=True)
def gemv_parallel(x, bits, y):
    """The GEMV with the output rows cut into 64 blocks shared out over the threads."""
    O = bits.shape[0]
    blocks = min(O, 64)
    step = (O + blocks - 1) // blocks
    for b in numba.prange(blocks):
        gemv_rows(x, bits, y, b * step, min(O, (b + 1) * step), np.empty(x.shape[1], np.uint32))


@numba.njit(cache=True, nogil=True, fastmath=_FAST, parallel=True)
def gemm_parallel(x, bits, y):
    """y = x widen(bits)^T for many tokens (prefill): blocks of ``RB`` weight rows shared out over the threads;
    each block is widened once into a private float32 buffer (L2-sized), then 4-token x 4-row tiles take 16
    dot products in one pass over ``in`` (x and w loads shared, 16 vector accumulators), float32 sums.
    Measured (8192 x 2048, 128 tokens, 2 threads, load 3-5): 54-101 ms against 309-389 ms for NumPy widening
    per block + OpenBLAS sgemm in the same minute."""
    N, I = x.shape
    O = bits.shape[0]
    RB = 32
    for b in numba.prange((O + RB - 1) // RB):
        o0 = b * RB
        nr = min(O, o0 + RB) - o0
        buf = np.empty((RB, I), np.uint32)
        for r in range(nr):
            for i in range(I):
                buf[r, i] = np.uint32(bits[o0 + r, i]) << np.uint32(16)
        w = buf.view(np.float32)
        for n0 in range(0, N, 4):
            for r0 in range(0, nr, 4):
                if n0 + 4 <= N and r0 + 4 <= nr:
                    _tile4x4(x, w, y, n0, r0, o0)
                else:
                    for n in range(n0, min(N, n0 + 4)):
                        for r in range(r0, min(nr, r0 + 4)):
                            s = np.float32(0.0)
                            for i in range(I):
                                s += x[n, i] * w[r, i]
                            y[n, o0 + r] = s


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _tile4x4(x, w, y, n0, r0, o0):
    z = np.float32(0.0)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = z
    for i in range(x.shape[1]):
        a0, a1, a2, a3 = x[n0, i], x[n0 + 1, i], x[n0 + 2, i], x[n0 + 3, i]
        w0, w1, w2, w3 = w[r0, i], w[r0 + 1, i], w[r0 + 2, i], w[r0 + 3, i]
        s00 += a0 * w0; s01 += a0 * w1; s02 += a0 * w2; s03 += a0 * w3      # noqa: E702
        s10 += a1 * w0; s11 += a1 * w1; s12 += a1 * w2; s13 += a1 * w3      # noqa: E702
        s20 += a2 * w0; s21 += a2 * w1; s22 += a2 * w2; s23 += a2 * w3      # noqa: E702
        s30 += a3 * w0; s31 += a3 * w1; s32 += a3 * w2; s33 += a3 * w3      # noqa: E702
    o = o0 + r0
    y[n0, o], y[n0, o + 1], y[n0, o + 2], y[n0, o + 3] = s00, s01, s02, s03
    y[n0 + 1, o], y[n0 + 1, o + 1], y[n0 + 1, o + 2], y[n0 + 1, o + 3] = s10, s11, s12, s13
    y[n0 + 2, o], y[n0 + 2, o + 1], y[n0 + 2, o + 2], y[n0 + 2, o + 3] = s20, s21, s22, s23
    y[n0 + 3, o], y[n0 + 3, o + 1], y[n0 + 3, o + 2], y[n0 + 3, o + 3] = s30, s31, s32, s33
