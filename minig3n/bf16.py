"""BF16 weights kept as BF16: ``x W^T`` read straight from the memory map, widened inside the product.

The idea: a BF16 number is the top 16 bits of a float32, so widening is a shift, exact. Gemma 3n's official
checkpoints store every matrix in BF16; converting them all to float32 on first use (what minig3n did before)
doubles the bytes a decode step reads (9.7 GB instead of 4.85 GB per token for E2B) and the resident
memory (15.8 GiB). Here a 2-D BF16 tensor of the text decoder is handed out as a ``BF16Weight`` (its uint16
bits, a read-only view into the memory map, and its shape) and ``ops.linear`` multiplies with it directly:

* **few rows** (decode, N <= ``GEMV_ROWS`` tokens): a numba kernel (``_bf16_kernels.gemv_parallel``) splits
  the output rows over the threads (``prange``; matrices up to ``SERIAL_SIZE`` entries stay on one thread)
  and takes each row's dot product with each token in float32, widening the BF16 values as it loads them
  (``_bf16_kernels.widen1``, a bit cast numba lacks, written as an intrinsic), four rows per pass (one per
  pass for a single token on AMD CPUs: ``one_row_gemv``). The weights are read once per call, 2 bytes per
  entry, and written nowhere: 24-30 GB/s on an Intel Xeon, 44-49 on an AMD Zen 5, about the speed of the
  memory. NumPy twin: ``gemv_numpy`` (widen a block of rows into a buffer, BLAS GEMV; the same products).
  ``linear_rows`` is the same over a list of rows (``gather_*``; twin ``gather_numpy``); ``linear_columns``
  over a list of columns, read as rows of the matrix's transpose (``BF16Weight.columns``, made once;
  ``columns_*``; twin ``columns_numpy``).
* **many rows, each its own few entries** (a prompt on a sparse MLP layer): ``linear_masked`` computes only
  the (token, output) pairs a mask keeps, each weight row with the tokens that keep it (``masked_*``);
  ``linear_nonzero`` takes each token's product from its nonzero inputs only, reading their rows of the
  transpose (``nonzero_*``). Twins ``masked_numpy`` / ``nonzero_numpy``: the whole product (``blocked``), then
  the mask; the zero inputs multiply their columns to nothing.
* **many rows** (prefill): with numba, ``_gemm_kernels.gemm_parallel``: groups of 64 tokens, transposed
  once, meet blocks of 48 weight rows per thread in 6-row x 64-token tiles, an outer product per input
  (the six weights widened and broadcast, 24 vector accumulators in registers); the last N % 64 tokens and
  out % 6 rows take 4 x 4 dot-product tiles (``gemm_rest``). 310-340 GFLOP/s on a 2-core AMD Zen 5 (the 4 x 4
  tiles alone 245-260, OpenBLAS's float32 sgemm 190-246). NumPy twin ``blocked``: blocks of
  ``BLOCK_ROWS`` weight rows widened into a reusable float32 buffer (a NumPy shift) and multiplied by BLAS,
  one GEMM per block.

Results: the widened values are exact, so only the order of the float32 sums differs from
``x @ float32(W).T``. The GEMV kernel's sum is vectorised by the compiler (reassociated); BLAS orders its
sums its own way; both are float32 accumulations of the same products (relative differences of a few 1e-7,
see tests/test_bf16.py for the stated tolerance).

Selection (``accel.mode()``, read per call): numba available and not ``MINIG3N_ACCEL=numpy`` -> the numba
kernels; else the NumPy twins. float64 inputs never come here with a BF16 weight from a ``Checkpoint``
(float64 mode widens every tensor as before); if they do, the weight is widened whole to float64 (exact).

Source: the BF16 format (the upper half of an IEEE float32); ``torch.bfloat16 -> float32`` is the same shift.
Left out: BF16 activations (compute stays float32), quantised weights, weights that are not 2-D.
"""
from __future__ import annotations

import functools
import mmap
import threading

import numpy as np

from . import accel

GEMV_ROWS = 8            # up to this many tokens: the GEMV kernel (reads the weights once for all of them)
SERIAL_SIZE = 1 << 17    # matrices up to this many entries (256 KiB of BF16) run the GEMV on one thread
#   (with numba's OpenMP layer a parallel call costs a few us: 512 x 2048 took 98 us on 2 threads against 182 on
#   one, 64 x 2048 23 against 20, 4 x 2048 3.6 against 1.9)
BLOCK_ROWS = 1024        # weight rows widened per BLAS call in the blocked path (1024 x 2048 x 4 B = 8 MiB)


