"""The optional numba twins (minig3n/accel.py) against their NumPy originals, and the selection rule.

These tests check minig3n's own accelerator, not a concept a student implements, so they call minig3n
directly rather than through tests/adapters (the NumPy originals are themselves checked against the
reference's fixtures in test_vision_encoder.py). numba comes with the ``test`` extra: nothing here skips.

Tolerances (rel_err = max abs difference / max abs value):
* float64: <= 1e-12. The twin adds the same products in the same order in the same dtype, so the results
  are in fact identical; 1e-12 leaves room for a compiler that fuses a multiply-add (one rounding less per
  tap, a few ulp of float64) and is still 100x inside the 1e-10 of the float64 goldens.
* float32: <= 1e-6, for the same reason at float32's precision (an ulp is 6e-8 relative; a k=5 conv adds 25
  products), and 10x inside the 1e-5 of the float32 goldens.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from minig3n import accel, mobilenetv5
from minig3n.errors import ConfigError
from tests.golden_io import rel_err

pytestmark = pytest.mark.vision

TOL = {np.float64: 1e-12, np.float32: 1e-6}   # reasons in the module docstring

# (B, C, Y, X, k, stride, dilation): odd and even sizes, strides 1/2, dilation 2, k 1/3/5, inputs smaller
# than the kernel, 1x1 maps. Stride 2 on an even size pads more at the bottom/right (TF "SAME"): (0, 1) for
# k3 on 8, (1, 2) for k5 on 8 or 10; on an odd size it is symmetric: (1, 1) for k3 on 7.
DW_CASES = [
    (2, 4, 9, 7, 3, 1, 1),
    (1, 3, 8, 8, 3, 2, 1),
    (1, 3, 8, 10, 5, 2, 1),
    (1, 5, 7, 7, 3, 2, 1),
    (2, 3, 10, 11, 5, 2, 2),
    (1, 2, 6, 6, 3, 1, 2),
    (1, 6, 1, 1, 3, 2, 1),
    (1, 4, 2, 3, 5, 1, 1),
    (1, 2, 7, 5, 1, 2, 1),
    (1, 2, 9, 9, 5, 3, 1),
    (1, 16, 24, 24, 5, 1, 1),
    (1, 16, 48, 48, 3, 2, 1),
]
RMS_SHAPES = [(2, 5, 3, 4), (1, 64, 12, 12), (1, 3, 1, 1), (1, 300, 7, 5)]


@pytest.fixture
def numpy_mode(monkeypatch):
    """Run the concept modules' NumPy code (the twins' expectation)."""
    monkeypatch.setenv(accel.ENV, "numpy")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", DW_CASES, ids=lambda c: "B{}C{}_{}x{}_k{}s{}d{}".format(*c))
def test_depthwise_twin_matches_numpy(case, dtype, numpy_mode):
    """accel.depthwise_conv2d == mobilenetv5.depthwise_conv2d (NumPy) on random inputs, same dtype."""
    B, C, Y, X, k, s, d = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((B, C, Y, X)).astype(dtype)
    w = rng.standard_normal((C, 1, k, k)).astype(dtype)
    want = mobilenetv5.depthwise_conv2d(x, w, s, d)
    got = accel.depthwise_conv2d(x, w, s, d)
    assert got.dtype == want.dtype == dtype
    assert got.shape == want.shape == (B, C, -(-Y // s), -(-X // s))
    assert rel_err(got, want) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_depthwise_twin_noncontiguous_and_mixed_dtype(dtype, numpy_mode):
    """A transposed (non-contiguous) input and float32 weights on a float64 map: the twin copies/casts as
    the NumPy version does (weights cast to the input's dtype) and gives the same result."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 9, 11, 6)).astype(dtype).transpose(0, 3, 2, 1)  # [1, 6, 11, 9] strided
    w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    want = mobilenetv5.depthwise_conv2d(x, w, 2, 1)
    got = accel.depthwise_conv2d(x, w, 2, 1)
    assert got.dtype == dtype
    assert rel_err(got, want) <= TOL[dtype]


def test_depthwise_twin_pads_bottom_right_by_hand():
    """A 4x4 map holding 0..15 row-major, 3x3 all-ones taps, stride 2: TF "SAME" pads (0, 1), so windows
    start at rows/cols 0 and 2 and the second reaches into the zero row/col 4:
    0+1+2+4+5+6+8+9+10 = 45, 2+3+6+7+10+11 = 39, 8+9+10+12+13+14 = 66, 10+11+14+15 = 50.
    The second channel holds the same map times -1 with taps 2: every sum times -2."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x = np.concatenate([x, -x], axis=1)                                        # [1, 2, 4, 4]
    w = np.stack([np.ones((1, 3, 3)), np.full((1, 3, 3), 2.0)])                # [2, 1, 3, 3]
    got = accel.depthwise_conv2d(x, w, 2, 1)
    want = np.array([[45.0, 39.0], [66.0, 50.0]])
    np.testing.assert_array_equal(got[0, 0], want)
    np.testing.assert_array_equal(got[0, 1], -2.0 * want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", RMS_SHAPES, ids=str)
def test_rms_norm2d_twin_matches_numpy(shape, dtype, numpy_mode):
    """accel.rms_norm2d == mobilenetv5.rms_norm2d (NumPy), eps 1e-6, including a pixel of exact zeros
    (rms = sqrt(eps): the output stays 0) and one of large values."""
    rng = np.random.default_rng(shape[1])
    x = (3.0 * rng.standard_normal(shape)).astype(dtype)
    x[..., 0, 0] = 0.0
    x[..., -1, -1] *= 1e3
    w = rng.standard_normal(shape[1]).astype(dtype)
    want = mobilenetv5.rms_norm2d(x, w)
    got = accel.rms_norm2d(x, w, mobilenetv5.EPS)
    assert got.dtype == want.dtype == dtype
    assert not np.any(got[..., 0, 0])
    assert rel_err(got, want) <= TOL[dtype]


# ---- the selection rule -----------------------------------------------------------------------------

def _spy(monkeypatch, name):
    """Replace accel.<name> by a recorder that still computes the result."""
    calls, real = [], getattr(accel, name)

    def spy(*args, **kw):
        calls.append(name)
        return real(*args, **kw)
    monkeypatch.setattr(accel, name, spy)
    return calls


def test_default_uses_numba_when_importable(monkeypatch):
    """MINIG3N_ACCEL unset (numba installed by the test extra): both kernels go to their twins."""
    monkeypatch.delenv(accel.ENV, raising=False)
    assert accel.mode() == "numba"
    dw, rms = _spy(monkeypatch, "depthwise_conv2d"), _spy(monkeypatch, "rms_norm2d")
    x = np.ones((1, 2, 5, 5), np.float32)
    mobilenetv5.depthwise_conv2d(x, np.ones((2, 1, 3, 3), np.float32), 2)
    mobilenetv5.rms_norm2d(x, np.ones(2, np.float32))
    assert dw == ["depthwise_conv2d"] and rms == ["rms_norm2d"]


@pytest.mark.parametrize("value", ["numpy", "NumPy"])
def test_numpy_forces_the_numpy_code(monkeypatch, value):
    """MINIG3N_ACCEL=numpy: the twins are never called (case-insensitive)."""
    monkeypatch.setenv(accel.ENV, value)
    assert accel.mode() == "numpy"
    dw, rms = _spy(monkeypatch, "depthwise_conv2d"), _spy(monkeypatch, "rms_norm2d")
    x = np.ones((1, 2, 5, 5), np.float64)
    y = mobilenetv5.depthwise_conv2d(x, np.ones((2, 1, 3, 3)), 2)
    mobilenetv5.rms_norm2d(x, np.ones(2))
    assert dw == [] and rms == []
    assert y[0, 0, 0, 0] == 4.0      # pads (1, 1) on 5 with stride 2: the corner window holds 2 x 2 ones


def test_other_dtypes_take_the_numpy_code(monkeypatch):
    """Twins exist for float32/float64 only; a float16 map is convolved by NumPy, in float16."""
    monkeypatch.setenv(accel.ENV, "numba")
    dw = _spy(monkeypatch, "depthwise_conv2d")
    y = mobilenetv5.depthwise_conv2d(np.ones((1, 1, 3, 3), np.float16), np.ones((1, 1, 3, 3), np.float16))
    assert dw == [] and y.dtype == np.float16 and y[0, 0, 1, 1] == 9.0


def test_bad_value_is_a_config_error(monkeypatch):
    monkeypatch.setenv(accel.ENV, "fast")
    with pytest.raises(ConfigError, match="MINIG3N_ACCEL='fast'"):
        mobilenetv5.depthwise_conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)))


def test_without_numba(monkeypatch):
    """numba not importable (simulated: sys.modules['numba'] = None makes ``import numba`` fail): unset
    falls back to NumPy silently; MINIG3N_ACCEL=numba raises ConfigError naming the install step."""
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.setattr(accel, "_numba", None)
    monkeypatch.delenv(accel.ENV, raising=False)
    assert accel.mode() == "numpy"
    y = mobilenetv5.depthwise_conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), 2)
    np.testing.assert_array_equal(y[0, 0], [[9.0, 6.0], [6.0, 4.0]])  # pads (0, 1): the hand case above
    monkeypatch.setenv(accel.ENV, "numba")
    with pytest.raises(ConfigError, match=r"numba cannot be imported: pip install 'minig3n\[numba\]'"):
        mobilenetv5.rms_norm2d(np.ones((1, 2, 2, 2)), np.ones(2))


def test_minig3n_imports_and_runs_with_numba_absent():
    """In a fresh interpreter where ``import numba`` fails: every minig3n module imports, importing does
    not touch numba, and the vision kernels run (NumPy)."""
    code = (
        "import sys, pkgutil, importlib\n"
        "sys.modules['numba'] = None\n"
        "import numpy as np, minig3n\n"
        "for m in pkgutil.iter_modules(minig3n.__path__):\n"
        "    if not m.name.startswith('_'):\n"
        "        importlib.import_module('minig3n.' + m.name)\n"
        "from minig3n import accel, mobilenetv5 as mv\n"
        "assert accel._numba is None, 'numba was looked up at import time'\n"
        "y = mv.depthwise_conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), 2)\n"
        "z = mv.rms_norm2d(np.ones((1, 2, 2, 2)), np.ones(2))\n"
        "assert accel.mode() == 'numpy' and y[0, 0].tolist() == [[9, 6], [6, 4]] and z.shape == (1, 2, 2, 2)\n"
        "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != accel.ENV}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ---- the fused norm kernels (rms_norm2d_gelu, rms_norm2d_add) ----------------------------------------
# The twins run the NumPy versions' operations in the same order on the same NumPy tanh (the GELU), so
# they meet the same TOL as above (in fact identical). Shapes: odd channel counts, more pixels than one
# chunk (accel._CHUNK // C), a batch of two, a 1x1 map.
FUSED_SHAPES = [(2, 5, 3, 4), (1, 64, 40, 41), (1, 3, 1, 1), (1, 7, 200, 150), (2, 300, 7, 5)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=str)
def test_rms_norm2d_gelu_twin_matches_numpy(shape, dtype, numpy_mode):
    """accel.rms_norm2d_gelu == conv2d.rms_norm2d_gelu (NumPy: gelu_tanh(rms_norm2d(x)))."""
    from minig3n import conv2d
    rng = np.random.default_rng(shape[1] + shape[2])
    x = (3.0 * rng.standard_normal(shape)).astype(dtype)
    x[..., 0, 0] = 0.0
    w = rng.standard_normal(shape[1]).astype(dtype)
    want = conv2d.rms_norm2d_gelu(x, w)
    np.testing.assert_array_equal(want, mobilenetv5.gelu(mobilenetv5.rms_norm2d(x, w)))
    got = accel.rms_norm2d_gelu(x, w, mobilenetv5.EPS)
    assert got.dtype == dtype and got.shape == shape
    assert not np.any(got[..., 0, 0])
    assert rel_err(got, want) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=str)
@pytest.mark.parametrize("with_res,with_gamma", [(True, True), (True, False), (False, True), (False, False)])
def test_rms_norm2d_add_twin_matches_numpy(shape, dtype, with_res, with_gamma, numpy_mode):
    """accel.rms_norm2d_add == conv2d.rms_norm2d_add (NumPy: rms_norm2d(x) * gamma + residual)."""
    from minig3n import conv2d
    rng = np.random.default_rng(shape[1] * 7 + shape[3])
    x = (3.0 * rng.standard_normal(shape)).astype(dtype)
    w = rng.standard_normal(shape[1]).astype(dtype)
    res = rng.standard_normal(shape).astype(dtype) if with_res else None
    gamma = rng.uniform(1e-5, 1.0, shape[1]).astype(dtype) if with_gamma else None
    want = conv2d.rms_norm2d_add(x, w, res, gamma)
    by_hand = mobilenetv5.rms_norm2d(x, w) * (gamma[:, None, None] if with_gamma else 1) + (res if with_res else 0)
    np.testing.assert_allclose(want, by_hand, rtol=0, atol=0)
    got = accel.rms_norm2d_add(x, w, res, gamma, mobilenetv5.EPS)
    assert got.dtype == dtype and got.shape == shape
    assert rel_err(got, want) <= TOL[dtype]
