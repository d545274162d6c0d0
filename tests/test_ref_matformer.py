"""MatFormer slicing against the reference: a tiny random E4B-like Gemma3nForCausalLM saved by transformers, cut
by minig3n, loaded back by transformers and by minig3n; float64 logits must agree (lifted reference)."""
import json

import numpy as np
import pytest
import torch

from tests.adapters.matformer import run_slice
from tests.golden_io import rel_err

pytestmark = [pytest.mark.reference, pytest.mark.matformer]

torch.set_num_threads(1)

# 12 layers, full attention at 4 and 9; layers 8..11 reuse K/V (producers: 7 sliding, 4 full); sparsity 0.95
# on layers 0..9 (the default for L > 10); per-layer widths 128 then 96; sliding window 6 < the 14 tokens.
TEXT = dict(vocab_size=320, vocab_size_per_layer_input=256, hidden_size=64, hidden_size_per_layer_input=8,
            intermediate_size=[128] * 6 + [96] * 6, num_hidden_layers=12, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, laurel_rank=8, num_kv_shared_layers=4, sliding_window=6,
            max_position_embeddings=128)
SKIP = [2, 8, 10]                                  # a sparse sliding layer, two KV-shared sliding layers
WIDTHS = [128, 64, 100, 128, 1, 96, 50, 96, 48]    # kept source layers 0 1 3 4 5 6 7 9 11
IDS = [[2, 17, 255, 3, 299, 40, 41, 7, 9, 11, 300, 318, 5, 6]]   # ids >= 256 read PLE row 0


def _reference_model(seed=0):
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig
    torch.manual_seed(seed)
    model = Gemma3nForCausalLM(Gemma3nTextConfig(**TEXT)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:                        # norms, correct_output_scale: away from 1
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5))
            elif "altup" in name and ("coefs" in name):
                p.copy_(torch.randn_like(p) * 0.2)  # zero-initialised by the reference
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn_like(p) * 0.25)
            elif "embed_tokens_per_layer" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The reference model saved in BF16 (as the official checkpoints), and the minig3n slice of it."""
    root = tmp_path_factory.mktemp("ref_mf")
    model = _reference_model()
    model.to(torch.bfloat16).save_pretrained(root / "full")
    run_slice(root / "full", root / "cut", WIDTHS, SKIP)
    return root


def _load_reference(directory):
    """Loaded in float32, then ``.double()``: the scale buffers (1/sqrt(2), sqrt(D) ...) are built at construction
    and must keep their float32 values (numerics doc section 8); loading with dtype=float64 would build them in
    float64 and shift the logits by ~4e-9 relative. Weights: BF16 -> float32 -> float64, exact."""
    from transformers import Gemma3nForCausalLM
    model, info = Gemma3nForCausalLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True,
                                                     attn_implementation="eager")
    return model.double().eval(), info


def test_reference_loads_the_slice_with_nothing_missing(saved):
    """Every parameter of the sliced model comes from the file (a missing one would be randomly initialised
    and hide a slicing bug), and it is the prefix / subset of the full model's parameter."""
    cut, info = _load_reference(saved / "cut")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    full, _ = _load_reference(saved / "full")
    kept = [i for i in range(12) if i not in SKIP]
    P = TEXT["hidden_size_per_layer_input"]
    cols = torch.cat([torch.arange(P * i, P * i + P) for i in kept])
    fs, cs = full.state_dict(), cut.state_dict()
    for name, value in cs.items():
        if ".layers." in name:
            parts = name.split(".")
            new = int(parts[2])
            src = fs[".".join(parts[:2] + [str(kept[new])] + parts[3:])]
            d = WIDTHS[new]
            want = src[:d] if name.endswith(("gate_proj.weight", "up_proj.weight")) else \
                src[:, :d] if name.endswith("down_proj.weight") else src
        elif name.endswith("embed_tokens_per_layer.weight"):
            want = fs[name][:, cols]
        elif name.endswith("per_layer_model_projection.weight"):
            want = fs[name][cols]
        else:
            want = fs[name]
        assert torch.equal(value, want), name
    assert cut.config.num_kv_shared_layers == 2 and cut.config.kv_sharing_modes == [None, None, None, "store", None,
                                                                                    None, "store", "reuse", "reuse"]


def test_sliced_model_logits_match_the_reference_float64(saved):
    """minig3n's float64 forward of the slice against transformers' lifted float64 forward of the same files:
    rel_err <= 1e-10 (tests/README.md, float64 tier)."""
    from minig3n.decoder import forward, load_text_model
    from tests.reference.lift_text import lifted_text
    ids = np.array(IDS)
    for name in ("cut", "full"):
        ref, _ = _load_reference(saved / name)
        with torch.no_grad(), lifted_text():
            want = ref(torch.tensor(ids), use_cache=False).logits.numpy()
        got, _ = forward(load_text_model(saved / name, np.float64), ids)
        err = rel_err(got, want)
        print(f"{name}: float64 logits rel err {err:.2e} (limit 1e-10), max |logit| {np.abs(want).max():.2f}")
        assert err <= 1e-10
        assert np.array_equal(got.argmax(-1), want.argmax(-1))


