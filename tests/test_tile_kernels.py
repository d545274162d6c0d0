"""The compiled tiles of the vision tower and of the decoder's prompt attention (minig3n/_gemm_kernels.py,
numba mode) against their NumPy twins.

* ``gemm_channels_first``: a 1x1 conv (and a dense conv's im2col columns) as ``W @ x`` with the pixels as
  tokens (``conv2d.pointwise_conv``, ``conv2d.conv2d``). Twin: ``np.matmul`` (BLAS).
* ``mqa_attention``: mobile multi-query attention for one image (``mobilenetv5.mobile_mqa``). Twin: its
  NumPy loop (logits, softmax, values).
* ``gqa_attention``: the decoder's grouped-query attention over a prompt (``attention.attend``). Twin:
  ``attend``'s NumPy code.
* ``exp_nonpositive``: the softmax's exp, written so that LLVM vectorises it. Twin: ``np.exp``.

Tolerances (rel_err = max abs difference / max abs value), float32:
* products: 2e-6, as for the decoder's float32 tiles (tests/test_bf16.py): the tiles add the same products
  in another order than BLAS (two-level sums of 256 inputs), a few 1e-7 over at most a few thousand inputs;
  both are also checked against the float64 product.
* attention: 5e-6: the products' 2e-6 twice (logits, then values over M keys) plus an exp within 3 ulp.
float64 inputs never reach these kernels (``accel.use_matmul``): the rule tests check that they, and maps of
fewer than 64 pixels or prompts of fewer than 64 tokens, get the NumPy result exactly.
"""
import numba
import numpy as np
import pytest

from minig3n import _gemm_kernels, accel, bf16, mobilenetv5
from minig3n.attention import attend, attention_mask
from minig3n.conv2d import conv2d, pointwise_conv
from minig3n.mobilenetv5_arch import BlockSpec
from tests.golden_io import rel_err
from tests.test_bf16 import random_bits

pytestmark = pytest.mark.vision

PRODUCT_TOL, ATTENTION_TOL = 2e-6, 5e-6     # reasons in the module docstring

# [out, in, pixels]: everything ragged (7 rows = one tile + 1, 70 pixels = one group + 6); a block's last
# 2 rows; the 24 x 24 map (9 groups: the rows are shared out); more inputs than K_CHUNK; one pixel group;
# rows that the shares do not divide (100 rows in 16 shares, 13 in 2: the shares round up, no row left out).
PRODUCT_SHAPES = [(7, 5, 70), (128, 64, 640), (130, 33, 200), (96, 40, 576), (24, 3000, 128), (6, 8, 64),
                  (100, 8, 64), (13, 8, 576)]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", PRODUCT_SHAPES, ids=lambda s: "{}x{}x{}".format(*s))
def test_channels_first_product_matches_blas(shape, threads):
    """``gemm_channels_first`` (float32 weights) against BLAS's ``W @ x`` and the float64 product, for any
    number of work shares (``threads`` > the items of a small product included)."""
    O, I, N = shape
    rng = np.random.default_rng(O * I + N)
    w = rng.standard_normal((O, I), dtype=np.float32) / np.float32(np.sqrt(I))
    x = rng.standard_normal((I, N), dtype=np.float32)
    y = np.full((O, N), np.nan, np.float32)
    _gemm_kernels.gemm_channels_first(w, x, y, threads)
    exact = w.astype(np.float64) @ x.astype(np.float64)
    assert rel_err(y, w @ x) <= PRODUCT_TOL and rel_err(y, exact) <= PRODUCT_TOL


def test_channels_first_product_reads_bf16_bits():
    """The same kernel with BF16 weights (uint16 bits, widened inside): equals the product with the widened
    float32 matrix (``bf16.widen``), the values it stands for."""
    rng = np.random.default_rng(4)
    bits = random_bits(rng, (130, 33))
    x = rng.standard_normal((33, 200), dtype=np.float32)
    y = np.empty((130, 200), np.float32)
    _gemm_kernels.gemm_channels_first(bits, x, y, 2)
    assert rel_err(y, bf16.widen(bits) @ x) <= PRODUCT_TOL


@numba.njit
def _exp_all(a):
    out = np.empty_like(a)
    for i in range(a.size):
        out[i] = _gemm_kernels.exp_nonpositive(a[i])
    return out


