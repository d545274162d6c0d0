"""MatFormer parameter accounting and the published configuration table (NumPy tier, no files needed)."""
import subprocess
import sys

import numpy as np
import pytest

from minig3n.config import TextConfig, e2b_config, e4b_config
from minig3n.errors import InputError
from tests.adapters.matformer import (run_count_config, run_published_spec, run_published_table,
                                      run_slice_config)

pytestmark = pytest.mark.matformer

# What Google's MatFormer Lab notebook prints for the "Config for official E2B Model" row applied to E4B.
NOTEBOOK_TOTAL, NOTEBOOK_TEXT, NOTEBOOK_EFFECTIVE = 5_976_833_408, 4_456_156_768, 1_905_495_648


def test_official_e2b_row_on_e4b_matches_the_notebook():
    """Exact: text counts the k_proj/v_proj/k_norm that the 10 KV-shared layers carry in the checkpoint;
    total counts the tied LM head once more and no vision stem bias (the official file has none)."""
    ffn, skip = run_published_spec("Config for official E2B Model")
    c = run_count_config(run_slice_config(e4b_config(), ffn, skip))
    print(f"total {c['total']:,} (notebook {NOTEBOOK_TOTAL:,}), text {c['text']:,} (notebook {NOTEBOOK_TEXT:,}), "
          f"effective {c['effective']:,} (notebook {NOTEBOOK_EFFECTIVE:,})")
    assert c["text"] == NOTEBOOK_TEXT
    assert c["effective"] == NOTEBOOK_EFFECTIVE
    assert c["total"] == NOTEBOOK_TOTAL


def test_the_64_parameter_difference_is_the_vision_stem_bias():
    """A sum over the reference's modules is 64 above the notebook's total: timm's MobileNetV5 stem conv has a
    bias [64] (stem_size 64, ``model.vision_tower.timm_model.conv_stem.conv.bias``) that the official
    checkpoint does not store (ports such as mlx-vlm inject zeros for it). The vision chapter's shape table
    lists it (the encoder reads it when present); the count leaves exactly that tensor out."""
    from minig3n.mobilenetv5 import vision_weight_shapes
    shapes = vision_weight_shapes(e4b_config().vision, "model.vision_tower.timm_model.")
    assert shapes["model.vision_tower.timm_model.conv_stem.conv.bias"] == (64,)
    with_bias = sum(int(np.prod(s)) for s in shapes.values())
    ffn, skip = run_published_spec("official E2B")
    c = run_count_config(run_slice_config(e4b_config(), ffn, skip))
    assert c["vision"] == with_bias - 64
    assert c["total"] - c["vision"] + with_bias == NOTEBOOK_TOTAL + 64
    assert c["lm_head"] == 262_400 * 2048 and c["total"] == c["text"] + c["audio"] + c["vision"] + c["embedders"] \
        + c["lm_head"]


def test_e2b_row_is_the_e2b_preset():
    """Slicing E4B's config by the official E2B row gives E2B's text config (30 layers of 8192, 10 KV-shared
    layers, the same attention pattern and sparsity) and the same parameter counts."""
    ffn, skip = run_published_spec("E2B")
    sliced, e2b = run_slice_config(e4b_config(), ffn, skip), e2b_config()
    for key in ("num_hidden_layers", "intermediate_size", "num_kv_shared_layers", "layer_types",
                "activation_sparsity_pattern"):
        assert getattr(sliced.text, key) == getattr(e2b.text, key), key
    assert run_count_config(sliced) == run_count_config(e2b)


def test_every_published_row_within_one_percent():
    """Our effective count of each row (E4B sliced by it) against the table's "# Effective Params (B)"; the
    table rounds to 10 M, and at least one row (E3.79B block-level, 3.74) differs from its name."""
    worst = 0.0
    for row in run_published_table():
        c = run_count_config(run_slice_config(e4b_config(), row["ffn_dims"], row["skip_layers"]))
        rel = c["effective"] / (row["effective_params_b"] * 1e9) - 1
        print(f"{row['name']:34s} ours {c['effective'] / 1e9:.4f} B  table {row['effective_params_b']:.2f} B  "
              f"({100 * rel:+.2f} %)  MMLU {row['mmlu']:.1f} %")
        worst = max(worst, abs(rel))
        assert abs(rel) <= 0.01, row["name"]
    assert len(run_published_table()) == 16
    print(f"worst relative difference {100 * worst:.2f} % (limit 1 %)")


