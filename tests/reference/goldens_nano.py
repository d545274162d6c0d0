"""Golden fixture of the trained nano-gemma3n checkpoint (weights/nano-gemma3n): the reference's greedy
continuations (64 tokens) of five prompts, for the NumPy-tier test ``tests/test_nano.py``.

Unlike the other topics this one reads a trained checkpoint instead of building a random model, so the
fixture holds no weights: ``in.prompt_<i>`` (ids, <bos> first), ``out32.greedy_<i>`` (the 64 new ids) and
``out32.eval_slice_token_loss`` (the reference's float32 next-token losses on ``eval_slice.npy``); ``meta``
records the prompts and the sha256 of the model.safetensors they came from.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tests.golden_io import save_golden
from tests.reference.nano import evaluate
from tests.reference.versions import stamp

NANO = Path(__file__).resolve().parents[2] / "weights" / "nano-gemma3n"
N_NEW = 64


def reference_model():
    import torch
    from transformers import Gemma3nForCausalLM

    return Gemma3nForCausalLM.from_pretrained(NANO, dtype=torch.float32).eval()


def tokenizer():
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(NANO / "tokenizer.model"))


def reference_token_losses(model, wins: np.ndarray) -> np.ndarray:
    """[W, T] float32 next-token cross-entropy of the reference (logits as computed in float32)."""
    import torch

    with torch.no_grad():
        ids = torch.from_numpy(wins.astype(np.int64))
        logits = model(input_ids=ids[:, :-1], use_cache=False).logits                  # [W, T, V]
        loss = torch.nn.functional.cross_entropy(logits.double().transpose(1, 2), ids[:, 1:], reduction="none")
    return loss.numpy()


def check_eval_slice_loss(ref, model, model_dir: Path) -> None:
    """The live check both text nanos run: minig3n's mean loss on the model's committed ``eval_slice.npy``
    equals the float32 reference's within 1e-5 relative, and so does the model card's ``eval_slice_loss``."""
    import json

    from tests.adapters import nano as adapter

    windows = np.load(model_dir / "eval_slice.npy").astype(np.int64)
    want = float(reference_token_losses(ref, windows).mean())
    got = float(adapter.run_token_losses(model, windows).mean())
    print(f"eval slice loss: minig3n {got:.8f}, reference {want:.8f}")
    assert abs(got - want) <= 1e-5 * want
    summary = json.loads((model_dir / "train_summary.json").read_text())
    assert abs(summary["eval_slice_loss"] - want) <= 1e-5 * want  # the model card's figure is this model's


def make():
    import torch

    model, sp = reference_model(), tokenizer()
    inputs, out32 = {}, {}
    for i, prompt in enumerate(evaluate.PROMPTS):
        ids = [evaluate.data.BOS] + sp.encode(prompt)
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=N_NEW, do_sample=False)  # stops early at <eos>
        inputs[f"prompt_{i}"] = np.asarray(ids)
        out32[f"greedy_{i}"] = gen[0, len(ids):].numpy()
    wins = np.load(NANO / "eval_slice.npy")
    out32["eval_slice_token_loss"] = reference_token_losses(model, wins)
    sha = hashlib.sha256((NANO / "model.safetensors").read_bytes()).hexdigest()
    save_golden("nano_greedy", inputs, {}, out32, {},
                {"prompts": list(evaluate.PROMPTS), "model_safetensors_sha256": sha, "new_tokens": N_NEW,
                 "versions": stamp("torch", "transformers")})
