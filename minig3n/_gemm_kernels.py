"""The compiled many-token products (a private module, like ``_bf16_kernels``, whose ``widen1`` and ``_dot``
it uses), W BF16 bits (uint16) or float32:

* ``gemm_parallel``: x [N, in] times W [out, in]^T (the decoder's prefill, the audio encoder). NumPy twins:
  ``bf16.blocked`` (BF16) and ``x @ W.T`` (float32, ``accel.linear``); tests/test_bf16.py.
* ``gemm_channels_first``: W [out, in] times x [in, N], the pixels as tokens (the vision tower's convs,
  ``accel.matmul_channels_first``). Twin: ``np.matmul``; tests/test_tile_kernels.py.
* ``mqa_attention``: the vision tower's multi-query attention on the same tiles, with ``exp_nonpositive``.
  Twin: ``mobilenetv5.mobile_mqa``'s NumPy loop; tests/test_tile_kernels.py.
* ``gqa_attention``: the decoder's attention over a prompt, the same way, with its mask. Twin:
  ``attention.attend``; tests/test_tile_kernels.py.

The main tiles take an outer product per input k: six weights, widened and each broadcast, against 64 tokens
(four 16-wide vectors of a group of 64 tokens transposed once per call), 24 vector multiply-adds into 24
accumulators. They stay in registers because the tile's buffer is on the stack (``_tile_scratch``, an
``alloca``): numba's own arrays live on the heap, where LLVM cannot prove that they do not overlap the
inputs, so it would keep them in memory. The ragged edges take ``gemm_rest``'s 4 x 4 dot-product tiles.
"""
import numba
import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._bf16_kernels import _FAST, _dot, widen1

GEMM_ROWS, GEMM_TOKENS = 32, 16    # the rest's blocks (gemm_rest): 32 weight rows (one thread) x 16 tokens
TILE_ROWS, TILE_TOKENS = 6, 64     # prefill tiles (gemm_parallel): 6 weight rows x 64 tokens
TILE_BLOCK = 48                    # weight rows per thread's block: 8 tiles
PACK_GROUPS = 8                    # token groups transposed at a time (512 tokens: at most 16 MiB of float32)
SUM_BLOCK = 256                    # inputs summed in registers before they are added to the tile's total
K_CHUNK = 2048                     # inputs per pass over a block: its weights and a group's tokens stay in L2


@intrinsic
def _tile_scratch(typingctx):
    """A [TILE_ROWS * TILE_TOKENS] float32 buffer on the stack. Unlike an array numba allocates, it cannot
    alias any argument, so once its loops are unrolled LLVM keeps it in vector registers."""
    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.float32),
                                   size=TILE_ROWS * TILE_TOKENS)
    return types.CPointer(types.float32)(), codegen


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _tile6x64(xt, bits, r0, k0, k1, out, c0):
    """out[c0:c0+6, :] += widen(bits[r0:r0+6, k0:k1]) x_group[:, k0:k1]^T: six weight rows times a group of 64
    tokens, from their transpose ``xt`` [in, 64], over the inputs k0..k1 (``out`` [rows, 64]: vector adds).

    An outer product per input k: the six weights bits[r0:r0+6, k], widened and each broadcast, times the 64
    token values xt[k] (four 16-wide vectors): 24 vector multiply-adds into 24 accumulators that stay in
    registers for ``SUM_BLOCK`` inputs, then are added to the tile's total (two-level float32 sums: over
    2048 inputs 3.5e-7 relative to the float64 product, against 2.1e-6 in one running sum)."""
    part = numba.carray(_tile_scratch(), (TILE_ROWS, TILE_TOKENS))
    total = numba.carray(_tile_scratch(), (TILE_ROWS, TILE_TOKENS))
    for t in range(TILE_ROWS):
        for j in range(TILE_TOKENS):
            total[t, j] = 0.0
    w0, w1, w2, w3, w4, w5 = bits[r0], bits[r0 + 1], bits[r0 + 2], bits[r0 + 3], bits[r0 + 4], bits[r0 + 5]
    for s0 in range(k0, k1, SUM_BLOCK):
        for t in range(TILE_ROWS):
            for j in range(TILE_TOKENS):
                part[t, j] = 0.0
        for i in range(s0, min(k1, s0 + SUM_BLOCK)):
            k = np.uint64(i)                # unsigned: no negative-index wrap, so LLVM keeps the loop tight
            a0, a1, a2 = widen1(w0[k]), widen1(w1[k]), widen1(w2[k])
            a3, a4, a5 = widen1(w3[k]), widen1(w4[k]), widen1(w5[k])
            xk = xt[k]
            for j in range(TILE_TOKENS):
                v = xk[j]
                part[0, j] += a0 * v; part[1, j] += a1 * v; part[2, j] += a2 * v      # noqa: E702
                part[3, j] += a3 * v; part[4, j] += a4 * v; part[5, j] += a5 * v      # noqa: E702
        for t in range(TILE_ROWS):
            for j in range(TILE_TOKENS):
                total[t, j] += part[t, j]
    for t in range(TILE_ROWS):
        for j in range(TILE_TOKENS):
            out[c0 + t, j] += total[t, j]


