"""BF16 weights kept as BF16 (minig3n/bf16.py, _bf16_kernels.py) and bounded-memory attention
(attention.attend_blocks) against the plain NumPy computations they replace.

Tolerances (rel_err = max abs difference / max abs value):
* GEMV kernel vs NumPy (float32): <= 2e-6. Both add the same exact float32 products (BF16 widening is exact)
  in float32, in different orders (the kernel's sum is vectorised by LLVM, BLAS blocks its own way). Each
  order is within about sqrt(in) ulp of the exact sum; rows of up to 8192 entries give a few 1e-7, and 2e-6
  stays 5x inside the 1e-5 of the float32 goldens. Both are also checked against the float64 product.
* Blocked path (prefill): the same NumPy code with or without numba; against the whole-matrix float32 product
  and the float64 one, <= 2e-6 (BLAS may order a block's sums differently from the whole matrix's).
* attend_blocks vs attend: float64 <= 1e-12, float32 <= 1e-6: each row is the same softmax over the same
  visible keys; the hidden keys (exact zeros) are left out, so only the length, hence the order, of the sums
  changes.
* Whole model (tiny checkpoint, BF16 stored): logits <= 1e-5 relative to the widened-float32 path, and the
  greedy tokens are identical.
"""
import numpy as np
import pytest

from minig3n import accel, bf16
from minig3n.attention import KeyBand, attend, attend_blocks
from minig3n.checkpoint import Checkpoint
from minig3n.ops import linear, linear_columns, linear_masked, linear_nonzero
from tests.golden_io import rel_err

TINY = "weights/tiny-random-gemma3n"
GEMV_TOL, ATTN_TOL = 2e-6, {np.float64: 1e-12, np.float32: 1e-6}


def random_bits(rng, shape):
    """BF16 bit patterns of N(0, 1/in) values (sign, exponent and mantissa all exercised)."""
    x = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[1]))
    return (x.view(np.uint32) >> 16).astype(np.uint16)


SHAPES = [(4, 2048), (256, 2048), (2048, 256), (64, 2048), (2048, 64), (1000, 2048), (3000, 100), (37, 13),
          (9000, 2048),
          (1001, 8200), (6, 5000)]    # long rows; 1001 and 6 (3 and 8 tokens): 4 rows per pass (_bf16_kernels._dot4), then the ragged rest


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_gemv_kernel_matches_numpy_twin(shape, n):
    rng = np.random.default_rng(shape[0] * 7 + shape[1] + n)
    bits = random_bits(rng, shape)
    x = rng.standard_normal((n, shape[1]), dtype=np.float32)
    exact = x.astype(np.float64) @ bf16.widen(bits).astype(np.float64).T
    got, twin = bf16.gemv_numba(x, bits), bf16.gemv_numpy(x, bits)
    assert got.dtype == twin.dtype == np.float32
    assert rel_err(got, twin) <= GEMV_TOL
    assert rel_err(got, exact) <= GEMV_TOL and rel_err(twin, exact) <= GEMV_TOL


