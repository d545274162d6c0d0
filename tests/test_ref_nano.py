"""nano-gemma3n against the reference, live (transformers 5.24 ``Gemma3nForCausalLM`` on weights/nano-gemma3n).

* minig3n and the reference give the same greedy continuation (64 tokens) on five prompts, and the
  committed golden (``tests/goldens/nano_greedy.safetensors``) still equals the reference's;
* the same validation loss on the committed held-out slice (float32: 1e-5 relative);
* the tokenizer files load with AutoTokenizer and tokenize exactly as ``tokenizer.model`` and minig3n;
* training is deterministic (two short runs from one seed give identical losses) and gradients reach the
  gate projections of the layers with the (hard-threshold) gaussian top-k activation sparsity.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from tests.adapters import nano as adapter
from tests.golden_io import load_golden
from tests.test_nano import NANO

pytestmark = [pytest.mark.reference, pytest.mark.nano]


@pytest.fixture(scope="module")
def ref():
    from tests.reference import goldens_nano

    torch.set_num_threads(1)
    return goldens_nano.reference_model()


@pytest.fixture(scope="module")
def sp():
    from tests.reference import goldens_nano

    return goldens_nano.tokenizer()


@pytest.fixture(scope="module")
def model():
    return adapter.run_load(NANO, np.float32)


@pytest.mark.parametrize("i", range(5))
def test_greedy_continuation_live(ref, sp, model, i):
    from tests.reference.goldens_nano import N_NEW
    from tests.reference.nano import data, evaluate

    prompt = [data.BOS] + sp.encode(evaluate.PROMPTS[i])
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=N_NEW, do_sample=False)[0, len(prompt):].tolist()
    assert len(want) == N_NEW or want[-1] == data.EOS
    assert adapter.run_greedy(model, prompt, N_NEW) == want
    golden = load_golden("nano_greedy")
    assert golden.inputs[f"prompt_{i}"].astype(np.int64).tolist() == prompt
    assert golden.out32[f"greedy_{i}"].astype(np.int64).tolist() == want


def test_validation_loss_live(ref, model):
    """All 24 committed windows (3072 scored ids): float32 minig3n vs float32 reference, 1e-5 relative."""
    from tests.reference.goldens_nano import check_eval_slice_loss

    check_eval_slice_loss(ref, model, NANO)


def test_autotokenizer_matches_sentencepiece_and_minig3n(sp):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(NANO)
    text = ("MACBETH.\nIs this a dagger which I see before me,\nThe handle toward my hand?  Come, let me "
            "clutch thee.\n<start_of_turn>user\nHi 42 caf\u00e9 \u00fc<end_of_turn>\n")
    assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    assert tok(text)["input_ids"] == [2] + sp.encode(text) == adapter.run_encode(NANO, text)  # <bos> first
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.decode(sp.encode(text)) == text


def _tiny_args(steps):
    from tests.reference.nano import train

    return argparse.Namespace(**{**train.DEFAULTS, "steps": steps, "batch": 2, "eval_every": 10 ** 9,
                                 "eval_windows": 0})


def test_training_is_deterministic():
    """Three steps of the real training loop (nano architecture, synthetic ids), twice from one seed:
    identical losses. (``python -m tests.reference.nano.train --determinism-check 20`` does the same with
    the corpus and the real batch size.)"""
    from tests.reference.nano import model as nano_model
    from tests.reference.nano import train

    torch.set_num_threads(1)
    ids = np.random.default_rng(0).integers(0, nano_model.CONFIG["vocab_size"], 5000).astype(np.int32)
    models = [nano_model.build(7) for _ in range(2)]
    before = models[0].model.layers[0].mlp.gate_proj.weight.detach().clone()
    runs = [train.train(m, ids, _tiny_args(3), progress=False) for m in models]
    assert runs[0] == runs[1] and len(runs[0]) == 3
    after = [m.model.layers[0].mlp.gate_proj.weight.detach() for m in models]
    assert torch.equal(after[0], after[1]) and not torch.equal(after[0], before)  # trained, identically


def test_gradients_reach_sparse_layers():
    """The gaussian top-k is relu(x - (mean + 1.645 std)): a hard threshold, but differentiable where it
    keeps a unit, so the gate projection of a 0.95-sparse layer still gets a gradient."""
    from tests.reference.nano import model as nano_model
    from tests.reference.nano.train import batch_loss

    torch.set_num_threads(1)
    m = nano_model.build(3)
    ids = torch.randint(0, nano_model.CONFIG["vocab_size"], (2, 33), generator=torch.Generator().manual_seed(0))
    batch_loss(m, ids).backward()
    for i, s in enumerate(m.config.activation_sparsity_pattern):
        g = m.model.layers[i].mlp.gate_proj.weight.grad
        assert g is not None and float(g.abs().max()) > 0, f"layer {i} (sparsity {s})"
    assert any(s > 0 for s in m.config.activation_sparsity_pattern)
