"""``minig3n trace`` and ``minig3n compare`` (NumPy tier; the reference-vs-minig3n run is in
test_ref_text.py)."""
import json

import numpy as np
import pytest

from minig3n.checkpoint import load_safetensors, save_safetensors
from minig3n.cli import main
from tests.adapters import text as A
from tests.golden_io import load_golden

pytestmark = pytest.mark.text

IDS = "2,17,5,260,9,30,31,32,33,40,41"    # 11 tokens (window 8), one id >= the PLE vocab (256)


def _ckpt(tmp_path, name, weights=None):
    g = load_golden("text_model_causal")
    d = tmp_path / name
    d.mkdir()
    save_safetensors(d / "model.safetensors", weights or g.weights)
    (d / "config.json").write_text(json.dumps({**g.meta["config"], "model_type": "gemma3n_text"}))
    return d


def test_trace_writes_every_name_in_order(tmp_path):
    d = _ckpt(tmp_path, "a")
    out = tmp_path / "a.safetensors"
    assert main(["trace", "--model", str(d), "--ids", IDS, "--out", str(out), "--dtype", "float64"]) == 0
    tensors, meta = load_safetensors(out)
    order = json.loads(meta["order"])
    assert set(order) == set(tensors) and json.loads(meta["ids"]) == [int(i) for i in IDS.split(",")]
    assert order[0] == "model.embed_tokens" and order[-2:] == ["lm_head", "logits"]
    L = 7
    for li in range(L):
        for sub in ("laurel", "self_attn", "mlp", "altup", "per_layer_input_gate"):
            assert f"model.layers.{li}.{sub}" in tensors
        assert tensors[f"model.layers.{li}"].shape == (4, 11, 32)
    assert order.index("model.layers.2.laurel") < order.index("model.layers.2.self_attn") < order.index("model.layers.2")
    model = A.run_load_model(d, np.float64)
    logits, _ = A.run_forward(model, np.array([[int(i) for i in IDS.split(",")]]))
    np.testing.assert_array_equal(tensors["logits"], logits[0])
    assert tensors["logits"].dtype == np.float64


def test_compare_identical_exits_0(tmp_path, capsys):
    d = _ckpt(tmp_path, "a")
    main(["trace", "--model", str(d), "--ids", IDS, "--out", str(tmp_path / "a.safetensors")])
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "a.safetensors"), "--rtol", "0"]) == 0
    # 7 layers x 12 names + 4 embedding/PLE names + 3 + 3 AltUp projections + norm, lm_head, logits = 97
    assert capsys.readouterr().out.strip().splitlines()[-1] == "all 97 tensors within rtol 0"


def test_compare_names_the_perturbed_module(tmp_path, capsys):
    """Perturb layer 3's down_proj: everything before layer 3's MLP is identical, so the first tensor over
    the tolerance is ``model.layers.3.mlp``, and compare exits 1."""
    g = load_golden("text_model_causal")
    w = dict(g.weights)
    w["model.layers.3.mlp.down_proj.weight"] = w["model.layers.3.mlp.down_proj.weight"] * np.float32(1.001)
    a, b = _ckpt(tmp_path, "a"), _ckpt(tmp_path, "b", w)
    for d in (a, b):
        assert main(["trace", "--model", str(d), "--ids", IDS, "--out", str(tmp_path / f"{d.name}.safetensors"),
                     "--dtype", "float64"]) == 0
    capsys.readouterr()
    rc = main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--rtol", "1e-10"])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.strip().splitlines()[-1] == "first tensor over rtol 1e-10: model.layers.3.mlp"
    assert "model.layers.3.pre_feedforward_layernorm" in out and "<-- exceeds" in out


def test_compare_uses_metadata_order(tmp_path, capsys):
    """Names stored in the file sorted (z before a is impossible on disk), forward order from metadata: the
    first differing tensor in *forward* order is reported."""
    x = np.ones((2, 3))
    save_safetensors(tmp_path / "a.safetensors", {"a": x, "z": x}, {"order": json.dumps(["z", "a"])})
    save_safetensors(tmp_path / "b.safetensors", {"a": 2 * x, "z": 2 * x})
    assert main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]) == 1
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].endswith(": z")
    assert out.index("\nz ") < out.index("\na ")


def test_compare_reports_rel_err_and_cosine(tmp_path, capsys):
    """a = [1, 2], b = [1, 2.5]: max abs err 0.5, rel err 0.5 / 2 = 0.25, cosine (1 + 5) / (sqrt 5 sqrt 7.25)."""
    save_safetensors(tmp_path / "a.safetensors", {"t": np.array([1.0, 2.0])})
    save_safetensors(tmp_path / "b.safetensors", {"t": np.array([1.0, 2.5])})
    assert main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--rtol", "0.3"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("t ")][0].split()
    assert float(line[-3]) == 0.5 and float(line[-2]) == 0.25
    assert abs(float(line[-1]) - 6 / np.sqrt(5 * 7.25)) < 1e-9


def test_compare_not_safetensors_exits_2(tmp_path, capsys):
    (tmp_path / "bad.safetensors").write_text("not a safetensors file at all")
    save_safetensors(tmp_path / "ok.safetensors", {"t": np.ones(2)})
    assert main(["compare", str(tmp_path / "bad.safetensors"), str(tmp_path / "ok.safetensors")]) == 2
    assert "bad.safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("ids, words", [("2,x", "not an integer"), ("2,999", "out of range"), (",", "no token ids")])
def test_trace_bad_ids_exit_2(tmp_path, capsys, ids, words):
    d = _ckpt(tmp_path, "a")
    assert main(["trace", "--model", str(d), "--ids", ids, "--out", str(tmp_path / "t.safetensors")]) == 2
    assert words in capsys.readouterr().err


def test_trace_prompt_uses_the_tokenizer(tmp_path, tiny_dir):
    """--prompt tokenizes with BOS via the checkpoint's tokenizer.model (the tiny multimodal checkpoint)."""
    from minig3n.tokenizer import Tokenizer
    out = tmp_path / "p.safetensors"
    assert main(["trace", "--model", str(tiny_dir), "--prompt", "Hello world", "--out", str(out)]) == 0
    tensors, meta = load_safetensors(out)
    ids = Tokenizer.from_dir(tiny_dir).encode("Hello world", add_bos=True)
    assert json.loads(meta["ids"]) == ids and ids[0] == 2
    assert tensors["logits"].shape[0] == len(ids) and "model.language_model.layers.0.laurel" in tensors


def test_compare_directory_exits_2(tmp_path, capsys):
    save_safetensors(tmp_path / "ok.safetensors", {"t": np.ones(2)})
    assert main(["compare", str(tmp_path), str(tmp_path / "ok.safetensors")]) == 2
    assert "cannot read it as a safetensors trace" in capsys.readouterr().err


def test_trace_refuses_multimodal_ids_on_a_multimodal_checkpoint(tmp_path, tiny_dir, capsys):
    """In Gemma3nForConditionalGeneration, ids >= vocab_size_per_layer_input get their embeddings from the
    image/audio embedders; a text-only trace would silently differ from the reference, so it stops instead."""
    assert main(["trace", "--model", str(tiny_dir), "--ids", "2,1025", "--out", str(tmp_path / "t.safetensors")]) == 2
    assert "image/audio token" in capsys.readouterr().err