def test_text_count_derived_by_hand():
    """A tiny config, counted by hand. D=8, P=2, L=3, N=2 heads, G=1 kv head, E=4, R=2, K=4 streams,
    V=20, U=16, I=[6, 4, 6], layer 2 KV-shared (num_kv_shared_layers=1):

    * embed_tokens 20*8 = 160; embed_tokens_per_layer 16*(3*2) = 96; per_layer_model_projection 6*8 = 48;
      per_layer_projection_norm 2; norm 8; altup_projections + unembed 2*3*64 = 384. Sum 698.
    * per layer without MLP and K/V: q 8*8=64, o 64, q_norm 4, 4 layernorms 32, altup 8+16+64+32+8 = 128
      (correct_output_scale, correction_coefs, prediction_coefs, modality_router, router_norm),
      laurel 16+16+8 = 40, per-layer gate 16 + projection 16 + norm 8 = 40: 372.
    * MLP 3*D*I: 144, 96, 144; K/V per layer (stored for the shared one too): k 4*8 + v 32 + k_norm 4 = 68.
    text = 698 + 3*372 + 384 + 3*68 = 2402; effective = 2402 - 160 - 96 = 2146.
    """
    text = TextConfig(vocab_size=20, vocab_size_per_layer_input=16, hidden_size=8, hidden_size_per_layer_input=2,
                      intermediate_size=[6, 4, 6], num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=4, laurel_rank=2, num_kv_shared_layers=1,
                      layer_types=["full_attention", "sliding_attention", "full_attention"])
    from minig3n.config import Gemma3nConfig
    c = run_count_config(Gemma3nConfig(text=text, model_type="gemma3n_text"))
    assert c["text"] == 2402
    assert c["effective"] == 2146
    assert c["total"] == 2402 + 160          # + the tied LM head, counted separately


@pytest.mark.parametrize("query, expected", [
    ("Config for official E2B Model", "Config for official E2B Model"), ("e2b", "Config for official E2B Model"),
    ("E4B", "Main model"), ("main", "Main model"), ("E2.98B block", "Config for E2.98B (block-level)"),
    ("config for e3.18b (layer-level)", "Config for E3.18B (layer-level)"), ("2.54", "Config for E2.54B (layer-level)"),
    ("E2.49B", "Config for E2.49B (block-level)"),
])
def test_config_names_match_robustly(query, expected):
    from minig3n.matformer import find_published
    assert find_published(query).name == expected


@pytest.mark.parametrize("query, words", [("E2.98B", "ambiguous"), ("E9B", "matches no published config"),
                                          ("", "empty")])
def test_bad_config_names_list_the_choices(query, words):
    from minig3n.matformer import find_published
    with pytest.raises(InputError, match=words) as e:
        find_published(query)
    if "no published" in words:
        assert "Config for E3.24B (block-level)" in str(e.value)


def test_published_table_parses_as_published():
    """Spot checks against the CSV's text: E2B row = 30 x 2048*4 with layers 20..24 skipped; widths are 8192 or
    16384 and the number of widths equals the number of kept layers in every row."""
    rows = {r["name"]: r for r in run_published_table()}
    e2b = rows["Config for official E2B Model"]
    assert e2b["ffn_dims"] == [8192] * 30 and e2b["skip_layers"] == [20, 21, 22, 23, 24] and e2b["mmlu"] == 50.9
    for r in rows.values():
        assert len(r["ffn_dims"]) == 35 - len(r["skip_layers"])
        assert set(r["ffn_dims"]) <= {8192, 16384}


def test_params_command_prints_the_counts():
    out = subprocess.run([sys.executable, "-m", "minig3n", "params", "--config", "official E2B"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for n in (NOTEBOOK_TOTAL, NOTEBOOK_TEXT, NOTEBOOK_EFFECTIVE):
        assert f"{n:,}" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "minig3n", "params", "--config", "E3.79B"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "ambiguous" in bad.stderr and "block-level" in bad.stderr