def test_exp_nonpositive_against_numpy():
    """Within 3 ulp of ``np.exp`` on [-87.3, 0] (float32's normal range; 2 million points); below it, 0 or a
    denormal within 1.2e-38 (float32's smallest normal) of the true value; and exp(0) = 1 exactly (by hand:
    n = 0, r = 0, so p r^2 + r + 1 = 1 and 2^0 = widen1(127 << 7) = 1.0)."""
    a = -np.linspace(0.0, 100.0, 2_000_001).astype(np.float32)
    got, want = _exp_all(a), np.exp(a)
    normal = a >= np.float32(-87.3)
    ulps = np.abs(got[normal].view(np.int32).astype(np.int64) - want[normal].view(np.int32))
    assert ulps.max() <= 3
    assert np.abs(got[~normal] - want[~normal]).max() <= 1.2e-38 and got[~normal].min() >= 0.0
    assert _exp_all(np.zeros(1, np.float32))[0] == np.float32(1.0)


def _attention_float64(q, k, v):
    """softmax(q^T k) v per head, in float64.   q [h, d, N], k, v [d, M] -> [h, d, N]"""
    logits = np.einsum("hdn,dm->hnm", q, k)                                     # [h, N, M]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("dm,hnm->hdn", v, probs)                                   # [h, d, N]


@pytest.mark.parametrize("h,d,N,M", [(3, 10, 70, 13), (4, 16, 576, 144), (2, 96, 128, 576)])
def test_mqa_attention_kernel(h, d, N, M):
    """``mqa_attention`` against float64 attention: ragged queries (70 = one group + 6), keys (13) and
    channels (10 = one tile + 4); the stage-4 head width 96 over 576 keys. Logits of standard deviation
    about 2, so that the softmax is neither flat nor one-hot."""
    rng = np.random.default_rng(h + d + N + M)
    q = rng.standard_normal((h, d, N), dtype=np.float32) * np.float32(2 / np.sqrt(d))
    k = rng.standard_normal((d, M), dtype=np.float32)
    v = rng.standard_normal((d, M), dtype=np.float32)
    got = accel.mqa_attention(q, k, v)
    assert got.shape == (h, d, N) and got.dtype == np.float32
    assert rel_err(got, _attention_float64(q.astype(np.float64), k.astype(np.float64), v)) <= ATTENTION_TOL


def test_mobile_mqa_block_numba_matches_numpy(monkeypatch):
    """A whole mobile-MQA block (kv stride 2, 2 images, skip) in numba mode against the NumPy loop."""
    b = BlockSpec("mqa", 32, 32, 1, 1, True, num_heads=4, key_dim=16, kv_stride=2, dw_kernel=3)
    rng = np.random.default_rng(9)
    shapes = {"norm.weight": (32,), "attn.query.proj.weight": (64, 32, 1, 1),
              "attn.key.down_conv.weight": (32, 1, 3, 3), "attn.key.norm.weight": (32,),
              "attn.key.proj.weight": (16, 32, 1, 1), "attn.value.down_conv.weight": (32, 1, 3, 3),
              "attn.value.norm.weight": (32,), "attn.value.proj.weight": (16, 32, 1, 1),
              "attn.output.proj.weight": (32, 64, 1, 1), "layer_scale.gamma": (32,)}
    p = {n: rng.standard_normal(s, dtype=np.float32) * np.float32(0.3) + np.float32(n.endswith("norm.weight"))
         for n, s in shapes.items()}
    x = rng.standard_normal((2, 32, 16, 12), dtype=np.float32)
    monkeypatch.setenv(accel.ENV, "numpy")
    twin = mobilenetv5.mobile_mqa(x, p, b)
    monkeypatch.setenv(accel.ENV, "numba")
    calls = []
    real = accel.mqa_attention
    monkeypatch.setattr(accel, "mqa_attention", lambda q, k, v: calls.append(q.shape) or real(q, k, v))
    got = mobilenetv5.mobile_mqa(x, p, b)
    assert calls == [(4, 16, 192)] * 2
    assert rel_err(got, twin) <= ATTENTION_TOL