@pytest.mark.parametrize("shape", [(2048, 2048), (1001, 8200), (37, 13)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("n", [1, 2, 3])
def test_gemv_one_row_per_pass_sums_like_four(shape, n):
    """The GEMV takes one weight row per pass or four (``_bf16_kernels.gemv_rows``; ``bf16.one_row_gemv`` picks
    by CPU for one or two tokens). Both vectorise each row's sum the same way: bit-identical outputs, so the
    choice never changes a number (serial and parallel kernels: 37 x 13 is small enough for one thread). Also
    checked with the kernels compiled for other CPUs (``NUMBA_CPU_NAME`` = ``x86-64``, ``haswell``,
    ``skylake-avx512``, each with its own ``NUMBA_CACHE_DIR``): equal there too."""
    rng = np.random.default_rng(shape[0] + shape[1] + n)
    bits = random_bits(rng, shape)
    x = rng.standard_normal((n, shape[1]), dtype=np.float32)
    one, four = bf16.gemv_numba(x, bits, one_row=True), bf16.gemv_numba(x, bits, one_row=False)
    np.testing.assert_array_equal(one, four)
    np.testing.assert_array_equal(bf16.gemv_numba(x, bits), four)        # the default, whichever it is here
    assert rel_err(one, x.astype(np.float64) @ bf16.widen(bits).astype(np.float64).T) <= GEMV_TOL


def test_one_row_gemv_follows_the_cpu_vendor(tmp_path):
    """One row per pass exactly when the CPU's vendor is AMD (the ``vendor_id`` line of /proc/cpuinfo); four on
    Intel and when the file cannot be read."""
    amd, intel = tmp_path / "amd", tmp_path / "intel"
    amd.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n")
    intel.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n")
    assert bf16.one_row_gemv(str(amd)) is True
    assert bf16.one_row_gemv(str(intel)) is False
    assert bf16.one_row_gemv(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("shape", [(8192, 256), (2048, 2048), (37, 13), (130, 2048), (64, 2048), (3, 40)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("n", [9, 16, 64, 130, 200, 600])
def test_gemm_kernel_matches_numpy_twin(shape, n):
    """The compiled prefill product against its NumPy twin ``blocked`` and the float64 product; tolerance
    GEMV_TOL (same exact products, float32 sums in another order). n = 64 to 600: the 6-row x 64-token
    tiles on whole groups of 64 tokens, the rest (the last n % 64 tokens, the last out % 6 rows) on the 4 x 4
    dot-product tiles and single dot products; 600: two rounds of transposed groups; n = 9, 16: the rest
    alone."""
    rng = np.random.default_rng(shape[0] * 5 + shape[1] + n)
    bits = random_bits(rng, shape)
    x = rng.standard_normal((n, shape[1]), dtype=np.float32)
    exact = x.astype(np.float64) @ bf16.widen(bits).astype(np.float64).T
    got, twin = bf16.gemm_numba(x, bits), bf16.blocked(x, bits)
    assert got.dtype == np.float32 and got.shape == (n, shape[0])
    assert rel_err(got, twin) <= GEMV_TOL and rel_err(got, exact) <= GEMV_TOL


@pytest.mark.parametrize("shape", [(8192, 256), (300, 2048), (2048, 600), (40, 13)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kept", [0, 1, 5, 37, 410, 1000])
@pytest.mark.parametrize("mode", ["numba", "numpy"])
def test_linear_rows_kernel_matches_numpy_twin(shape, kept, mode, monkeypatch):
    """``bf16.linear_rows`` (the sparse MLP's up projection of the kept units: serial and parallel gather
    kernels, 4 rows per pass and the ragged rest; or the NumPy twin) against the listed rows of the full
    product and the float64 product; tolerance GEMV_TOL. float64 input: the exact product of the listed rows."""
    monkeypatch.setenv(accel.ENV, mode)
    rng = np.random.default_rng(shape[0] + kept)
    bits = random_bits(rng, shape)
    rows = np.sort(rng.choice(shape[0], min(kept, shape[0]), replace=False))
    for n in (1, 3):
        x = rng.standard_normal((1, n, shape[1]), dtype=np.float32)
        got = bf16.linear_rows(x, bf16.BF16Weight(bits), rows)
        assert got.shape == (1, n, len(rows)) and got.dtype == np.float32
        if not len(rows):                            # no unit kept: an empty product, no kernel call to check
            continue
        assert rel_err(got, linear(x, bf16.BF16Weight(bits))[..., rows]) <= GEMV_TOL
        exact = x.astype(np.float64) @ bf16.widen(bits[rows]).astype(np.float64).T
        assert rel_err(got, exact) <= GEMV_TOL
        assert np.array_equal(bf16.linear_rows(x.astype(np.float64), bf16.BF16Weight(bits), rows), exact)


@pytest.mark.parametrize("shape", [(2048, 8192), (300, 2048), (2048, 600), (40, 13)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kept", [0, 1, 5, 37, 410, 1000])
@pytest.mark.parametrize("mode", ["numba", "numpy"])
def test_linear_columns_kernel_matches_numpy_twin(shape, kept, mode, monkeypatch):
    """``bf16.linear_columns`` (the sparse MLP's down projection from the kept units: serial and parallel
    column kernels, 4 columns per pass and the ragged rest; or the NumPy twin) against the full product with
    zeros at the other inputs and against the float64 product; tolerance GEMV_TOL. float64 input: the exact
    product of the listed columns. ``ops.linear_columns`` on a plain float32 array: exactly the whole product
    with the zeros filled in."""
    monkeypatch.setenv(accel.ENV, mode)
    rng = np.random.default_rng(shape[1] + kept)
    bits = random_bits(rng, shape)
    cols = np.sort(rng.choice(shape[1], min(kept, shape[1]), replace=False))
    w = bf16.BF16Weight(bits)
    for n in (1, 3):
        x = rng.standard_normal((1, n, len(cols)), dtype=np.float32)
        got = bf16.linear_columns(x, w, cols)
        assert got.shape == (1, n, shape[0]) and got.dtype == np.float32
        full = np.zeros((1, n, shape[1]), np.float32)
        full[..., cols] = x                                  # the dropped inputs: zeros
        exact = x.astype(np.float64) @ bf16.widen(bits[:, cols]).astype(np.float64).T
        if not len(cols):                                    # no unit kept: the product is zero
            assert np.array_equal(got, np.zeros_like(got))
            continue
        assert rel_err(got, linear(full, w)) <= GEMV_TOL
        assert rel_err(got, exact) <= GEMV_TOL
        assert np.array_equal(bf16.linear_columns(x.astype(np.float64), w, cols), exact)
        plain = linear_columns(x, bf16.widen(bits), cols)    # a float32 array: zeros filled in, whole product
        assert np.array_equal(plain, full @ bf16.widen(bits).T) and rel_err(got, plain) <= GEMV_TOL
    with pytest.raises(ValueError, match="3 inputs for 2 listed columns"):
        bf16.linear_columns(np.ones((1, 3), np.float32), w, np.arange(2))


@pytest.mark.parametrize("mode", ["numba", "numpy"])
@pytest.mark.parametrize("share", [0.0, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("shape,n", [((8192, 2048), 40), ((301, 130), 9), ((7, 1), 2), ((5, 64), 130)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_linear_masked_kernel_matches_numpy_twin(shape, n, share, mode, monkeypatch):
    """``bf16.linear_masked`` (a prompt's up projection on a sparse layer: each weight row with the tokens that
    keep it, four tokens per pass and the ragged rest; or the NumPy twin): exact zeros where ``keep`` is
    False; where True, against the whole product and the float64 product, tolerance GEMV_TOL. float64 input
    and ``ops.linear_masked`` on a plain array: exactly the masked whole product."""
    monkeypatch.setenv(accel.ENV, mode)
    rng = np.random.default_rng(shape[0] + n)
    bits = random_bits(rng, shape)
    w = bf16.BF16Weight(bits)
    x = rng.standard_normal((1, n, shape[1]), dtype=np.float32)
    keep = rng.random((1, n, shape[0])) < share                           # each token its own units
    got = bf16.linear_masked(x, w, keep)
    assert got.shape == (1, n, shape[0]) and got.dtype == np.float32
    assert not got[~keep].any()                                          # dropped: exact zeros
    exact = np.where(keep, x.astype(np.float64) @ bf16.widen(bits).astype(np.float64).T, 0.0)
    assert rel_err(got, np.where(keep, linear(x, w), 0)) <= GEMV_TOL and rel_err(got, exact) <= GEMV_TOL
    assert np.array_equal(bf16.linear_masked(x.astype(np.float64), w, keep), exact)
    plain = linear_masked(x, bf16.widen(bits), keep)                      # a float32 array: the masked whole
    assert np.array_equal(plain, np.where(keep, linear(x, bf16.widen(bits)), 0))   # product, as ops.linear
    with pytest.raises(ValueError, match=r"keep has shape \[1, 1, 3\], expected"):
        bf16.linear_masked(x, w, keep[:, :1, :3])


@pytest.mark.parametrize("mode", ["numba", "numpy"])
@pytest.mark.parametrize("share", [0.0, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("shape,n", [((2048, 8192), 40), ((130, 301), 9), ((1, 7), 2), ((64, 5), 130)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_linear_nonzero_kernel_matches_numpy_twin(shape, n, share, mode, monkeypatch):
    """``bf16.linear_nonzero`` (a prompt's down projection on a sparse layer: per token, only the columns of
    its nonzero inputs, read from the transpose, four per pass and the ragged rest; or the NumPy twin) against
    the whole product and the float64 product, tolerance GEMV_TOL; a token with no nonzero input gives exact
    zeros. float64 input and ``ops.linear_nonzero`` on a plain array: exactly the whole product."""
    monkeypatch.setenv(accel.ENV, mode)
    rng = np.random.default_rng(shape[1] + n)
    bits = random_bits(rng, shape)
    w = bf16.BF16Weight(bits)
    x = rng.standard_normal((1, n, shape[1]), dtype=np.float32)
    x[rng.random(x.shape) >= share] = 0.0                                 # each token its own nonzero inputs
    x[0, 0] = 0.0                                                         # and one token with none
    got = bf16.linear_nonzero(x, w)
    assert got.shape == (1, n, shape[0]) and got.dtype == np.float32
    assert not got[0, 0].any()
    exact = x.astype(np.float64) @ bf16.widen(bits).astype(np.float64).T
    if x.any():
        assert rel_err(got, linear(x, w)) <= GEMV_TOL and rel_err(got, exact) <= GEMV_TOL
    else:
        assert not got.any()
    assert np.array_equal(bf16.linear_nonzero(x.astype(np.float64), w), exact)
    assert np.array_equal(linear_nonzero(x, bf16.widen(bits)), x @ bf16.widen(bits).T)
    with pytest.raises(ValueError, match="input width"):
        bf16.linear_nonzero(x[..., 1:], w)


def test_sparse_mlp_paths_bf16_vs_widened(monkeypatch):
    """A sparse layer's MLP at E2B's widths with BF16 weights (numba kernels) against the same weights widened
    to float32 arrays (the dense products, zeros multiplied), tolerance GEMV_TOL; for a prompt (each token
    keeps about 5 % of the units, together most of them: ``linear_masked`` + ``linear_nonzero``) and for
    one token (``linear_rows`` + ``linear_columns``)."""
    from minig3n.mlp import LIVE_FRACTION, gaussian_topk, mlp
    monkeypatch.setenv(accel.ENV, "numba")
    rng = np.random.default_rng(7)
    D, I = 2048, 8192
    p = {k: bf16.BF16Weight(random_bits(rng, s)) for k, s in
         (("gate_proj.weight", (I, D)), ("up_proj.weight", (I, D)), ("down_proj.weight", (D, I)))}
    plain = {k: bf16.widen(w.bits) for k, w in p.items()}
    x = rng.standard_normal((1, 40, D), dtype=np.float32)
    kept = gaussian_topk(x @ plain["gate_proj.weight"].T, 0.95) > 0                     # [1, 40, I]
    assert kept.mean() <= LIVE_FRACTION < kept.any(axis=(0, 1)).mean()                 # the prompt path
    for xs in (x, x[:, :1]):
        got = mlp(xs, p, 0.95)
        assert rel_err(got, mlp(xs, plain, 0.95)) <= GEMV_TOL


@pytest.mark.parametrize("serial", [False, True], ids=["parallel", "serial"])
@pytest.mark.parametrize("mode", ["numba", "numpy"])
@pytest.mark.parametrize("shape", [(2048, 8192), (65, 130), (1, 7), (7, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_columns_is_the_transpose_made_once(shape, mode, serial, monkeypatch):
    """``BF16Weight.columns()``: the bits transposed (the tiled numba kernel, ragged tiles included, on all
    threads or ``serial`` on one, or NumPy), C-contiguous and read-only, made on the first call and the same
    array after."""
    monkeypatch.setenv(accel.ENV, mode)
    bits = random_bits(np.random.default_rng(shape[0]), shape)
    w = bf16.BF16Weight(bits)
    t = w.columns(serial=serial)
    assert t.shape == shape[::-1] and t.flags.c_contiguous and not t.flags.writeable
    assert np.array_equal(t, bits.T) and w.columns() is t


def test_plain_pages_is_a_writable_array_of_its_own():
    """``plain_pages``: the shape and dtype asked for, C-contiguous, writable, zero-filled (a fresh anonymous
    map), and two arrays share nothing."""
    a, b = bf16.plain_pages((3, 5), np.uint16), bf16.plain_pages((3, 5), np.uint16)
    assert a.shape == (3, 5) and a.dtype == np.uint16 and a.flags.c_contiguous and a.flags.writeable
    assert not a.any()
    a[1, 2] = 7
    assert a.sum() == 7 and not b.any()
    assert bf16.plain_pages((0, 4), np.float32).shape == (0, 4)


def test_columns_made_behind_once_for_every_thread():
    """``prepare_columns_behind`` makes each listed weight's copy on its thread, in order, reading the weights
    through the ``get`` it is given; callers on other threads at the same moment all get that one array
    (the weight's lock), equal to the transpose. A name whose ``get`` fails ends the thread; the copies
    made before it stay, the later ones are left to their callers."""
    import threading
    rng = np.random.default_rng(5)
    ws = {f"w{i}": bf16.BF16Weight(random_bits(rng, (300 + i, 700))) for i in range(4)}
    asked = []
    gate = threading.Event()

    def get(name):
        gate.wait()
        asked.append(name)
        return ws[name]
    thread = bf16.prepare_columns_behind(get, ["w0", "w1", "w2"])
    got = [None] * 6
    readers = [threading.Thread(target=lambda i=i: got.__setitem__(i, ws[f"w{i % 3}"].columns())) for i in range(6)]
    for r in readers:
        r.start()
    gate.set()
    thread.join(60)
    for r in readers:
        r.join(60)
    assert asked == ["w0", "w1", "w2"] and not thread.is_alive()
    for i in range(6):
        assert got[i] is ws[f"w{i % 3}"].columns() and np.array_equal(got[i], ws[f"w{i % 3}"].bits.T)
    assert ws["w3"]._columns is None                                   # not listed: not made

    fresh = {n: bf16.BF16Weight(w.bits) for n, w in ws.items()}
    thread = bf16.prepare_columns_behind(lambda n: fresh[n] if n != "w1" else {}["w1"], ["w0", "w1", "w2"])
    thread.join(60)
    assert fresh["w0"]._columns is not None and fresh["w2"]._columns is None and not thread.is_alive()


@pytest.mark.parametrize("shape", [(3000, 512), (512, 3000), (2048, 2048)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_blocked_widening_matches_float32_product(shape):
    """The prefill path (the same NumPy code in both modes) against the product with the whole matrix widened
    (same float32 BLAS, blocked over output rows) and the float64 product."""
    rng = np.random.default_rng(shape[0])
    bits = random_bits(rng, shape)
    x = rng.standard_normal((40, shape[1]), dtype=np.float32)
    a = bf16.blocked(x, bits)
    assert rel_err(a, x @ bf16.widen(bits).T) <= GEMV_TOL
    assert rel_err(a, x.astype(np.float64) @ bf16.widen(bits).astype(np.float64).T) <= GEMV_TOL


def test_widen_is_exact_and_bf16weight_behaves_like_its_array():
    rng = np.random.default_rng(1)
    bits = random_bits(rng, (5, 7))
    w = bf16.BF16Weight(bits)
    f = bf16.widen(bits)
    assert np.array_equal(f.view(np.uint32) >> 16, bits) and np.array_equal(f.view(np.uint32) & 0xFFFF, 0 * bits)
    assert np.array_equal(np.asarray(w), f) and np.array_equal(w.astype(np.float64), f.astype(np.float64))
    assert w.shape == (5, 7) and w.nbytes == 70
    with pytest.raises(ValueError, match="2-D uint16"):
        bf16.BF16Weight(f)


@pytest.mark.parametrize("mode", ["numba", "numpy"])
@pytest.mark.parametrize("lead", [(1, 1), (1, 5), (2, 3, 4), (1, 130)])
def test_linear_dispatch(lead, mode, monkeypatch):
    monkeypatch.setenv(accel.ENV, mode)
    rng = np.random.default_rng(len(lead))
    bits = random_bits(rng, (300, 96))
    x = rng.standard_normal(lead + (96,), dtype=np.float32)
    got = linear(x, bf16.BF16Weight(bits))
    plain = linear(x, bf16.widen(bits))
    assert got.shape == lead + (300,) and got.dtype == np.float32
    assert rel_err(got, plain) <= GEMV_TOL
    x64 = x.astype(np.float64)                       # float64: exact widening, the plain product bit for bit
    assert np.array_equal(linear(x64, bf16.BF16Weight(bits)), linear(x64, bf16.widen(bits)))
    with pytest.raises(ValueError, match="input width"):
        linear(x[..., :95], bf16.BF16Weight(bits))


def test_checkpoint_hands_out_bf16_only_where_it_should(monkeypatch):
    name = "model.language_model.layers.0.mlp.gate_proj.weight"
    norm = "model.language_model.layers.0.input_layernorm.weight"
    assert isinstance(Checkpoint(TINY).get(name), bf16.BF16Weight)
    assert isinstance(Checkpoint(TINY).get(norm), np.ndarray)                      # 1-D: widened
    assert isinstance(Checkpoint(TINY, np.float64).get(name), np.ndarray)          # float64: widened
    tower = next(n for n in Checkpoint(TINY).names if n.startswith("model.audio_tower") and
                 len(Checkpoint(TINY).shape(n)) == 2)
    assert isinstance(Checkpoint(TINY).get(tower), np.ndarray)                     # not the text decoder
    monkeypatch.setenv("MINIG3N_BF16", "widen")
    assert isinstance(Checkpoint(TINY).get(name), np.ndarray)
    monkeypatch.delenv("MINIG3N_BF16")
    monkeypatch.setenv(accel.ENV, "numpy")
    assert isinstance(Checkpoint(TINY).get(name), np.ndarray)                      # NumPy only: float32 cache


def _greedy(n=16):
    from minig3n.generate import Generator, Prompt
    gen = Generator.load(TINY)
    ids = [2, 17, 400, 33, 512, 7, 900, 64, 5, 250, 11, 700]
    from minig3n import decoder
    logits, _ = decoder.forward(gen.model, np.asarray([ids]))
    return [t for t, _ in gen.generate(Prompt(ids), n)], logits, gen.model.ckpt


def test_whole_model_bf16_kernels_vs_widened(monkeypatch):
    toks, logits, ck = _greedy()
    assert isinstance(ck.get(ck.text_prefix + "embed_tokens.weight"), bf16.BF16Weight)
    monkeypatch.setenv("MINIG3N_BF16", "widen")
    toks_w, logits_w, ck_w = _greedy()
    assert isinstance(ck_w.get(ck_w.text_prefix + "embed_tokens.weight"), np.ndarray)
    assert toks == toks_w
    assert rel_err(logits, logits_w) <= 1e-5
    sparse = [i for i, s in enumerate(ck.config.text.activation_sparsity_pattern) if s > 0]
    for i in sparse:   # decode reads their down_proj by columns: the loader's background thread made the copies
        assert ck.get(f"{ck.text_prefix}layers.{i}.mlp.down_proj.weight")._columns is not None
    assert sparse and ck.get(f"{ck.text_prefix}layers.{len(sparse)}.mlp.down_proj.weight")._columns is None


def test_load_text_model_prepares_the_sparse_layers_columns_behind():
    """``decoder.load_text_model`` starts ``prepare_columns_behind`` over exactly the sparse layers' down
    projections (the ones read by columns), and ``Checkpoint.get`` hands every thread the one weight object
    that keeps the copy."""
    import threading
    from minig3n import decoder
    model = decoder.load_text_model(TINY)
    behind = [t for t in threading.enumerate() if t.name == "minig3n-columns"]
    for t in behind:
        t.join(60)
    ck, cfg = model.ckpt, model.cfg
    for i, s in enumerate(cfg.activation_sparsity_pattern):
        w = ck.get(f"{ck.text_prefix}layers.{i}.mlp.down_proj.weight")
        assert (w._columns is not None) == (s > 0), i
    name = f"{ck.text_prefix}layers.0.mlp.up_proj.weight"
    got = []
    threads = [threading.Thread(target=lambda: got.append(ck.get(name))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 8 and all(g is got[0] for g in got) and isinstance(got[0], bf16.BF16Weight)


# Bounded-memory attention ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("window", [None, 5, 16])
@pytest.mark.parametrize("past,T,chunk", [(0, 23, 4), (9, 17, 5), (0, 8, 8), (30, 1, 4)])
@pytest.mark.parametrize("padded", [False, True])
def test_attend_blocks_matches_attend(dtype, window, past, T, chunk, padded):
    rng = np.random.default_rng(T + past + (window or 0))
    B, N, G, E = 2, 4, 2, 8
    S = past + T
    q = rng.standard_normal((B, T, N, E)).astype(dtype)
    k = rng.standard_normal((B, S, G, E)).astype(dtype)
    v = rng.standard_normal((B, S, G, E)).astype(dtype)
    real = None
    if padded:
        real = np.ones((B, S), bool)
        real[1, :3] = False                                   # row 1 left-padded by 3
    band = KeyBand(past + np.arange(T), np.arange(S), real, window)
    want = attend(q, k, v, band.mask())
    got = attend_blocks(q, k, v, band, chunk=chunk)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert rel_err(got, want) <= ATTN_TOL[dtype]
    if T <= chunk:
        assert np.array_equal(got, want)                      # short calls take the plain path


def _recording_reads(monkeypatch, calls, gate=None, populate=True):
    """The prefetch's reads replaced by ones that record (file offset, bytes asked) and read nothing: the
    ``SafetensorsFile.populate`` path, or (``populate=False``: populate reports it is not available) the
    ``os.preadv`` fallback. With ``gate`` (offset -> threading.Event) a read at that offset first waits for
    its event."""
    import os

    from minig3n.safetensors_io import SafetensorsFile

    def record(offset, n):
        if gate and offset in gate:
            gate[offset].wait(60)
        calls.append((offset, n))
    monkeypatch.setattr(SafetensorsFile, "populate", lambda self, offset, n: populate and (record(offset, n) or True))
    monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset: record(offset, sum(len(b) for b in buffers))
                        or sum(len(b) for b in buffers))


def _start(ck, name):
    f = ck.file_of(name)
    return f.data_start + f.header[name]["data_offsets"][0]


@pytest.mark.parametrize("populate", [True, False], ids=["populate", "preadv"])
def test_load_prefetches_the_bf16_matrices_but_not_the_ple_table(monkeypatch, populate):
    """Cold start: load_text_model reads ahead exactly the BF16 matrices it keeps as BF16 (their byte ranges,
    in PREFETCH_CHUNK requests: madvise(MADV_POPULATE_READ), or preadv where that is missing), in compute
    order with the head last, never the per-layer-embedding table (read row by row); float64 mode
    prefetches nothing."""
    from minig3n import checkpoint, decoder
    calls = []
    monkeypatch.setattr(checkpoint, "PREFETCH_CHUNK", 4096)       # several requests per matrix
    _recording_reads(monkeypatch, calls, populate=populate)
    model = decoder.load_text_model(TINY)
    ck, pre = model.ckpt, model.prefix
    ck.prefetcher.join(timeout=60)                            # the reads come from a background thread
    assert ck.prefetcher.error is None and ck.prefetcher.done == len(ck.prefetcher.index)
    head = pre + "embed_tokens.weight"                        # compute order: layer 0 before 1 before 2, head last
    starts = [off for off, _ in calls]
    q = [starts.index(_start(ck, pre + f"layers.{i}.self_attn.q_proj.weight")) for i in range(3)]
    assert q == sorted(q) and max(starts.index(_start(ck, n)) for n in ck.prefetcher.index) == starts.index(
        _start(ck, head))
    kept = [n for n in ck.names if n.startswith(pre) and ck.keeps_bf16(n) and "embed_tokens_per_layer" not in n]
    got = {}                                                  # offset -> bytes, requests merged per matrix
    for off, n in calls:
        assert n <= 4096
        got[off] = n
    for name in kept:                                         # each matrix: consecutive requests covering it
        f = ck.file_of(name)
        b, e = f.header[name]["data_offsets"]
        off = f.data_start + b
        while off < f.data_start + e:
            off += got.pop(off)
        assert off == f.data_start + e
    assert len(kept) > 10 and got == {}
    calls.clear()
    m64 = decoder.load_text_model(TINY, np.float64)
    assert calls == [] and m64.ckpt.prefetcher is None


def test_populate_reads_into_the_memory_map_where_the_kernel_offers_it():
    """SafetensorsFile.populate: madvise(MADV_POPULATE_READ) exists from Linux 5.14 (True there, False
    elsewhere, and nothing happens); the mapped values are unchanged either way."""
    import platform
    import re
    import sys

    from minig3n.checkpoint import Checkpoint
    ck = Checkpoint(TINY)
    name = ck.text_prefix + "layers.0.mlp.down_proj.weight"
    f = ck.file_of(name)
    before = np.array(f.raw(name))
    b, e = f.header[name]["data_offsets"]
    release = tuple(int(v) for v in re.findall(r"\d+", platform.release())[:2])
    expected = sys.platform.startswith("linux") and release >= (5, 14)
    assert f.populate(f.data_start + b + 3, e - b - 3) is expected     # an unaligned start is rounded down
    assert np.array_equal(f.raw(name), before)


def test_get_waits_until_the_prefetch_has_read_the_matrix(monkeypatch):
    """The first forward pass does not read the disk itself: ``Checkpoint.get`` of a prefetched matrix
    returns only once the background reader has read it (here the reader is held at layer 1's q_proj)."""
    import threading

    from minig3n import decoder
    from minig3n.checkpoint import Checkpoint
    ck = Checkpoint(TINY)
    name = ck.text_prefix + "layers.1.self_attn.q_proj.weight"
    gate = {_start(ck, name): threading.Event()}
    _recording_reads(monkeypatch, [], gate)
    model = decoder.load_text_model(ck)
    first = ck.text_prefix + "layers.0.self_attn.q_proj.weight"
    assert isinstance(ck.get(first), bf16.BF16Weight)         # read before the held one: returns
    got = []
    t = threading.Thread(target=lambda: got.append(ck.get(name)))
    t.start()
    t.join(0.5)
    assert t.is_alive() and got == []                         # still waiting for the reader
    gate[_start(ck, name)].set()
    t.join(60)
    assert not t.is_alive() and isinstance(got[0], bf16.BF16Weight)
    model.ckpt.prefetcher.join(60)
    assert model.ckpt.prefetcher.done == len(model.ckpt.prefetcher.index)


@pytest.mark.parametrize("shape", [(1536, 384), (130, 70), (7, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("n", [64, 100, 200])
def test_float32_linear_on_the_tiles_matches_blas(shape, n, monkeypatch):
    """``ops.linear`` with a float32 weight and at least 64 tokens, numba mode: ``accel.linear`` (the prefill
    tiles of ``_gemm_kernels.gemm_parallel`` reading float32 weights as they are) against its NumPy twin
    ``x @ W.T`` (BLAS) and the float64 product; tolerance GEMV_TOL. A [B, T, in] input with a bias."""
    monkeypatch.setenv(accel.ENV, "numba")
    calls = []
    real = accel.linear
    monkeypatch.setattr(accel, "linear", lambda x, w: calls.append(x.shape) or real(x, w))
    rng = np.random.default_rng(shape[0] + n)
    w = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[1]))
    b = rng.standard_normal(shape[0], dtype=np.float32)
    x = rng.standard_normal((2, n // 2, shape[1]), dtype=np.float32)
    got = linear(x, w, b)
    twin = x @ w.T + b
    exact = x.astype(np.float64) @ w.astype(np.float64).T + b
    assert calls == [(n // 2 * 2, shape[1])]
    assert got.dtype == np.float32 and got.shape == (2, n // 2, shape[0])
    assert rel_err(got, twin) <= GEMV_TOL and rel_err(got, exact) <= GEMV_TOL


def test_float32_linear_rule(monkeypatch):
    """Who takes ``accel.linear``: float32 input and weight, >= accel.MIN_ROWS tokens, numba mode. Fewer
    tokens, float64, or MINIG3N_ACCEL=numpy: BLAS, and the result is ``x @ W.T`` exactly."""
    calls = []
    real = accel.linear
    monkeypatch.setattr(accel, "linear", lambda x, w: calls.append(x.shape) or real(x, w))
    rng = np.random.default_rng(3)
    w = rng.standard_normal((12, 16), dtype=np.float32)
    monkeypatch.setenv(accel.ENV, "numba")
    for x in (rng.standard_normal((accel.MIN_ROWS - 1, 16), dtype=np.float32),
              rng.standard_normal((accel.MIN_ROWS, 16)),                               # float64
              rng.standard_normal((accel.MIN_ROWS, 16), dtype=np.float32).astype(np.float16)):
        assert np.array_equal(linear(x, w), x @ w.astype(x.dtype).T)
    assert calls == []
    x = rng.standard_normal((accel.MIN_ROWS, 16), dtype=np.float32)
    linear(x, w)
    assert calls == [(accel.MIN_ROWS, 16)]
    monkeypatch.setenv(accel.ENV, "numpy")
    assert np.array_equal(linear(x, w), x @ w.T) and len(calls) == 1