class BF16Weight:
    """A read-only 2-D BF16 matrix as stored: ``bits`` (uint16 [out, in]) and ``shape``. Widened only inside
    ``linear``; ``np.asarray(w)`` / ``w.astype(float32)`` give the whole matrix widened (exact), for code
    that needs a plain array. ``columns()``: the same bits stored column by column (made once, on request)."""

    __slots__ = ("bits", "shape", "_columns", "_lock")
    ndim = 2

    def __init__(self, bits: np.ndarray):
        if bits.dtype != np.uint16 or bits.ndim != 2:
            raise ValueError(f"BF16Weight needs 2-D uint16 bit patterns, got {bits.dtype} {list(bits.shape)}")
        self.bits, self.shape = bits, tuple(bits.shape)
        self._columns, self._lock = None, threading.Lock()

    def columns(self, serial: bool = False) -> np.ndarray:
        """The matrix stored column by column: its transpose, uint16 [in, out], C-contiguous, read-only. Made
        on the first call and kept (a copy: the matrix's bytes once more, in anonymous memory), so that
        ``linear_columns`` reads a column of W as one contiguous row. numba: ``_bf16_kernels.transpose``
        (tiled; ``serial``: ``transpose_serial``, on the calling thread only); NumPy twin:
        ``np.ascontiguousarray(bits.T)``. A second thread asking while the copy is being made waits for it
        (``prepare_columns_behind`` makes copies on a background thread)."""
        with self._lock:
            if self._columns is None:
                if accel.mode() == "numba":
                    t = plain_pages(self.shape[::-1], np.uint16)
                    k = _kernels()
                    (k.transpose_serial if serial else k.transpose)(self.bits, t)
                else:
                    t = np.ascontiguousarray(self.bits.T)
                t.flags.writeable = False
                self._columns = t
            return self._columns

    @property
    def dtype(self):
        return np.dtype(np.float32)          # what it widens to

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes

    def astype(self, dtype, copy=True):
        return widen(self.bits).astype(dtype, copy=False)

    def __array__(self, dtype=None, copy=None):
        out = widen(self.bits)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self):
        return f"BF16Weight{list(self.shape)}"


