"""The compiled kernels of ``bf16`` (a private module: imported only when numba is, on the first BF16 product).

Each kernel has its NumPy twin in ``bf16`` (``gemv_numpy``, ``blocked``, ``widen``); tests/test_bf16.py checks
they agree.

``widen1`` is the one piece numba does not have: a *scalar* bit cast (``uint16`` BF16 bits -> zero-extend to
32 bits -> shift left 16 -> reinterpret as float32), written as a numba intrinsic in four LLVM instructions.
With it the GEMV's inner loop is ``s += widen1(bits[o, i]) * x[n, i]``, which LLVM vectorises into
``vpmovzxwd`` (16 BF16 values from memory, widened) + ``vpslld`` + ``vfmadd231ps``: the weights are read once,
2 bytes each, and never written anywhere. The GEMV takes four weight rows per pass (``_dot4``: four
accumulators, four weight streams, each x value loaded once) or, for one or two tokens on CPUs where that
streams faster, one (``gemv_rows``). (The kernel before widened each row into a uint32
buffer, then took the dot product from the buffer: two loops per row, 8-17 GB/s, below the memory's 30+ GB/s.)
``gather_*`` is the same GEMV over a list of rows (the sparse MLP's up projection, ``mlp.py``); ``columns_*``
the product with a list of columns, read from the transpose; ``masked_*`` and ``nonzero_*`` the same two for
a prompt, where each token keeps its own units. The prefill products are in ``_gemm_kernels``.

Threads: ``prange`` over blocks of output rows, numba's thread count (``NUMBA_NUM_THREADS``, default the
number of cores). Threading layer: numba's own choice (tbb, then OpenMP, then workqueue) unless
``NUMBA_THREADING_LAYER`` says otherwise. A decode step makes about 160 parallel calls of 0.1-2 ms each, so
the cost of starting one matters: an empty ``prange`` call took 1.5 us with the OpenMP layer and 100-180 us
with workqueue (quiet machine, 2 threads), and the 8192 x 2048 GEMV streamed 32 against 24-27 GB/s.
(On a machine loaded by other jobs, OpenMP's spinning waits can cost more than workqueue's sleeping ones;
set ``NUMBA_THREADING_LAYER=workqueue`` there.)
"""
import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

_FAST = {"reassoc", "contract"}     # lets LLVM vectorise the float32 dot product (order not sequential)


