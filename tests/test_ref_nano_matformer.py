"""nano-gemma3n-matformer against the reference, live (transformers 5.24 ``Gemma3nForCausalLM``).

* minig3n and the reference give the same greedy continuations and the same held-out loss (float32, 1e-5
  relative, as for nano-gemma3n), and the model card's figure is this model's;
* the sub-model trained by the nested objective IS the ``minig3n slice`` checkpoint: the reference model run
  as a sub-model (``nested.use_submodel``: FFN prefixes, a skipped layer) gives the logits of the reference
  loading the sliced checkpoint, and of minig3n running it;
* the nested training loop is deterministic.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from tests.adapters import matformer as slicer
from tests.adapters import nano as adapter
from tests.golden_io import rel_err
from tests.test_nano_matformer import NESTED

pytestmark = [pytest.mark.reference, pytest.mark.nano, pytest.mark.matformer]


@pytest.fixture(scope="module")
def ref():
    from transformers import Gemma3nForCausalLM
    torch.set_num_threads(1)
    return Gemma3nForCausalLM.from_pretrained(NESTED, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def model():
    return adapter.run_load(NESTED, np.float32)


@pytest.mark.parametrize("prompt", ["ROMEO.\n", "To be, or not to be"])
def test_greedy_continuation_live(ref, model, prompt):
    ids = adapter.run_encode(NESTED, prompt)
    with torch.no_grad():
        want = ref.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    assert adapter.run_greedy(model, ids, 32) == want


def test_validation_loss_live(ref, model):
    from tests.reference.goldens_nano import check_eval_slice_loss

    check_eval_slice_loss(ref, model, NESTED)


@pytest.mark.parametrize("ffn,skip", [([384, 384, 384, 256, 256, 256], []), ([256, 256, 256, 256, 256], [4])])
def test_trained_submodel_is_the_slice(ref, tmp_path, ffn, skip):
    from transformers import Gemma3nForCausalLM

    from tests.reference.nano_matformer.nested import use_submodel
    ids = np.load(NESTED / "eval_slice.npy").astype(np.int64)[:2, :65]
    widths = list(ffn)
    for layer in sorted(skip):
        widths.insert(layer, 0)                                   # a skipped layer's width is never read
    with torch.no_grad(), use_submodel(ref, widths, skip):
        nested = ref(input_ids=torch.tensor(ids)).logits.numpy()
    d = slicer.run_slice(NESTED, tmp_path / "cut", ffn, skip)
    with torch.no_grad():
        cut = Gemma3nForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        sliced = cut(input_ids=torch.tensor(ids)).logits.numpy()
    full = ref(input_ids=torch.tensor(ids)).logits.detach().numpy()
    ours = adapter.run_load(d)
    from minig3n.decoder import forward
    mine = forward(ours, ids)[0]
    assert rel_err(nested, sliced) <= 1e-5
    assert rel_err(mine, sliced) <= 1e-4
    assert rel_err(full, sliced) > 1e-3                              # the cut is real


def test_nested_training_is_deterministic():
    from tests.reference.nano import model as nano_model
    from tests.reference.nano_matformer import train

    torch.set_num_threads(1)
    ids = np.random.default_rng(0).integers(0, nano_model.CONFIG["vocab_size"], 5000).astype(np.int32)
    a = argparse.Namespace(**{**train.DEFAULTS, "steps": 3, "batch": 2, "eval_every": 10 ** 9, "eval_windows": 0})
    runs = [train.train(nano_model.build(7), ids, a, progress=False) for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 3