def widen(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint16 BF16 bits -> float32, exactly (into ``out``, a float32 array of the same shape, if given)."""
    if out is None:
        return (bits.astype(np.uint32) << 16).view(np.float32)
    np.left_shift(bits, 16, out=out.view(np.uint32), dtype=np.uint32)
    return out


def linear(x: np.ndarray, w: BF16Weight) -> np.ndarray:
    """``x W^T`` for a BF16 weight [out, in].   [..., in] -> [..., out] float32 (x float32)."""
    if x.dtype != np.float32:                            # float64: exact widening, then as before
        return x @ widen(w.bits).astype(x.dtype).T
    lead, I = x.shape[:-1], x.shape[-1]
    O = w.shape[0]
    if I != w.shape[1]:
        raise ValueError(f"linear: input width {I} does not match the weight's {list(w.shape)}")
    x2 = np.ascontiguousarray(x.reshape(-1, I))          # [N, in]
    numba = accel.mode() == "numba"
    if x2.shape[0] <= GEMV_ROWS:
        y = gemv_numba(x2, w.bits) if numba else gemv_numpy(x2, w.bits)
    else:
        y = gemm_numba(x2, w.bits) if numba else blocked(x2, w.bits)
    return y.reshape(*lead, O)


def linear_rows(x: np.ndarray, w: BF16Weight, rows: np.ndarray) -> np.ndarray:
    """``x W[rows]^T``: the outputs of the listed weight rows only, reading only those rows.
    [..., in], [out, in], [R] int -> [..., R] float32 (x float32). Used by ``mlp`` for the up projection of
    the units the sparse gate kept. numba: ``_bf16_kernels.gather_*``; NumPy twin: ``gather_numpy``."""
    if x.dtype != np.float32:
        return x @ widen(w.bits[rows]).astype(x.dtype).T
    lead, I = x.shape[:-1], x.shape[-1]
    x2 = np.ascontiguousarray(x.reshape(-1, I))          # [N, in]
    rows = np.ascontiguousarray(rows, dtype=np.int64)     # [R]
    if accel.mode() == "numba":
        y = np.empty((x2.shape[0], len(rows)), dtype=np.float32)
        k = _kernels()
        (k.gather_serial if len(rows) * I <= SERIAL_SIZE else k.gather_parallel)(x2, w.bits, rows, y)
    else:
        y = gather_numpy(x2, w.bits, rows)
    return y.reshape(*lead, len(rows))


def linear_columns(x: np.ndarray, w: BF16Weight, cols: np.ndarray) -> np.ndarray:
    """``x W[:, cols]^T``: the product with the listed columns of W only, ``x`` holding the inputs of just
    those columns.   [..., K], [out, in], [K] int -> [..., out] float32 (x float32). Used by ``mlp`` for the
    down projection of the units the sparse gate kept. A column of W is strided (one value in each row: a few
    hundred scattered columns touch nearly every cache line of W), so the columns are read as rows of
    ``w.columns()``, W's transpose, made on the first call. numba: ``_bf16_kernels.columns_*``; NumPy twin:
    ``columns_numpy``."""
    if x.dtype != np.float32:
        return x @ widen(w.bits[:, cols]).astype(x.dtype).T
    lead, K = x.shape[:-1], x.shape[-1]
    cols = np.ascontiguousarray(cols, dtype=np.int64)     # [K]
    if len(cols) != K:
        raise ValueError(f"linear_columns: {K} inputs for {len(cols)} listed columns")
    x2 = np.ascontiguousarray(x.reshape(int(np.prod(lead)), K))  # [N, K] (K may be 0: no unit kept)
    bits_t = w.columns()                                  # [in, out]
    if accel.mode() == "numba":
        y = np.empty((x2.shape[0], w.shape[0]), dtype=np.float32)
        k = _kernels()
        if K * w.shape[0] <= SERIAL_SIZE:
            k.columns_serial(x2, bits_t, cols, y)
        else:
            k.columns_parallel(x2, bits_t, cols, y, k.numba.get_num_threads())
    else:
        y = columns_numpy(x2, bits_t, cols)
    return y.reshape(*lead, w.shape[0])


def linear_masked(x: np.ndarray, w: BF16Weight, keep: np.ndarray) -> np.ndarray:
    """``x W^T`` at the (token, output) pairs ``keep`` marks, zeros at the others: each weight row read once,
    multiplied only with the tokens that keep it.   [..., in], [out, in], [..., out] bool -> [..., out] float32
    (x float32). Used by ``mlp`` for a prompt's up projection on a sparse layer (each token keeps its own
    few units). numba: ``_bf16_kernels.masked_*``; NumPy twin: ``masked_numpy``."""
    lead, I = x.shape[:-1], x.shape[-1]
    if keep.shape != (*lead, w.shape[0]):
        raise ValueError(f"linear_masked: keep has shape {list(keep.shape)}, expected {[*lead, w.shape[0]]}")
    if x.dtype != np.float32:
        return np.where(keep, x @ widen(w.bits).astype(x.dtype).T, x.dtype.type(0.0))
    x2 = np.ascontiguousarray(x.reshape(-1, I))                        # [N, in]
    keep2 = keep.reshape(x2.shape[0], w.shape[0])                      # [N, out]
    if accel.mode() == "numba":
        y = np.zeros((x2.shape[0], w.shape[0]), dtype=np.float32)
        _kernels().masked_parallel(x2, w.bits, np.ascontiguousarray(keep2), y)
    else:
        y = masked_numpy(x2, w.bits, keep2)
    return y.reshape(*lead, w.shape[0])


def linear_nonzero(x: np.ndarray, w: BF16Weight) -> np.ndarray:
    """``x W^T`` reading, for each token, only the columns of W whose input is not zero (a zero input adds
    nothing).   [..., in], [out, in] -> [..., out] float32 (x float32). Used by ``mlp`` for a prompt's down
    projection on a sparse layer. The columns are read as rows of ``w.columns()`` (made on the first call).
    numba: ``_bf16_kernels.nonzero_*``; NumPy twin: ``nonzero_numpy``."""
    lead, I = x.shape[:-1], x.shape[-1]
    if I != w.shape[1]:
        raise ValueError(f"linear_nonzero: input width {I} does not match the weight's {list(w.shape)}")
    if x.dtype != np.float32:
        return x @ widen(w.bits).astype(x.dtype).T
    x2 = np.ascontiguousarray(x.reshape(-1, I))                        # [N, in]
    if accel.mode() == "numba":
        y = np.empty((x2.shape[0], w.shape[0]), dtype=np.float32)
        _kernels().nonzero_parallel(x2, w.columns(), y)
    else:
        y = nonzero_numpy(x2, w.bits)
    return y.reshape(*lead, w.shape[0])


def masked_numpy(x: np.ndarray, bits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """NumPy twin of the masked kernel: the whole product (``blocked``), then zeros where ``keep`` is False.
    [N, in] float32, [out, in] uint16, [N, out] bool -> [N, out]"""
    return np.where(keep, blocked(x, bits), np.float32(0.0))


def nonzero_numpy(x: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """NumPy twin of the nonzero kernel: the whole product (``blocked``; the zero inputs multiply their columns
    to nothing).   [N, in] float32, [out, in] uint16 -> [N, out]"""
    return blocked(x, bits)


def columns_numpy(x: np.ndarray, bits_t: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """NumPy twin of the columns kernel: the listed rows of the transpose copied out, widened, one BLAS
    product.   [N, K] float32, [in, out] uint16, [K] -> [N, out]"""
    return x @ widen(bits_t[cols])


def gather_numpy(x: np.ndarray, bits: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """NumPy twin of the gather kernel: the listed rows copied out, widened, one BLAS product.
    [N, in] float32, [out, in] uint16, [R] -> [N, R]"""
    return x @ widen(bits[rows]).T


# GEMV (decode) ---------------------------------------------------------------------------------------------
def gemv_numpy(x: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """NumPy twin of the GEMV kernel: ``x @ widen(bits).T`` one block of rows at a time (nothing whole is
    widened).   [N, in], [out, in] -> [N, out]"""
    return blocked(x, bits)


def gemv_numba(x: np.ndarray, bits: np.ndarray, one_row: bool | None = None) -> np.ndarray:
    """The compiled GEMV (output rows split over the threads for big matrices). ``one_row``: one weight row
    per pass instead of four (default: ``one_row_gemv()`` for one or two tokens; the same outputs either way).
    [N, in] float32, [out, in] uint16 -> [N, out]"""
    if one_row is None:
        one_row = x.shape[0] <= 2 and one_row_gemv()
    y = np.empty((x.shape[0], bits.shape[0]), dtype=np.float32)
    k = _kernels()
    (k.gemv_serial if bits.size <= SERIAL_SIZE else k.gemv_parallel)(x, bits, y, one_row)   # small: one thread
    return y


@functools.cache
def one_row_gemv(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True on AMD CPUs (``AuthenticAMD`` at the start of ``cpuinfo``), where the decode GEMV streams faster one
    weight row per pass (Zen 5: 44-49 against 32-41 GB/s); elsewhere, or without that file, four rows per pass
    (Intel Xeon: 24-30 against 15-18 GB/s with one). Only two CPUs measured (``_bf16_kernels.gemv_rows``);
    either choice gives the same numbers, only the speed differs."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            return "AuthenticAMD" in f.read(4096)
    except OSError:
        return False


def gemm_numba(x: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The compiled many-token product (prefill): ``_gemm_kernels.gemm_parallel``; NumPy twin ``blocked``.
    [N, in] float32, [out, in] uint16 (or float32: ``accel.linear``) -> [N, out]"""
    y = np.empty((x.shape[0], bits.shape[0]), dtype=np.float32)
    _kernels()                                           # numba importable (ConfigError if not)
    from . import _gemm_kernels
    _gemm_kernels.gemm_parallel(x, bits, y)
    return y


