"""nano-gemma3n (weights/nano-gemma3n): the small Gemma 3n trained here on Shakespeare, run by minig3n.

What is checked, NumPy tier (no torch): the checkpoint has every Gemma 3n text feature switched on; its
tokenizer holds the Gemma special tokens at the ids the config names; minig3n's validation perplexity on a
committed slice of the held-out plays (ids only, ``eval_slice.npy``) is far below the unigram baseline of
the same tokenizer (training-set counts, ``unigram_counts.npy``) and equals the reference's; minig3n's
greedy continuations equal the reference's (golden ``tests/goldens/nano_greedy.safetensors``, written by
``tests/reference/goldens_nano.py``). Training: ``tests/reference/nano/train.py``; model card:
``weights/nano-gemma3n/README.md``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.adapters import nano as adapter
from tests.golden_io import load_golden

pytestmark = pytest.mark.nano

NANO = Path(__file__).resolve().parent.parent / "weights" / "nano-gemma3n"
SLICE_WINDOWS = 8  # of the 24 committed windows (8 x 128 = 1024 scored ids) to keep this file fast
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
           "<end_of_image>", "<image_soft_token>", "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>"]


@pytest.fixture(scope="module")
def model():
    return adapter.run_load(NANO, np.float32)


@pytest.fixture(scope="module")
def summary() -> dict:
    return json.loads((NANO / "train_summary.json").read_text())


def unigram_token_losses(counts: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """-log p(id) of every predicted id of ``windows`` [W, T+1] under add-one smoothed unigram frequencies:
    p(v) = (count[v] + 1) / (N + V), N = sum(count), V = len(count)."""
    p = (counts.astype(np.float64) + 1.0) / (counts.sum() + len(counts))   # [V]
    return -np.log(p[windows[:, 1:]])                                       # [W, T]


def test_unigram_baseline_by_hand():
    """counts (3, 1, 0): N = 4, V = 3, p = (4/7, 2/7, 1/7). Window (0, 1, 2, 1) predicts ids 1, 2, 1:
    mean loss = (2 ln(7/2) + ln 7) / 3, perplexity = exp(that) = (7/2 * 7/2 * 7)^(1/3) = 343^(1/3) / 4^(1/3)
    = 7 / 4^(1/3)."""
    loss = unigram_token_losses(np.array([3, 1, 0]), np.array([[0, 1, 2, 1]])).mean()
    assert math.isclose(math.exp(loss), 7 / 4 ** (1 / 3), rel_tol=1e-12)


def test_checkpoint_has_every_text_feature(model, summary):
    cfg = adapter.run_config(model)
    L = cfg.num_hidden_layers
    assert cfg.altup_num_inputs == 4 and cfg.altup_correct_scale                       # AltUp, 4 streams
    assert cfg.laurel_rank > 0                                                         # LAuReL
    assert cfg.hidden_size_per_layer_input > 0 and cfg.vocab_size_per_layer_input > 0  # per-layer embeddings
    assert set(cfg.layer_types) == {"sliding_attention", "full_attention"}
    assert cfg.sliding_window < summary["context"]                    # the window really slides in training
    first_shared = L - cfg.num_kv_shared_layers
    shared, producers = cfg.layer_types[first_shared:], cfg.layer_types[:first_shared]
    assert set(shared) == {"sliding_attention", "full_attention"}        # KV sharing across both types ...
    assert set(producers) == {"sliding_attention", "full_attention"}     # ... each with a producer before
    sparse = [s for s in cfg.activation_sparsity_pattern if s > 0]
    assert sparse and cfg.activation_sparsity_pattern[:len(sparse)] == sparse  # sparsity on the first layers
    assert len(set(cfg.intermediate_size)) > 1                          # per-layer FFN widths differ
    assert cfg.final_logit_softcapping is not None and cfg.final_logit_softcapping > 0
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (0, 1, 2)


def test_checkpoint_layout_and_size():
    config = json.loads((NANO / "config.json").read_text())
    assert config["model_type"] == "gemma3n_text"
    size = (NANO / "model.safetensors").stat().st_size
    assert size < 15_000_000, f"model.safetensors is {size} bytes"
    header_len = int.from_bytes((NANO / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((NANO / "model.safetensors").read_bytes()[8:8 + header_len])
    names = [k for k in header if k != "__metadata__"]
    assert names and all(k.startswith("model.") for k in names)
    assert {header[k]["dtype"] for k in names} == {"F32"}
    gen = json.loads((NANO / "generation_config.json").read_text())
    assert (gen["pad_token_id"], gen["eos_token_id"], gen["bos_token_id"]) == (0, 1, 2)


def test_tokenizer_special_tokens():
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(NANO / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in range(len(SPECIAL))] == SPECIAL
    assert sp.get_piece_size() == json.loads((NANO / "config.json").read_text())["vocab_size"]
    assert sp.encode("<start_of_turn>user\n")[0] == 4               # user-defined: matched in raw text
    assert sp.piece_to_id("<0x0A>") > 0                                 # byte fallback pieces present
    tok = json.loads((NANO / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert all(added[s] == i for i, s in enumerate(SPECIAL))


def test_validation_perplexity_far_below_unigram(model, summary):
    """On the committed held-out slice: minig3n's perplexity equals the reference's (golden per-token
    losses, float32: 1e-5 relative on the mean loss) and is far below the unigram baseline; the model
    card's full-validation figures say the same."""
    windows = np.load(NANO / "eval_slice.npy").astype(np.int64)[:SLICE_WINDOWS]          # [W, T+1]
    counts = np.load(NANO / "unigram_counts.npy")
    model_loss = float(adapter.run_token_losses(model, windows).mean())
    ref_loss = float(load_golden("nano_greedy").out32["eval_slice_token_loss"][:SLICE_WINDOWS].mean())
    unigram_loss = float(unigram_token_losses(counts, windows).mean())
    print(f"eval slice ({windows[:, 1:].size} ids): minig3n ppl {math.exp(model_loss):.2f}, reference ppl "
          f"{math.exp(ref_loss):.2f}, unigram ppl {math.exp(unigram_loss):.2f}")
    assert abs(model_loss - ref_loss) <= 1e-5 * ref_loss
    assert math.exp(model_loss) < math.exp(unigram_loss) / 4
    assert summary["valid_ppl"] < summary["unigram_valid_ppl"] / 4