@intrinsic
def widen1(typingctx, b):
    """One BF16 value (its uint16 bits) -> float32, exactly: ``float32 bits = uint32(b) << 16``. A float32
    value comes back as it is, so the same kernels also serve float32 weights (``_gemm_kernels.gemm_parallel``
    for ``accel.linear``: the audio encoder's products)."""
    if b == types.float32:
        return types.float32(types.float32), lambda context, builder, signature, args: args[0]
    if b != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        v = builder.zext(args[0], ir.IntType(32))
        v = builder.shl(v, ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(v, ir.FloatType())
    return types.float32(types.uint16), codegen


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _dot(x, bits, n, r):
    """sum_i x[n, i] * widen1(bits[r, i]), float32 (vectorised)."""
    s = np.float32(0.0)
    for i in range(x.shape[1]):
        s += x[n, i] * widen1(bits[r, i])
    return s


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _dot4(x, n, bits, r0, r1, r2, r3):
    """The dot products of token ``x[n]`` with weight rows r0..r3 in one pass over ``in``: four float32
    accumulators, four streams of weights read at once, each x value loaded once for the four (vectorised)."""
    s0 = s1 = s2 = s3 = np.float32(0.0)
    for i in range(x.shape[1]):
        xi = x[n, i]
        s0 += widen1(bits[r0, i]) * xi
        s1 += widen1(bits[r1, i]) * xi
        s2 += widen1(bits[r2, i]) * xi
        s3 += widen1(bits[r3, i]) * xi
    return s0, s1, s2, s3


@numba.njit(cache=True, nogil=True, inline="always")
def _block_step(n, blocks, multiple):
    """Items per block when ``n`` items are cut into ``blocks`` blocks of a whole number of ``multiple``s
    (the last block may be short or, for small n, empty: callers skip blocks that start at or past n)."""
    return ((n + blocks - 1) // blocks + multiple - 1) // multiple * multiple


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def gemv_rows(x, bits, y, o0, o1, one_row):
    """y[n, o] = sum_i widen1(bits[o, i]) * x[n, i] for o in [o0, o1), float32 sums (vectorised).

    ``one_row`` False: four weight rows per pass (``_dot4``); True: one row per pass (``_dot``), a single
    stream of weights. Which is faster depends on the CPU (``bf16.one_row_gemv`` picks; 2 threads, E2B's
    shapes): on an Intel Xeon one row streamed 15-18 GB/s and four 24-30 (NumPy's float32 GEMV: 27); on an
    AMD Zen 5 one row 44-49 GB/s and four 32-41 (37 against 27 on one thread; NumPy: 48-51). Eight rows were
    no better than four. From three tokens on, four rows per pass are faster on both (Zen 5, 4 tokens: 26
    against 17 GB/s), so ``one_row`` is only passed for one or two. The sums are the same either way: ``_dot``
    and ``_dot4`` vectorise each row's sum alike (bit-identical outputs, tests/test_bf16.py)."""
    o = o0
    while not one_row and o + 4 <= o1:
        for n in range(x.shape[0]):
            y[n, o], y[n, o + 1], y[n, o + 2], y[n, o + 3] = _dot4(x, n, bits, o, o + 1, o + 2, o + 3)
        o += 4
    for r in range(o, o1):                             # one row at a time: every row, or the ragged rest
        for n in range(x.shape[0]):
            y[n, r] = _dot(x, bits, n, r)


@numba.njit(cache=True, nogil=True)
def gemv_serial(x, bits, y, one_row):
    """The whole GEMV on the calling thread (small matrices: waking the others costs more)."""
    gemv_rows(x, bits, y, 0, bits.shape[0], one_row)


@numba.njit(cache=True, nogil=True, parallel=True)
def gemv_parallel(x, bits, y, one_row):
    """The GEMV with the output rows cut into 64 blocks (multiples of 4 rows) shared out over the threads."""
    O = bits.shape[0]
    blocks = min(O, 64)
    step = _block_step(O, blocks, 4)
    for b in numba.prange(blocks):
        if b * step < O:
            gemv_rows(x, bits, y, b * step, min(O, (b + 1) * step), one_row)


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def gather_rows(x, bits, rows, y, k0, k1):
    """y[n, k] = sum_i widen1(bits[rows[k], i]) * x[n, i] for k in [k0, k1): the GEMV of the listed weight
    rows only (the MLP's up projection of the units the sparse gate kept, ``mlp.py``)."""
    k = k0
    while k + 4 <= k1:
        for n in range(x.shape[0]):
            y[n, k], y[n, k + 1], y[n, k + 2], y[n, k + 3] = _dot4(x, n, bits, rows[k], rows[k + 1],
                                                                   rows[k + 2], rows[k + 3])
        k += 4
    for j in range(k, k1):
        for n in range(x.shape[0]):
            y[n, j] = _dot(x, bits, n, rows[j])


@numba.njit(cache=True, nogil=True)
def gather_serial(x, bits, rows, y):
    gather_rows(x, bits, rows, y, 0, rows.shape[0])


@numba.njit(cache=True, nogil=True, parallel=True)
def gather_parallel(x, bits, rows, y):
    """``gather_rows`` with the listed rows cut into 16 blocks shared out over the threads."""
    K = rows.shape[0]
    blocks = min(K, 16)
    step = _block_step(K, blocks, 4)
    for b in numba.prange(blocks):
        if b * step < K:
            gather_rows(x, bits, rows, y, b * step, min(K, (b + 1) * step))


ADD_CHUNK = 64     # listed rows summed into a fresh partial before it is added to the total (_add_rows)


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _add_rows(acc, part, vals, bits_t, cols, K, h0):
    """acc[j] = sum_k vals[k] * widen1(bits_t[cols[k], h0 + j]) over the first K listed rows, j over acc. Four
    listed rows per pass (four contiguous runs of ``bits_t`` in flight at once, widened and multiply-added
    into ``part``, which stays in L1; vectorised over j). Two-level sum: each ``ADD_CHUNK`` rows go into a
    fresh ``part``, added to ``acc`` at the end of the chunk, so a long list (a dense input of 8192 values)
    is not one sequential float32 sum (2048 x 8192, all inputs nonzero: 3.1e-6 relative that way, 2.3e-7 in
    two levels)."""
    W = acc.shape[0]
    acc[:] = 0.0
    for c0 in range(0, K, ADD_CHUNK):
        c1 = min(K, c0 + ADD_CHUNK)
        part[:] = 0.0
        k = c0
        while k + 4 <= c1:
            x0, x1, x2, x3 = vals[k], vals[k + 1], vals[k + 2], vals[k + 3]
            r0, r1 = bits_t[cols[k], h0:h0 + W], bits_t[cols[k + 1], h0:h0 + W]
            r2, r3 = bits_t[cols[k + 2], h0:h0 + W], bits_t[cols[k + 3], h0:h0 + W]
            for j in range(W):
                part[j] += (x0 * widen1(r0[j]) + x1 * widen1(r1[j])) + (x2 * widen1(r2[j]) + x3 * widen1(r3[j]))
            k += 4
        for m in range(k, c1):                             # the ragged rest: one row at a time
            xm, r = vals[m], bits_t[cols[m], h0:h0 + W]
            for j in range(W):
                part[j] += xm * widen1(r[j])
        for j in range(W):
            acc[j] += part[j]


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def columns_rows(x, bits_t, cols, y, h0, h1):
    """y[n, h] = sum_k x[n, k] * widen1(bits_t[cols[k], h]) for h in [h0, h1): the product with the listed
    columns of W, read as rows of its transpose ``bits_t`` [in, out] (W's own columns are strided), through
    ``_add_rows``. Measured (410 of 8192 rows, out = 2048, 2 threads): 99 us, against 142 us one row per pass
    and 470 us adding into ``y`` directly."""
    acc, part = np.empty(h1 - h0, np.float32), np.empty(h1 - h0, np.float32)
    for n in range(x.shape[0]):
        _add_rows(acc, part, x[n], bits_t, cols, cols.shape[0], h0)
        y[n, h0:h1] = acc


@numba.njit(cache=True, nogil=True)
def columns_serial(x, bits_t, cols, y):
    columns_rows(x, bits_t, cols, y, 0, bits_t.shape[1])


@numba.njit(cache=True, nogil=True, parallel=True)
def columns_parallel(x, bits_t, cols, y, blocks):
    """``columns_rows`` with the outputs cut into ``blocks`` blocks (multiples of 16; the caller passes the
    thread count): each thread reads its part of every listed row. (Eight blocks on two threads, 512 bytes
    per row each, were 2x slower: the scattered rows' reads are latency-bound, and a longer run per row
    keeps more of the memory busy.)"""
    H = bits_t.shape[1]
    blocks = max(1, min(blocks, H // 64))
    step = _block_step(H, blocks, 16)
    for b in numba.prange(blocks):
        if b * step < H:
            columns_rows(x, bits_t, cols, y, b * step, min(H, (b + 1) * step))


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def nonzero_rows(x, bits_t, y, n0, n1):
    """y[n] = sum over the k with x[n, k] != 0 of x[n, k] * widen1(bits_t[k]) for the tokens n in [n0, n1): the
    product ``x W^T`` read from W's transpose ``bits_t`` [in, out], skipping every zero input (a zero adds
    nothing). Per token: its nonzero inputs listed, then ``_add_rows`` over the whole output. The prompt's
    down projection on a sparse layer, where each token keeps its own 5 % of the units (``mlp.py``)."""
    I, H = bits_t.shape
    acc, part = np.empty(H, np.float32), np.empty(H, np.float32)
    cols = np.empty(I, np.int64)
    vals = np.empty(I, np.float32)
    for n in range(n0, n1):
        c = 0
        for k in range(I):
            if x[n, k] != 0:
                cols[c], vals[c] = k, x[n, k]
                c += 1
        _add_rows(acc, part, vals, bits_t, cols, c, 0)
        y[n] = acc


@numba.njit(cache=True, nogil=True, parallel=True)
def nonzero_parallel(x, bits_t, y):
    """``nonzero_rows`` with the tokens cut into blocks (up to 64) shared out over the threads."""
    N = x.shape[0]
    blocks = min(N, 64)
    step = _block_step(N, blocks, 1)
    for b in numba.prange(blocks):
        if b * step < N:
            nonzero_rows(x, bits_t, y, b * step, min(N, (b + 1) * step))


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _dot4_tokens(x, n0, n1, n2, n3, bits, r):
    """The dot products of weight row r with tokens n0..n3 in one pass: each weight value loaded and widened
    once for the four (vectorised)."""
    s0 = s1 = s2 = s3 = np.float32(0.0)
    for i in range(x.shape[1]):
        w = widen1(bits[r, i])
        s0 += x[n0, i] * w
        s1 += x[n1, i] * w
        s2 += x[n2, i] * w
        s3 += x[n3, i] * w
    return s0, s1, s2, s3


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def masked_rows(x, bits, keep, y, u0, u1):
    """y[n, u] = sum_i x[n, i] * widen1(bits[u, i]) where keep[n, u], for the weight rows u in [u0, u1); the
    other entries of y are not written. Row by row: the tokens that keep it listed, then their dot products
    four tokens per pass (``_dot4_tokens``), so each row is read once however many tokens keep it. The
    prompt's up projection on a sparse layer (``mlp.py``). ``keep`` is read down its columns (a thread's
    block of rows touches the same few cache lines of each token's mask): 4.2 ms per 8192 x 2048 layer at 128
    tokens, against 5.2 ms with the mask first transposed to [out, N] by NumPy."""
    N = x.shape[0]
    picked = np.empty(N, np.int64)
    for u in range(u0, u1):
        c = 0
        for n in range(N):
            if keep[n, u]:
                picked[c] = n
                c += 1
        j = 0
        while j + 4 <= c:
            n0, n1, n2, n3 = picked[j], picked[j + 1], picked[j + 2], picked[j + 3]
            y[n0, u], y[n1, u], y[n2, u], y[n3, u] = _dot4_tokens(x, n0, n1, n2, n3, bits, u)
            j += 4
        for m in range(j, c):                              # the ragged rest: one token at a time
            y[picked[m], u] = _dot(x, bits, picked[m], u)


@numba.njit(cache=True, nogil=True, parallel=True)
def masked_parallel(x, bits, keep, y):
    """``masked_rows`` with the weight rows cut into 64 blocks shared out over the threads."""
    U = bits.shape[0]
    blocks = min(U, 64)
    step = _block_step(U, blocks, 1)
    for b in numba.prange(blocks):
        if b * step < U:
            masked_rows(x, bits, keep, y, b * step, min(U, (b + 1) * step))


@numba.njit(cache=True, nogil=True, inline="always")
def _transpose_band(bits, out, b):
    """out[i, o] = bits[o, i] for the 64 columns i of band ``b``, read in 64 x 64 tiles (the tile's 64 row
    pieces stay in L1) and written as contiguous runs of 64 values."""
    O, I = bits.shape
    i0, i1 = b * 64, min(I, b * 64 + 64)
    for o0 in range(0, O, 64):
        o1 = min(O, o0 + 64)
        for i in range(i0, i1):
            for o in range(o0, o1):
                out[i, o] = bits[o, i]


@numba.njit(cache=True, nogil=True, parallel=True)
def transpose(bits, out):
    """out[i, o] = bits[o, i]: bands of 64 columns of ``bits`` shared out over the threads. 2048 x 8192 from the
    memory map into memory already touched: 15-20 ms here, against 38 ms with the tile written column by
    column and 140-190 ms for NumPy's ``ascontiguousarray(bits.T)``."""
    for b in numba.prange((bits.shape[1] + 63) // 64):
        _transpose_band(bits, out, b)


@numba.njit(cache=True, nogil=True)
def transpose_serial(bits, out):
    """``transpose`` on the calling thread only (a background thread's: ``bf16.prepare_columns_behind``)."""
    for b in range((bits.shape[1] + 63) // 64):
        _transpose_band(bits, out, b)