# Blocked: widen a block of rows, BLAS GEMM (prefill) ------------------------------------------------------
_scratch: dict = {}      # reusable float32 block buffers, by width (a cache of scratch space, not state)


def _buffer(rows: int, width: int) -> np.ndarray:
    buf = _scratch.get(width)
    if buf is None or buf.shape[0] < rows:
        buf = _scratch[width] = np.empty((rows, width), dtype=np.float32)
    return buf[:rows]


def blocked(x: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """``x @ widen(bits).T`` widening ``BLOCK_ROWS`` weight rows at a time into one reusable buffer.
    [N, in] float32, [out, in] uint16 -> [N, out]. The same code with or without numba: a parallel numba
    widening loop measured slower than NumPy's shift here (834 ms against 570 ms for a T=128 8192 x 2048
    product, same minute) -- its threads and OpenBLAS's fight over the two cores. (With numba, ``linear``
    uses ``gemm_numba`` instead, which does not call BLAS at all.)"""
    O, I = bits.shape
    y = np.empty((x.shape[0], O), dtype=np.float32)
    rows = max(1, min(O, BLOCK_ROWS * 2048 // max(I, 1)))          # about 8 MiB of float32 per block
    for o0 in range(0, O, rows):
        o1 = min(O, o0 + rows)
        buf = _buffer(o1 - o0, I)
        widen(bits[o0:o1], buf)          # NumPy's shift: a compiled one was slower (tests/bench/README.md)
        np.matmul(x, buf.T, out=y[:, o0:o1])
    return y


def plain_pages(shape, dtype) -> np.ndarray:
    """An uninitialised array in an anonymous memory map of its own, in ordinary 4 KiB pages.

    ``np.empty`` asks the kernel for huge pages for any array of 4 MiB or more (``madvise(MADV_HUGEPAGE)``).
    Where the kernel compacts memory to find them on the spot (``/sys/kernel/mm/transparent_hugepage/defrag``
    = ``madvise``, a common default) and free memory is fragmented, which it is right after a checkpoint of a
    few GB was read into the page cache, the first write to such an array stalls: here 32 MiB took 80-160 ms
    against 12 ms in plain pages. Used for the weights' column copies (``BF16Weight.columns``)."""
    count = int(np.prod(shape))
    buf = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize))   # zero-filled on first touch, page by page
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


def prepare_columns_behind(get, names) -> threading.Thread:
    """Make the column-by-column copies (``BF16Weight.columns``) of the weights ``names`` on a background
    thread, in order, each as soon as ``get(name)`` hands the weight out (``Checkpoint.get``: once the
    background reader has read it). Returns the thread (a daemon).

    ``decoder.load_text_model`` passes the sparse MLP layers' down projections, which a prompt
    (``linear_nonzero``) and every decode step (``linear_columns``) read column by column. The copies are
    then made beside the reader while the forward pass works through its first layers, not inside the first
    prefill (E2B, 10 copies of 32 MiB: 55-100 ms each on this thread, done before the forward pass reaches
    layer 2; inside the first prefill, in huge pages, they had taken 0.9 s of it: tests/bench/README.md).
    A forward pass that needs a copy first waits for it (the weight's lock) or makes it itself. An error
    ends the thread quietly: the forward pass's own ``columns()`` call meets it and reports it."""
    def run():
        try:
            for name in names:
                w = get(name)
                if isinstance(w, BF16Weight):
                    w.columns(serial=True)        # no prange: the forward pass owns numba's thread pool
        except Exception:                        # noqa: BLE001 - reported by the forward pass (above)
            return

    thread = threading.Thread(target=run, name="minig3n-columns", daemon=True)
    thread.start()
    return thread


# numba plumbing ------------------------------------------------------------------------------------------
def _kernels():
    """minig3n._bf16_kernels (imports numba; ConfigError if it cannot be imported)."""
    if not accel._import_numba():
        from .errors import ConfigError
        raise ConfigError(accel._NO_NUMBA)
    from . import _bf16_kernels
    return _bf16_kernels


def load_kernels() -> None:
    """Import numba and load (or compile) the kernels for the argument types a checkpoint's matrices give
    (read-only uint16 bits), by running each once on a tiny input. ``decoder.load_text_model`` calls it
    before it starts reading the weights in the background: on a cold start, numba's imports and its cache
    lookups (about 900 ``stat`` calls) queued behind that reading took 2-3 s of the first prefill."""
    k = _kernels()
    bits = np.zeros((8, 16), np.uint16)
    bits.flags.writeable = False                       # as the memory map's views are
    x, y = np.zeros((1, 16), np.float32), np.empty((1, 8), np.float32)
    k.gemv_serial(x, bits, y, one_row_gemv())
    k.gemv_parallel(x, bits, y, one_row_gemv())
    gemm_numba(np.zeros((GEMV_ROWS + 1, 16), np.float32), bits)       # the prefill products (_gemm_kernels)
    x, y, picked = np.zeros((1, 16), np.float32), np.empty((1, 4), np.float32), np.arange(4)
    k.gather_serial(x, bits, picked, y)                 # the sparse MLP's kernels (mlp.py), as it calls them
    k.gather_parallel(x, bits, picked, y)
    w = BF16Weight(bits)
    linear_columns(np.zeros((1, 4), np.float32), w, picked)                  # transpose + columns_serial
    BF16Weight(bits).columns(serial=True)                                    # transpose_serial
    k.columns_parallel(np.zeros((1, 4), np.float32), w.columns(), picked, np.empty((1, 8), np.float32), 1)
    x, y = np.zeros((2, 16), np.float32), np.zeros((2, 8), np.float32)
    k.masked_parallel(x, bits, np.zeros((2, 8), np.bool_), y)             # a prompt's sparse MLP (mlp.py)
    k.nonzero_parallel(np.zeros((2, 16), np.float32), w.columns(), np.empty((2, 8), np.float32))
    q = np.zeros((1, 2, 2, 8), np.float32)                                  # a prompt's attention (attention.py)
    accel.gqa_attention(q, q[:, :, :1], q[:, :, :1], np.ones((1, 2, 2), np.bool_))