@pytest.mark.parametrize("i", range(5))
def test_greedy_continuation_matches_reference(model, i):
    g = load_golden("nano_greedy")
    prompt = g.inputs[f"prompt_{i}"].astype(np.int64).tolist()
    want = g.out32[f"greedy_{i}"].astype(np.int64).tolist()
    assert len(want) == g.meta["new_tokens"] or want[-1] == 1
    assert adapter.run_greedy(model, prompt, g.meta["new_tokens"]) == want


def test_prompts_tokenize_as_the_reference_did():
    """minig3n's tokenizer gives the prompt ids the reference's golden was made from (sentencepiece +
    <bos>), and decodes them back to the prompt text."""
    g = load_golden("nano_greedy")
    for i, text in enumerate(g.meta["prompts"]):
        ids = g.inputs[f"prompt_{i}"].astype(np.int64).tolist()
        assert adapter.run_encode(NANO, text) == ids
        assert adapter.run_decode(NANO, ids[1:]) == text


def test_generate_defaults_to_nano_and_is_greedy_like_the_reference():
    """``minig3n generate --prompt TEXT`` (no --model): the nano checkpoint, greedy, the reference's tokens."""
    g = load_golden("nano_greedy")
    assert Path(adapter.run_default_model_dir()).resolve() == NANO.resolve()
    ids, text = adapter.run_generate(g.meta["prompts"][1], g.meta["new_tokens"])
    assert ids == g.out32["greedy_1"].astype(np.int64).tolist()
    assert text == adapter.run_decode(NANO, [t for t in ids if t != 1])
