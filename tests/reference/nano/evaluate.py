"""Evaluation of nano-gemma3n (reference tier): validation loss, unigram baseline, samples, export.

    python -m tests.reference.nano.evaluate --model weights/nano-gemma3n [--engine minig3n]

Validation loss: the two held-out plays as one token stream (<bos> play <eos> each), cut into windows of
CONTEXT + 1 ids with stride CONTEXT (every id but the first is predicted exactly once, from up to CONTEXT
preceding ids of its window); the mean next-token cross-entropy over all predicted ids, in nats.
Unigram baseline: the same ids scored with add-one-smoothed training-set token frequencies
(``unigram_counts.npy``), p(v) = (count[v] + 1) / (N + V).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from . import data
from .model import CONTEXT

EVAL_SLICE_WINDOWS = 24  # windows of the held-out stream committed as eval_slice.npy (24 x 129 ids)
PROMPTS = ("ROMEO.\n", "To be, or not to be", "KING.\nMy lords,", "The quality of mercy",
           "FIRST WITCH.\nWhen shall we")


def windows(ids: np.ndarray, T: int = CONTEXT) -> np.ndarray:
    """[W, T+1] windows with stride T covering the stream (the last partial window dropped)."""
    n = (len(ids) - 1) // T
    return np.stack([ids[i * T:i * T + T + 1] for i in range(n)]).astype(np.int64)


def mean_loss(model, wins: np.ndarray, batch: int = 16) -> float:
    """Mean next-token cross-entropy (nats) over every predicted id of ``wins`` [W, T+1]."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(wins), batch):
            ids = torch.from_numpy(wins[i:i + batch])
            logits = model(input_ids=ids[:, :-1], use_cache=False).logits.double()  # [B, T, V]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                    reduction="sum")
            total += float(nll)
            count += ids[:, 1:].numel()
    return total / count


def unigram_counts(train_ids: np.ndarray, V: int = data.VOCAB_SIZE) -> np.ndarray:
    return np.bincount(train_ids, minlength=V).astype(np.int64)


def unigram_loss(counts: np.ndarray, wins: np.ndarray) -> float:
    """Mean -log p(id) of the predicted ids of ``wins`` under the add-one-smoothed unigram model."""
    logp = np.log((counts + 1.0) / (counts.sum() + len(counts)))
    return float(-logp[wins[:, 1:]].mean())


def save_model(model, sp, out: Path) -> None:
    """save_pretrained (model.safetensors, config.json, generation_config.json) + tokenizer config files."""
    from transformers import GemmaTokenizer, GenerationConfig
    from transformers.convert_slow_tokenizer import generate_merges

    model.generation_config = GenerationConfig(bos_token_id=data.BOS, eos_token_id=data.EOS,
                                               pad_token_id=data.PAD, do_sample=False, max_new_tokens=128)
    model.save_pretrained(out)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    tok = GemmaTokenizer(vocab=vocab, merges=generate_merges(vocab), mask_token=None,
                         extra_special_tokens=list(data.SPECIAL), add_bos_token=True, add_eos_token=False)
    assert len(tok) == data.VOCAB_SIZE, len(tok)
    tok.save_pretrained(out)


def generate(model, sp, prompt: str, n: int = 64, sample: bool = False, seed: int = 0) -> tuple[list, str]:
    """Greedy (or seeded temperature-0.8 top-k 40 sampled) continuation: (new ids, decoded text)."""
    import torch

    ids = torch.tensor([[data.BOS] + sp.encode(prompt)])
    kw = dict(do_sample=True, temperature=0.8, top_k=40, top_p=1.0) if sample else dict(do_sample=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, **kw)
    new = out[0, ids.shape[1]:].tolist()
    return new, prompt + sp.decode(new)


def summarize(model, train_ids: np.ndarray, valid_ids: np.ndarray, out: Path) -> dict:
    """Full validation loss, unigram baseline; writes unigram_counts.npy and eval_slice.npy into ``out``."""
    wins = windows(valid_ids)
    counts = unigram_counts(train_ids)
    np.save(out / "unigram_counts.npy", counts)
    np.save(out / "eval_slice.npy", wins[:EVAL_SLICE_WINDOWS].astype(np.int32))
    rng = np.random.default_rng(0)
    train_wins = windows(train_ids)[np.sort(rng.choice(len(train_ids) // CONTEXT, 600, replace=False))]
    v, u, t = mean_loss(model, wins), unigram_loss(counts, wins), mean_loss(model, train_wins)
    sv, su = mean_loss(model, wins[:EVAL_SLICE_WINDOWS]), unigram_loss(counts, wins[:EVAL_SLICE_WINDOWS])
    return dict(valid_plays=list(data.VALID_PLAYS), valid_tokens_scored=int(wins[:, 1:].size),
                valid_loss=v, valid_ppl=math.exp(v), unigram_valid_loss=u, unigram_valid_ppl=math.exp(u),
                train_loss_600_windows=t, train_ppl_600_windows=math.exp(t),
                eval_slice_loss=sv, eval_slice_ppl=math.exp(sv), eval_slice_unigram_ppl=math.exp(su))


def minig3n_samples(model_dir: Path, n: int) -> dict:
    """The same outputs from ``minig3n generate`` (NumPy): greedy, and sampled at temperature 0.8, top-k 40
    with seeds 0, 1, 2 (minig3n's own random stream, so the sampled texts differ from the reference's)."""
    from minig3n.generate import generate as mg_generate

    def text(prompt, **kw):
        return prompt + "".join(piece for _, piece in mg_generate(model_dir, prompt, max_new_tokens=n, **kw))

    return {"greedy": [text(pr) for pr in PROMPTS],
            "sampled": [text(pr, temperature=0.8, top_k=40, seed=i) for i, pr in enumerate(PROMPTS[:3])]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("weights/nano-gemma3n"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--engine", choices=("reference", "minig3n"), default="reference")
    a = p.parse_args(argv)
    if a.engine == "minig3n":
        print(json.dumps(minig3n_samples(a.model, a.tokens), indent=1))
        return 0
    import sentencepiece as spm
    import torch
    from transformers import Gemma3nForCausalLM

    torch.set_num_threads(a.threads)
    model = Gemma3nForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    sp = spm.SentencePieceProcessor(model_file=str(a.model / "tokenizer.model"))
    res = {"greedy": [generate(model, sp, pr, a.tokens)[1] for pr in PROMPTS],
           "sampled": [generate(model, sp, pr, a.tokens, sample=True, seed=i)[1] for i, pr in enumerate(PROMPTS[:3])]}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