@numba.njit(cache=True, nogil=True, fastmath=_FAST, parallel=True)
def gemm_parallel(x, bits, y):
    """y = x widen(bits)^T for many tokens (prefill), float32 sums; ``bits`` BF16 (uint16) or float32.

    Tokens in groups of ``TILE_TOKENS``, each group transposed once into ``xt`` [in, 64] (``PACK_GROUPS``
    groups at a time); blocks of ``TILE_BLOCK`` weight rows shared out over the threads. In a block, for each
    ``K_CHUNK`` inputs (so that the block's weights and a group's tokens over them stay in L2), every group
    meets the block's rows in 6-row x 64-token tiles (``_tile6x64``), adding into the block's output buffer;
    the buffer is copied into ``y`` in whole runs of its rows at the end. The ragged edges (the last N % 64
    tokens, the last O % 6 rows) go to ``gemm_rest``.
    Measured (2 threads, 128 tokens, E2B shapes, AMD Zen 5, calls alternating with ``gemm_rest``'s, medians
    of 15): 310-380 GFLOP/s against 245-300 for ``gemm_rest`` doing the whole product (the prefill kernel
    before these tiles); float32 weights (the audio encoder's shapes, 750 tokens) 380-400 against OpenBLAS's
    145-195. Per multiply-add a 6 x 64 tile loads 11 bytes (four 64-byte token vectors and six
    2-byte weights per 24), a 4 x 4 dot-product tile 24 (four token vectors, four of 16 weights, per 16)."""
    N, I = x.shape
    O = bits.shape[0]
    full_tokens = N - N % TILE_TOKENS
    full_rows = O - O % TILE_ROWS
    xt = np.empty((min(PACK_GROUPS, full_tokens // TILE_TOKENS), I, TILE_TOKENS), np.float32)
    for p0 in range(0, full_tokens, PACK_GROUPS * TILE_TOKENS):
        groups = min(PACK_GROUPS, (full_tokens - p0) // TILE_TOKENS)
        for g in numba.prange(groups):
            for j in range(TILE_TOKENS):
                for k in range(I):
                    xt[g, k, j] = x[p0 + g * TILE_TOKENS + j, k]
        for b in numba.prange((full_rows + TILE_BLOCK - 1) // TILE_BLOCK):
            o0, o1 = b * TILE_BLOCK, min(full_rows, (b + 1) * TILE_BLOCK)
            out = np.zeros((groups, TILE_BLOCK, TILE_TOKENS), np.float32)
            for k0 in range(0, I, K_CHUNK):
                for g in range(groups):
                    for r0 in range(o0, o1, TILE_ROWS):
                        _tile6x64(xt[g], bits, r0, k0, min(I, k0 + K_CHUNK), out[g], r0 - o0)
            for g in range(groups):
                n0 = p0 + g * TILE_TOKENS
                for j in range(TILE_TOKENS):     # whole runs of y's row: y's rows are O * 4 bytes apart, and a
                    y[n0 + j, o0:o1] = out[g, :o1 - o0, j]   # tile's 64 pieces of them thrashed the caches
    gemm_rest(x, bits, y, full_tokens, full_rows)


@numba.njit(cache=True, nogil=True, fastmath=_FAST, parallel=True)
def gemm_rest(x, bits, y, full_tokens, full_rows):
    """What ``gemm_parallel``'s tiles leave: every row for the tokens from ``full_tokens`` on, and the rows from
    ``full_rows`` on for the tokens before it. Blocks of ``GEMM_ROWS`` weight rows shared out over the
    threads; inside a block, groups of ``GEMM_TOKENS`` tokens meet 4-row x 4-token dot-product tiles
    (``_tile4x4``: 16 dot products in one pass over ``in``); ragged edges one dot product at a time. With
    ``full_tokens = full_rows = 0`` it is the whole product."""
    N, I = x.shape
    O = bits.shape[0]
    for b in numba.prange((O + GEMM_ROWS - 1) // GEMM_ROWS):
        o0, o1 = b * GEMM_ROWS, min(O, (b + 1) * GEMM_ROWS)
        for n0 in range(full_tokens, N, GEMM_TOKENS):
            n1 = min(N, n0 + GEMM_TOKENS)
            r = o0
            while r + 4 <= o1:
                n = n0
                while n + 4 <= n1:
                    _tile4x4(x, bits, y, n, r)
                    n += 4
                for m in range(n, n1):                                   # ragged tokens
                    for q in range(r, r + 4):
                        y[m, q] = _dot(x, bits, m, q)
                r += 4
            for q in range(r, o1):                                       # ragged rows
                for m in range(n0, n1):
                    y[m, q] = _dot(x, bits, m, q)
        for q in range(max(o0, full_rows), o1):                          # the tiles' ragged rows
            for m in range(full_tokens):
                y[m, q] = _dot(x, bits, m, q)


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _tile4x4(x, bits, y, n0, r0):
    """y[n0:n0+4, r0:r0+4] = x[n0:n0+4] widen(bits[r0:r0+4])^T: 16 float32 accumulators, one pass over in."""
    z = np.float32(0.0)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = z
    for i in range(x.shape[1]):
        a0, a1, a2, a3 = x[n0, i], x[n0 + 1, i], x[n0 + 2, i], x[n0 + 3, i]
        w0, w1 = widen1(bits[r0, i]), widen1(bits[r0 + 1, i])
        w2, w3 = widen1(bits[r0 + 2, i]), widen1(bits[r0 + 3, i])
        s00 += a0 * w0; s01 += a0 * w1; s02 += a0 * w2; s03 += a0 * w3      # noqa: E702
        s10 += a1 * w0; s11 += a1 * w1; s12 += a1 * w2; s13 += a1 * w3      # noqa: E702
        s20 += a2 * w0; s21 += a2 * w1; s22 += a2 * w2; s23 += a2 * w3      # noqa: E702
        s30 += a3 * w0; s31 += a3 * w1; s32 += a3 * w2; s33 += a3 * w3      # noqa: E702
    y[n0, r0], y[n0, r0 + 1], y[n0, r0 + 2], y[n0, r0 + 3] = s00, s01, s02, s03
    y[n0 + 1, r0], y[n0 + 1, r0 + 1], y[n0 + 1, r0 + 2], y[n0 + 1, r0 + 3] = s10, s11, s12, s13
    y[n0 + 2, r0], y[n0 + 2, r0 + 1], y[n0 + 2, r0 + 2], y[n0 + 2, r0 + 3] = s20, s21, s22, s23
    y[n0 + 3, r0], y[n0 + 3, r0 + 1], y[n0 + 3, r0 + 2], y[n0 + 3, r0 + 3] = s30, s31, s32, s33


CF_BLOCK = 24                      # gemm_channels_first: weight rows per block (a [24, 64] output buffer)
CF_ITEMS = 16                      # gemm_channels_first: split the rows until there are this many work items
CF_PACK, CF_PACK_BYTES = 8, 1 << 19   # ... and copy up to 8 pixel groups (512 KiB) per pass over x's rows


@numba.njit(cache=True, nogil=True, fastmath=_FAST, parallel=True)
def gemm_channels_first(bits, x, y, threads):
    """y = widen(bits) x, channels first: W [out, in] times x [in, N] (a 1x1 conv over an NCHW map, N = Y * X
    pixels as the tokens; a dense conv's im2col columns) -> y [out, N]; ``bits`` float32 or BF16 (uint16);
    ``threads``: ``numba.get_num_threads()`` (read by the caller: inside, it would stop the disk cache).

    The same 6 x 64 tiles (``_tile6x64``) as ``gemm_parallel``. x's rows are already pixel-contiguous, so
    a group's "transpose" ``xt`` [in, 64] is a copy of 64-pixel runs (``x``'s rows lie N * 4 bytes apart, a
    multiple of 4 KiB for most maps, and read in place they would all fall in the same cache sets). Work
    items: (pixel group, share of the rows); the rows are shared out only when there are fewer than
    ``CF_ITEMS`` groups (a 24 x 24 map has 9). Each thread takes one run of consecutive items, so it copies
    each of its groups once, into its own buffer, up to ``CF_PACK`` groups per pass over x's rows (each row
    of a big map is a different memory page: one visit per 8 groups instead of one per group took the
    128 x 512 x 36,864 product from 175 to 215 GFLOP/s), and a group stays in its L1/L2 while the weights
    pass in blocks of ``CF_BLOCK`` rows; a block's result goes into y's rows in whole 256-byte runs. A
    block's last out % 6 rows take ``_rows_x64`` on the same group; the last N % 64 pixels ``_cf_edge``."""
    I, N = x.shape
    O = bits.shape[0]
    groups = N // TILE_TOKENS
    splits = min((O + TILE_ROWS - 1) // TILE_ROWS, max(1, (CF_ITEMS + groups - 1) // max(groups, 1)))
    share = (-(-O // splits) + TILE_ROWS - 1) // TILE_ROWS * TILE_ROWS        # rows per split (ceil), whole tiles
    items = groups * splits
    pack = max(1, min(CF_PACK, CF_PACK_BYTES // (I * TILE_TOKENS * 4)))      # groups copied per visit of x
    for t in numba.prange(threads):
        first, last = t * items // threads, (t + 1) * items // threads
        xts = np.empty((pack, I, TILE_TOKENS), np.float32)                    # [pack, in, 64] its groups
        out = np.empty((CF_BLOCK, TILE_TOKENS), np.float32)                   # [rows, 64] a block's result
        base = -pack
        for item in range(first, last):
            g, sp = item // splits, item % splits
            n0 = g * TILE_TOKENS
            if g >= base + pack:                                              # copy the next groups it needs
                base = g
                m = min(pack, (last - 1) // splits + 1 - g)
                for k in range(I):
                    for q in range(m):
                        for j in range(TILE_TOKENS):
                            xts[q, k, j] = x[k, n0 + q * TILE_TOKENS + j]
            xt = xts[g - base]
            for o0 in range(sp * share, min(O, (sp + 1) * share), CF_BLOCK):
                o1 = min(O, (sp + 1) * share, o0 + CF_BLOCK)
                tiled = o1 - (o1 - o0) % TILE_ROWS
                out[:] = 0.0
                for k0 in range(0, I, K_CHUNK):
                    for r0 in range(o0, tiled, TILE_ROWS):
                        _tile6x64(xt, bits, r0, k0, min(I, k0 + K_CHUNK), out, r0 - o0)
                _rows_x64(xt, bits, tiled, o1, out, tiled - o0)
                for r in range(o0, o1):
                    y[r, n0:n0 + TILE_TOKENS] = out[r - o0]
    for r in numba.prange(O):                                                 # every row, ragged pixels
        _cf_edge(bits, x, y, r, groups * TILE_TOKENS, N)


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _rows_x64(xt, bits, r0, r1, out, c0):
    """out[c0:c0 + r1 - r0, :] = widen(bits[r0:r1]) x_group^T, one weight row at a time against the 64 tokens
    of ``xt`` [in, 64] (fewer rows than a tile: the rest of a block), with the tiles' two-level sums."""
    part = numba.carray(_tile_scratch(), (TILE_TOKENS,))
    for r in range(r0, r1):
        w = bits[r]
        for j in range(TILE_TOKENS):
            out[c0 + r - r0, j] = 0.0
        for s0 in range(0, xt.shape[0], SUM_BLOCK):
            for j in range(TILE_TOKENS):
                part[j] = 0.0
            for i in range(s0, min(xt.shape[0], s0 + SUM_BLOCK)):
                k = np.uint64(i)
                a = widen1(w[k])
                xk = xt[k]
                for j in range(TILE_TOKENS):
                    part[j] += a * xk[j]
            for j in range(TILE_TOKENS):
                out[c0 + r - r0, j] += part[j]


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _cf_edge(bits, x, y, r, n0, n1):
    """y[r, n0:n1] = widen(bits[r]) x[:, n0:n1], one input row at a time (vector multiply-adds along the
    pixels)."""
    for n in range(n0, n1):
        y[r, n] = 0.0
    for k in range(x.shape[0]):
        a = widen1(bits[r, k])
        for n in range(n0, n1):
            y[r, n] += a * x[k, n]


LOG2E, LN2_HI, LN2_LO = np.float32(1.44269504), np.float32(0.693359375), np.float32(-2.12194440e-4)
EXP_P = (np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3),
         np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1))


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def exp_nonpositive(x):
    """exp(x) in float32 for x <= 0 (a logit minus its row's maximum), written so that LLVM vectorises it
    (numba's ``np.exp`` is a scalar call per value). x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, so
    n ln2 is exact), exp(r) by a degree-6 polynomial (Cephes' ``expf`` coefficients), times 2^n built as
    float32 bits: 2^n = widen1((n + 127) << 7), a BF16 value with a zero mantissa. x is clamped at -88
    (there n = -127 and 2^n comes out as 0), so below float32's normal range (-87.34) the result is 0 or a
    denormal within 1.2e-38 of exp(x). Within a few ulp of ``np.exp`` above (tests/test_tile_kernels.py)."""
    x = max(x, np.float32(-88.0))
    n = np.floor(x * LOG2E + np.float32(0.5))
    r = x - n * LN2_HI - n * LN2_LO
    p = ((((EXP_P[0] * r + EXP_P[1]) * r + EXP_P[2]) * r + EXP_P[3]) * r + EXP_P[4]) * r + EXP_P[5]
    p = p * r * r + r + np.float32(1.0)
    return p * widen1(np.uint16((np.int32(n) + 127) << 7))


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _tiles(xt, rows, out):
    """out[:R] += rows xt^T over every input: rows [R, K] (keys, or values transposed) against a group's 64
    columns ``xt`` [K, 64], in 6 x 64 tiles, then the last R % 6 rows (``_rows_x64``, which writes them)."""
    R, K = rows.shape[0], xt.shape[0]
    tiled = R - R % TILE_ROWS
    for r0 in range(0, tiled, TILE_ROWS):
        _tile6x64(xt, rows, r0, 0, K, out, r0)
    _rows_x64(xt, rows, tiled, R, out, tiled)


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _softmax_columns(s):
    """s [M, 64]: logits (-inf = a hidden key), keys down the rows -> each column's softmax, in place: max,
    ``exp_nonpositive`` of the differences (an exact 0 for a hidden key), sum, divide, as ``ops.softmax``.
    A column with no visible key comes out all zeros (not 0 / 0)."""
    M = s.shape[0]
    top = np.full(TILE_TOKENS, -np.inf, np.float32)                  # [64]
    for r in range(M):
        for j in range(TILE_TOKENS):
            top[j] = max(top[j], s[r, j])
    for j in range(TILE_TOKENS):
        if top[j] == -np.inf:
            top[j] = 0.0
    total = np.zeros(TILE_TOKENS, np.float32)                        # [64]
    for r in range(M):
        for j in range(TILE_TOKENS):
            e = exp_nonpositive(s[r, j] - top[j])
            s[r, j] = e
            total[j] += e
    for j in range(TILE_TOKENS):
        if total[j] == 0.0:
            total[j] = 1.0
    for r in range(M):
        for j in range(TILE_TOKENS):
            s[r, j] /= total[j]


@numba.njit(cache=True, nogil=True, fastmath=_FAST, parallel=True)
def mqa_attention(q, kt, v, o):
    """Multi-query attention, channels first: o[h] = v softmax_keys(kt q[h]) for every query head h over
    ONE key/value head. q [h, d, N] (already scaled by d^-1/2), kt [M, d] (the keys, transposed), v [d, M]
    -> o [h, d, N]. Twin: ``mobilenetv5.mobile_mqa``'s NumPy loop (logits, softmax, then the values).

    Work items: (head, group of 64 queries). The group's logits [M, 64] are the 6 x 64 tiles with the keys as
    the "weight rows" (``_tiles``, inputs = the d channels); the softmax runs down each column
    (``_softmax_columns``); the values are the tiles again, v's d rows against the [M, 64] probabilities. A
    group's logits stay in L2 (576 keys: 147 KB)."""
    h, d, N = q.shape
    M = kt.shape[0]
    groups = (N + TILE_TOKENS - 1) // TILE_TOKENS
    for item in numba.prange(h * groups):
        hi, g = item // groups, item % groups
        n0 = g * TILE_TOKENS
        n = min(TILE_TOKENS, N - n0)
        qg = np.zeros((d, TILE_TOKENS), np.float32)                  # [d, 64] the group's queries
        for c in range(d):
            qg[c, :n] = q[hi, c, n0:n0 + n]
        s = np.zeros((M, TILE_TOKENS), np.float32)                   # [M, 64] logits, keys down the rows
        _tiles(qg, kt, s)
        _softmax_columns(s)                                          # [M, 64] probabilities
        og = np.zeros((d, TILE_TOKENS), np.float32)                  # [d, 64] = v probs
        _tiles(s, v, og)
        for c in range(d):
            o[hi, c, n0:n0 + n] = og[c, :n]


@numba.njit(cache=True, nogil=True, fastmath=_FAST, parallel=True)
def gqa_attention(q, kt, vt, visible, o):
    """Grouped-query attention of one sequence (the decoder's prompt, ``attention.attend``): o[t, h] =
    softmax over the visible keys of (q[t, h] . k[s]) times v, query head h reading key/value head
    h // (N / G); scaling 1. q [T, N, E], kt [G, S, E] (keys), vt [G, E, S] (values, transposed), visible
    [S, T] bool (the mask, transposed) -> o [T, N, E]. A query that sees no key gets zeros, as in
    ``ops.softmax``. Twin: ``attention.attend``'s NumPy code.

    Work items: (head, group of 64 queries), as ``mqa_attention``'s, with the hidden keys' logits set to
    -inf before the softmax."""
    T, N, E = q.shape
    G, S = kt.shape[0], kt.shape[1]
    groups = (T + TILE_TOKENS - 1) // TILE_TOKENS
    for item in numba.prange(N * groups):
        h, g = item // groups, item % groups
        kv = h // (N // G)
        n0 = g * TILE_TOKENS
        n = min(TILE_TOKENS, T - n0)
        qg = np.zeros((E, TILE_TOKENS), np.float32)                  # [E, 64] the group's queries
        for j in range(n):
            for e in range(E):
                qg[e, j] = q[n0 + j, h, e]
        s = np.zeros((S, TILE_TOKENS), np.float32)                   # [S, 64] logits, keys down the rows
        _tiles(qg, kt[kv], s)
        for r in range(S):
            for j in range(n):
                if not visible[r, n0 + j]:
                    s[r, j] = -np.inf
        _softmax_columns(s)                                          # [S, 64] probabilities
        og = np.zeros((E, TILE_TOKENS), np.float32)                  # [E, 64] = v^T probs
        _tiles(s, vt[kv], og)
        for j in range(n):
            for e in range(E):
                o[n0 + j, h, e] = og[e, j]