def test_sliced_model_differs_from_the_full_one(saved):
    """Sanity: the slice really is another model (otherwise the agreement above proves little)."""
    cut, _ = _load_reference(saved / "cut")
    full, _ = _load_reference(saved / "full")
    ids = torch.tensor(IDS)
    with torch.no_grad():
        a, b = cut(ids, use_cache=False).logits, full(ids, use_cache=False).logits
    assert (a - b).abs().max() > 1e-3


def test_config_roundtrips_through_the_reference(saved):
    """transformers reads the rewritten config.json with the values minig3n wrote."""
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(saved / "cut")
    written = json.loads((saved / "cut" / "config.json").read_text())
    assert cfg.num_hidden_layers == 9 and list(cfg.intermediate_size) == WIDTHS
    assert list(cfg.layer_types) == written["layer_types"]
    assert list(cfg.activation_sparsity_pattern) == [0.95] * 8 + [0.0]


@pytest.mark.parametrize("row", ["Main model", "Config for official E2B Model", "Config for E2.69B (layer-level)"])
def test_counts_match_the_reference_modules(row):
    """count_config's parts against the parameters of transformers' Gemma3nForConditionalGeneration built (on
    the meta device) with the sliced E4B config. Two named differences, both from what the official checkpoint
    stores: the KV-shared layers' k_proj/v_proj/k_norm (stored, counted; the 5.24 modules do not exist) and the
    vision stem's ``conv_stem.conv.bias`` [64] (timm creates it; the checkpoint has none)."""
    from transformers import Gemma3nConfig as HFConfig, Gemma3nForConditionalGeneration
    from minig3n.config import e4b_config
    from minig3n.matformer import SliceSpec, count_config, find_published, slice_config
    cfg = slice_config(e4b_config(), SliceSpec.from_published(find_published(row)))
    hf = HFConfig()
    t = hf.text_config
    for key in ("num_hidden_layers", "intermediate_size", "num_kv_shared_layers", "layer_types",
                "activation_sparsity_pattern"):
        setattr(t, key, getattr(cfg.text, key))
    with torch.device("meta"):
        model = Gemma3nForConditionalGeneration(hf)
    parts = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        key = name.split(".")[1] if name.startswith("model.") else name.split(".")[0]
        parts[key] = parts.get(key, 0) + p.numel()
    shared = sum(1 for m in t.kv_sharing_modes if m == "reuse")
    G, E, D = t.num_key_value_heads, t.head_dim, t.hidden_size
    c = count_config(cfg)
    print(f"{row}: text {c.text:,} = reference {parts['language_model']:,} + {shared} shared layers x "
          f"{2 * G * E * D + E:,}; vision {c.vision:,} = reference {parts['vision_tower']:,} - 64 (stem bias)")
    assert c.text == parts["language_model"] + shared * (2 * G * E * D + E)
    assert c.vision == parts["vision_tower"] - 64
    assert c.audio == parts["audio_tower"]
    assert c.embedders == parts["embed_audio"] + parts["embed_vision"]
    assert c.lm_head == parts["lm_head"]


def test_multimodal_slice_loads_in_the_reference(tiny_dir, tmp_path):
    """The tiny multimodal checkpoint (Gemma3nForConditionalGeneration, BF16), cut by minig3n: transformers
    loads it with nothing missing, its towers equal the source's, and its float64 text logits match minig3n's
    (rel_err <= 1e-10)."""
    from tests.reference.timm_custom import register
    register()  # registers mobilenetv5_custom_enc with timm
    from transformers import Gemma3nForConditionalGeneration
    from minig3n.decoder import forward, load_text_model
    from tests.reference.lift_text import lifted_text
    out = run_slice(tiny_dir, tmp_path / "cut", [100, 160, 64, 64, 192, 50, 16, 112], [1, 7])

    def load(d):
        m, info = Gemma3nForConditionalGeneration.from_pretrained(d, dtype=torch.float32, output_loading_info=True,
                                                                  attn_implementation="eager")
        return m.double().eval(), info

    cut, info = load(out)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    full, _ = load(tiny_dir)
    fs = full.state_dict()
    for name, value in cut.state_dict().items():
        if "language_model" not in name:
            assert torch.equal(value, fs[name]), name
    ids = np.array([[2, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190]])
    with torch.no_grad(), lifted_text():
        want = cut(input_ids=torch.tensor(ids), use_cache=False).logits.numpy()
    got, _ = forward(load_text_model(out, np.float64), ids)
    err = rel_err(got, want)
    print(f"multimodal slice: float64 logits rel err {err:.2e} (limit 1e-10)")
    assert err <= 1e-10
