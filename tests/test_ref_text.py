"""Reference tier: minig3n's text decoder against transformers 5.24, live, on fresh seeds and configs.

Models are built in-process (``tests/reference/text_models.py``), saved with ``save_pretrained`` into
``tmp_path`` and loaded by minig3n's checkpoint reader, so the loader is part of what is checked.
Tolerances: float64 (reference lifted, numerics doc section 8) <= 1e-10 relative; float32 <= 1e-4 on logits
with identical argmax, unless the model itself is noisier than that in float32: the bound is then twice the
reference's own float32 error (its float32 logits against its lifted float64 ones), because two float32
computations of the same logits in different summation orders can each land that far from the float64
values, on opposite sides. minig3n's float32 logits must also be within that bound of the float64 ones.
(Seed 12 of ``all_full_shared``, every layer sparse: the reference's float32 logits are 1.4e-4 from its float64
ones; minig3n's 1.0e-4 with OpenBLAS's Haswell kernel, 1.3e-4 with SkylakeX; the two float32 results are
1.6e-4 and 1.0e-5 apart. On the other configurations the reference's own float32 error is 2e-6 to 3e-5.)
"""
import numpy as np
import pytest
import torch

from minig3n import decoder
from minig3n.kv_cache import KVCache
from tests.golden_io import rel_err
from tests.reference.lift_text import lifted_text
from tests.reference.text_models import F, tiny_causal_lm, tiny_multimodal

pytestmark = [pytest.mark.reference, pytest.mark.text, pytest.mark.usefixtures("one_torch_thread")]


CONFIGS = {
    "default": {},
    "k3_active1_noscale": dict(altup_num_inputs=3, altup_active_idx=1, altup_correct_scale=False),
    "no_sharing_k2": dict(num_kv_shared_layers=0, altup_num_inputs=2, sliding_window=5),
    "all_full_shared": dict(layer_types=[F] * 7, num_kv_shared_layers=4, activation_sparsity_pattern=[0.95] * 7),
    "gqa4_rank1": dict(num_attention_heads=4, num_key_value_heads=1, laurel_rank=1, head_dim=8, hidden_size=24),
}


def _ids(vocab, B=2, T=20, pad=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    ids[:, 0] = 2
    ids[0, 4] = vocab - 1                          # >= vocab_size_per_layer_input: PLE row 0
    mask = torch.ones(B, T, dtype=torch.long)
    if B > 1 and pad:
        mask[1, :pad], ids[1, :pad] = 0, 0
    return ids, mask


def _check(ours32, ours64, ref32, ref64):
    e64, e32 = rel_err(ours64, ref64), rel_err(ours32, ref32)
    bound = max(1e-4, 2 * rel_err(ref32, ref64))  # the model's own float32 noise (module docstring)
    assert e64 <= 1e-10, f"float64 {e64:.3g}"
    assert e32 <= bound, f"float32 {e32:.3g} > {bound:.3g}"
    assert rel_err(ours32, ref64) <= bound, f"float32 vs float64 {rel_err(ours32, ref64):.3g} > {bound:.3g}"
    assert (ours32.argmax(-1) == ref32.argmax(-1)).all()
    return e64, e32


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [11, 12])
def test_causal_lm_logits(tmp_path, name, seed):
    ref = tiny_causal_lm(seed, **CONFIGS[name])
    ref.save_pretrained(tmp_path)
    ids, mask = _ids(ref.config.vocab_size, seed=seed)
    with torch.no_grad():
        r32 = ref(ids, attention_mask=mask).logits.numpy()
        with lifted_text():
            r64 = ref.double()(ids, attention_mask=mask).logits.numpy()
    o32, _ = decoder.forward(decoder.load_text_model(tmp_path, np.float32), ids.numpy(), attention_mask=mask.numpy())
    o64, _ = decoder.forward(decoder.load_text_model(tmp_path, np.float64), ids.numpy(), attention_mask=mask.numpy())
    _check(o32, o64, r32, r64)


def test_generate_style_positions(tmp_path):
    """Left padding with ``position_ids = cumsum(mask) - 1`` (what the reference's generate passes)."""
    ref = tiny_causal_lm(21)
    ref.save_pretrained(tmp_path)
    ids, mask = _ids(ref.config.vocab_size, pad=7)
    pos = decoder.positions_from_mask(mask.numpy())
    with torch.no_grad(), lifted_text():
        r64 = ref.double()(ids, attention_mask=mask, position_ids=torch.tensor(pos)).logits.numpy()
    o64, _ = decoder.forward(decoder.load_text_model(tmp_path, np.float64), ids.numpy(), attention_mask=mask.numpy(),
                             position_ids=pos)
    assert rel_err(o64, r64) <= 1e-10