def test_conv_products_rule(monkeypatch):
    """Who takes ``accel.matmul_channels_first``: float32 maps of at least ``accel.MIN_ROWS`` pixels, numba
    mode, for 1x1 convs and the dense convs' im2col product alike (within PRODUCT_TOL of BLAS). float64,
    fewer pixels, or MINIG3N_ACCEL=numpy: ``np.matmul``, exactly."""
    calls = []
    real = accel.matmul_channels_first
    monkeypatch.setattr(accel, "matmul_channels_first", lambda w, x: calls.append(x.shape) or real(w, x))
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((12, 8, 1, 1), dtype=np.float32)
    w3 = rng.standard_normal((12, 8, 3, 3), dtype=np.float32)
    monkeypatch.setenv(accel.ENV, "numba")
    small = rng.standard_normal((1, 8, 7, 9), dtype=np.float32)                  # 63 pixels
    for x in (small, small.astype(np.float64)):
        assert np.array_equal(pointwise_conv(x, w1), np.matmul(w1.reshape(12, 8).astype(x.dtype),
                                                               x.reshape(1, 8, 63)).reshape(1, 12, 7, 9))
    assert calls == []
    x = rng.standard_normal((2, 8, 8, 9), dtype=np.float32)                      # 72 pixels
    got1, got3 = pointwise_conv(x, w1), conv2d(x, w3)
    assert calls == [(2, 8, 72), (2, 72, 72)]
    monkeypatch.setenv(accel.ENV, "numpy")
    assert rel_err(got1, pointwise_conv(x, w1)) <= PRODUCT_TOL and rel_err(got3, conv2d(x, w3)) <= PRODUCT_TOL
    assert len(calls) == 2


# (B, T, S, N, G, E, window, pad): a 128-token E2B-like prompt (8 query heads over 2 K/V heads of 256); a
# sliding window, ragged queries (70) and channels (10) continuing a cache (S > T); two rows, the second
# left-padded by 5 (its pad queries see no key: zeros).
GQA_CASES = [(1, 128, 128, 8, 2, 256, None, 0), (1, 70, 100, 4, 2, 10, 16, 0), (2, 64, 64, 4, 1, 32, None, 5)]


@pytest.mark.parametrize("case", GQA_CASES, ids=lambda c: "B{}T{}S{}N{}G{}E{}w{}pad{}".format(*c))
def test_gqa_attention_matches_numpy(case, monkeypatch):
    """``attend`` in numba mode (``accel.gqa_attention``) against its NumPy code and float64 attention."""
    B, T, S, N, G, E, window, pad = case
    rng = np.random.default_rng(T + S + E)
    q = rng.standard_normal((B, T, N, E), dtype=np.float32) * np.float32(2 / np.sqrt(E))
    k = rng.standard_normal((B, S, G, E), dtype=np.float32)
    v = rng.standard_normal((B, S, G, E), dtype=np.float32)
    real = np.ones((B, S), bool)
    real[1:, :pad] = False
    mask = attention_mask(np.arange(S - T, S), np.arange(S), real, window)      # [B, T, S]
    monkeypatch.setenv(accel.ENV, "numpy")
    twin = attend(q, k, v, mask)
    exact = attend(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), mask)
    monkeypatch.setenv(accel.ENV, "numba")
    calls = []
    tiles = accel.gqa_attention
    monkeypatch.setattr(accel, "gqa_attention", lambda *a: calls.append(a[0].shape) or tiles(*a))
    got = attend(q, k, v, mask)
    assert calls == [(B, T, N, E)] and got.shape == (B, T, N * E) and got.dtype == np.float32
    assert rel_err(got, twin) <= ATTENTION_TOL and rel_err(got, exact) <= ATTENTION_TOL
    if pad:
        assert not got[1, :pad].any() and not twin[1, :pad].any()               # pad queries: zeros


def test_gqa_attention_rule(monkeypatch):
    """Fewer than ``accel.MIN_ROWS`` queries (a decode step), or float64: ``attend``'s NumPy code, exactly."""
    calls = []
    monkeypatch.setattr(accel, "gqa_attention", lambda *a: calls.append(1))
    monkeypatch.setenv(accel.ENV, "numba")
    rng = np.random.default_rng(2)
    for T, dtype in ((accel.MIN_ROWS - 1, np.float32), (accel.MIN_ROWS, np.float64)):
        q = rng.standard_normal((1, T, 4, 8)).astype(dtype)
        k, v = (rng.standard_normal((1, T, 2, 8)).astype(dtype) for _ in range(2))
        mask = attention_mask(np.arange(T), np.arange(T), None, None)
        got = attend(q, k, v, mask)
        monkeypatch.setenv(accel.ENV, "numpy")
        assert np.array_equal(got, attend(q, k, v, mask))
        monkeypatch.setenv(accel.ENV, "numba")
    assert calls == []
