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
