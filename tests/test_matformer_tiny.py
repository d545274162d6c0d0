"""Slicing the tiny random multimodal checkpoint (weights/tiny-random-gemma3n, written by transformers): the
audio and vision towers and every non-weight file survive unchanged, and minig3n runs the slice."""
import json

import numpy as np
import pytest

from minig3n.checkpoint import Checkpoint
from tests.adapters.matformer import run_count_checkpoint, run_slice

pytestmark = pytest.mark.matformer

# 10 layers: full attention at 4 and 9; layers 6..9 reuse K/V of 5 (sliding) and 4 (full); sparsity on 0..2.
SKIP = [1, 7]                                        # a sparse layer and a KV-shared one
WIDTHS = [100, 160, 64, 64, 192, 50, 16, 112]         # kept source layers 0 2 3 4 5 6 8 9


def _bits(directory):
    ck = Checkpoint(directory)
    return {n: (ck.stored_dtype(n), np.array(ck.files[ck.where[n]].raw(n))) for n in ck.names}


def test_towers_and_files_survive(tiny_dir, tmp_path):
    out = run_slice(tiny_dir, tmp_path / "cut", WIDTHS, SKIP)
    src, dst = _bits(tiny_dir), _bits(out)
    towers = [n for n in src if not n.startswith("model.language_model.")]
    assert any(n.startswith("model.audio_tower.") for n in towers)
    assert any(n.startswith("model.vision_tower.") for n in towers)
    for n in towers:
        assert dst[n][0] == src[n][0] and np.array_equal(dst[n][1], src[n][1]), n
    for f in tiny_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    a, b = json.loads((tiny_dir / "config.json").read_text()), json.loads((out / "config.json").read_text())
    assert {k: v for k, v in a.items() if k != "text_config"} == {k: v for k, v in b.items() if k != "text_config"}
    t = b["text_config"]
    assert t["num_hidden_layers"] == 8 and t["intermediate_size"] == WIDTHS and t["num_kv_shared_layers"] == 3
    assert t["activation_sparsity_pattern"] == [0.95, 0.95] + [0.0] * 6
    assert t["layer_types"][3] == t["layer_types"][7] == "full_attention"


def test_slice_runs_in_minig3n(tiny_dir, tmp_path):
    """The slice loads (every text tensor's shape checked) and gives finite logits that differ from the full
    model's: the cut is real."""
    from minig3n.decoder import forward, load_text_model
    out = run_slice(tiny_dir, tmp_path / "cut", WIDTHS, SKIP)
    ids = np.array([[2, 10, 20, 30, 40, 50, 60, 70]])
    cut, _ = forward(load_text_model(out, np.float32), ids)
    full, _ = forward(load_text_model(tiny_dir, np.float32), ids)
    assert np.isfinite(cut).all() and np.abs(cut - full).max() > 1e-3


def test_producer_layers_are_refused(tiny_dir, tmp_path, capsys):
    from minig3n.cli import main
    for layer, readers in ((5, "[6, 7, 8]"), (4, "[9]")):
        code = main(["slice", "--model", str(tiny_dir), "--out", str(tmp_path / "x"), "--skip-layers", str(layer)])
        err = capsys.readouterr().err
        assert code == 2 and f"layer {layer} cannot be skipped" in err and readers in err, err
    assert list(tmp_path.iterdir()) == []


def test_counts_of_the_slice(tiny_dir, tmp_path):
    """Only the text part shrinks; the towers' counts are those of the source."""
    out = run_slice(tiny_dir, tmp_path / "cut", WIDTHS, SKIP)
    a, b = run_count_checkpoint(tiny_dir), run_count_checkpoint(out)
    for part in ("audio", "vision", "embedders", "lm_head"):
        assert a[part] == b[part] > 0, part
    assert a["text"] > b["text"] and a["total"] - b["total"] == a["text"] - b["text"]


def test_config_count_against_the_reference_written_checkpoint(tiny_dir):
    """count_config describes the official layout; this checkpoint was written by transformers 5.24, which
    stores no k_proj/v_proj/k_norm for the 4 KV-shared layers (G*E*D*2 + E each, G=2, E=16, D=64) and does
    store timm's stem bias (16 channels). With those two named differences the counts agree exactly."""
    from minig3n.config import Gemma3nConfig
    from tests.adapters.matformer import run_count_config
    cfg = Gemma3nConfig.from_file(tiny_dir / "config.json")
    t = cfg.text
    shared_kv = t.num_kv_shared_layers * (2 * t.num_key_value_heads * t.head_dim * t.hidden_size + t.head_dim)
    from_config, stored = run_count_config(cfg), run_count_checkpoint(tiny_dir)
    assert stored["text"] == from_config["text"] - shared_kv
    assert stored["vision"] == from_config["vision"] + 16
    for part in ("audio", "embedders", "lm_head"):
        assert stored[part] == from_config[part], part