def test_cache_decoding_matches_reference_cache(tmp_path):
    """Prefill 6 tokens, then 1 token per call up to 30 (window 8, KV-shared layers of both types), left
    padding: every step's logits equal the reference's DynamicCache decoding (lifted float64)."""
    from transformers import DynamicCache
    ref = tiny_causal_lm(31)
    ref.save_pretrained(tmp_path)
    ids, mask = _ids(ref.config.vocab_size, T=30, pad=4)
    model = decoder.load_text_model(tmp_path, np.float64)
    ref64 = ref.double()
    cache, rc = KVCache.empty(model.cfg, 2, np.float64), DynamicCache(config=ref64.config)
    worst = 0.0
    with torch.no_grad(), lifted_text():
        for a, b in [(0, 6)] + [(t, t + 1) for t in range(6, 30)]:
            out = ref64(ids[:, a:b], attention_mask=mask[:, :b], cache=rc, use_cache=True)
            rc = out.cache
            ours, cache = decoder.forward(model, ids[:, a:b].numpy(), attention_mask=mask[:, :b].numpy(), cache=cache)
            worst = max(worst, rel_err(ours, out.logits.numpy()))
    assert worst <= 1e-10


def test_multimodal_language_part(tmp_path):
    """The language part of Gemma3nForConditionalGeneration (prefix ``model.language_model.``) on text ids."""
    ref = tiny_multimodal(41)
    ref.save_pretrained(tmp_path)
    ids, mask = _ids(250)
    with torch.no_grad():
        r32 = ref(input_ids=ids, attention_mask=mask).logits.numpy()
        with lifted_text():
            r64 = ref.double()(input_ids=ids, attention_mask=mask).logits.numpy()
    m32, m64 = decoder.load_text_model(tmp_path, np.float32), decoder.load_text_model(tmp_path, np.float64)
    assert m64.prefix == "model.language_model."
    _check(decoder.forward(m32, ids.numpy(), attention_mask=mask.numpy())[0],
           decoder.forward(m64, ids.numpy(), attention_mask=mask.numpy())[0], r32, r64)


@pytest.mark.parametrize("kind", ["causal", "multimodal"])
def test_trace_vs_reference_tracer(tmp_path, kind):
    """``minig3n trace`` and the reference tracer (lifted float64) on the same ids: compare exits 0 at 1e-10,
    with every name present in both files."""
    import json

    from minig3n.checkpoint import load_safetensors
    from minig3n.cli import main
    from tests.reference.trace_reference import main as ref_main
    ref = tiny_causal_lm(51) if kind == "causal" else tiny_multimodal(52)
    d = tmp_path / "ckpt"
    ref.save_pretrained(d)
    ids = "2,17,5,40,41,42,43,44,45,46,47,48,49,60"
    a, b = str(tmp_path / "ref.safetensors"), str(tmp_path / "ours.safetensors")
    assert ref_main(["--model", str(d), "--ids", ids, "--out", a, "--dtype", "float64"]) == 0
    assert main(["trace", "--model", str(d), "--ids", ids, "--out", b, "--dtype", "float64"]) == 0
    assert main(["compare", a, b, "--rtol", "1e-10"]) == 0
    ta, ma = load_safetensors(a)
    tb, mb = load_safetensors(b)
    assert set(ta) == set(tb) and json.loads(ma["order"]) == json.loads(mb["order"])


def test_float64_needs_the_lift(tmp_path):
    """Why the lift exists: ``model.double()`` without it differs from true float64 by far more than 1e-10
    (its float32 islands), while the lift leaves float32 results bit-identical."""
    ref = tiny_causal_lm(61)
    ref.save_pretrained(tmp_path)
    ids, mask = _ids(ref.config.vocab_size)
    with torch.no_grad():
        plain32 = ref(ids, attention_mask=mask).logits.numpy()
        with lifted_text():
            lifted32 = ref(ids, attention_mask=mask).logits.numpy()
        r64 = ref.double()
        unlifted = r64(ids, attention_mask=mask).logits.numpy()
    np.testing.assert_array_equal(plain32, lifted32)
    ours, _ = decoder.forward(decoder.load_text_model(tmp_path, np.float64), ids.numpy(), attention_mask=mask.numpy())
    assert rel_err(ours, unlifted) > 1e-8


def test_constants_match_torch():
    """The float32 constants minig3n rebuilds: RoPE inv_freq (bit-exact for head_dim <= 64; at 256 at most 2 of 128
    entries 1 ulp off, torch's powf not being correctly rounded), the sparsity z-score, and GELU in both
    precisions."""
    from minig3n.attention import rope_inv_freq
    from minig3n.mlp import std_multiplier
    from minig3n.ops import gelu_tanh
    for base in (10_000.0, 1_000_000.0):
        for dim in (8, 16, 32, 64, 256):
            want = (1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))).numpy()
            got = rope_inv_freq(base, dim)
            ulps = np.abs(got.view(np.int32) - want.view(np.int32))
            assert ulps.max() <= (0 if dim <= 64 else 1) and (ulps > 0).sum() <= 2
    normal = torch.distributions.normal.Normal(0, 1)
    for s in (0.95, 0.9, 0.8, 0.5, 0.99):
        assert float(std_multiplier(s)) == normal.icdf(torch.tensor(s, dtype=torch.float32)).item()
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    g = torch.nn.functional.gelu
    assert np.abs(gelu_tanh(x.numpy()) - g(x, approximate="tanh").numpy()).max() <= 1e-15
    x32 = x.float()
    assert np.abs(gelu_tanh(x32.numpy()) - g(x32, approximate="tanh").numpy()).max() <= 1e-6
