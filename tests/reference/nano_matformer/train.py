"""Train nano-gemma3n-matformer: nano-gemma3n fine-tuned with MatFormer's nested objective.

    python -m tests.reference.nano_matformer.train --out weights/nano-gemma3n-matformer

Starts from weights/nano-gemma3n (``--init-from none``: from scratch, then pass nano's recipe, ``--steps 1400
--lr 2e-3 --min-lr 2e-4 --warmup 100``) and keeps its corpus, tokenizer, config, batch and optimiser
(``tests.reference.nano``); 120 steps at learning rate 6e-4. The one change: each step trains ONE sub-model
drawn at random (MatFormer, Devvrit et al. 2023, arXiv:2310.07707, trains nested FFN granularities with shared
weights; drawing one per step keeps the cost of a step that of ordinary training):

* an FFN granularity, uniformly from ``GRANULARITIES``: every layer keeps the first ``min(I_l, m)`` hidden
  units, m in {full, 384, 256, 128} (the full widths are 512 512 512 384 384 256);
* and, with probability ``SKIP_PROB``, layer 4 (a KV-sharing consumer, so skipping it is allowed) is left out.

Each sub-model is exactly what ``minig3n slice --ffn-dims ... --skip-layers ...`` cuts out of the saved
checkpoint (``nested.py``; tests/test_ref_nano_matformer.py checks it). ``train_log.tsv`` has one row per step
with the sub-model drawn.

``--determinism-check N`` trains N steps twice from the seed and compares the loss sequences.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..nano import data, evaluate
from ..nano.model import CONFIG, CONTEXT, build
from ..nano.train import DEFAULTS, batch_loss, lr_at, make_optimizer
from .nested import use_submodel

FULL = CONFIG["intermediate_size"]
INIT_FROM = Path(__file__).resolve().parents[3] / "weights" / "nano-gemma3n"
# nested fine-tuning of nano-gemma3n (the default): a short run at a lower learning rate
DEFAULTS = {**DEFAULTS, "steps": 120, "lr": 6e-4, "min_lr": 6e-5, "warmup": 10}
GRANULARITIES = (None, 384, 256, 128)   # None: the full widths
SKIP_LAYER, SKIP_PROB = 4, 0.25


def widths_for(m) -> list[int]:
    return list(FULL) if m is None else [min(i, m) for i in FULL]


def draw(gen) -> tuple[list[int], list[int]]:
    """The sub-model of one step: (FFN width per layer, skipped layers)."""
    import torch

    m = GRANULARITIES[int(torch.randint(0, len(GRANULARITIES), (1,), generator=gen))]
    skip = [SKIP_LAYER] if float(torch.rand(1, generator=gen)) < SKIP_PROB else []
    return widths_for(m), skip


def train(model, train_ids: np.ndarray, a, log=None, valid_windows=None, progress=True):
    import torch
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(a.seed + 1)        # batches: the same stream as nano-gemma3n's
    sub_gen = torch.Generator().manual_seed(a.seed + 2)    # sub-model draws
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
        widths, skip = draw(sub_gen)
        with use_submodel(model, widths, skip):
            loss = batch_loss(model, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip))
        opt.step()
        tokens += ids[:, :-1].numel()
        losses.append(float(loss.detach()))
        elapsed = time.time() - t0 - t_eval
        bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{tokens / elapsed:.0f}")
        if log is not None:
            row = dict(step=step + 1, tokens=tokens, train_loss=losses[-1], lr=lr_at(step, a), grad_norm=gnorm,
                       tok_per_s=tokens / elapsed, elapsed_s=elapsed, ffn_widths=",".join(map(str, widths)),
                       skip=",".join(map(str, skip)), valid_loss="")
            if valid_windows is not None and ((step + 1) % a.eval_every == 0 or step + 1 == a.steps):
                te = time.time()
                row["valid_loss"] = evaluate.mean_loss(model, valid_windows[:a.eval_windows])
                model.train()
                t_eval += time.time() - te
                tqdm.write(f"step {step + 1}: train {losses[-1]:.4f} valid(full, first {a.eval_windows} windows) "
                           f"{row['valid_loss']:.4f} {tokens / elapsed:.0f} tok/s", file=sys.stderr)
            log.write("\t".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values()) + "\n")
            log.flush()
    return losses


def start(a):
    """The model training starts from: nano-gemma3n's weights (default) or its seeded fresh init."""
    import torch
    from transformers import Gemma3nForCausalLM

    if str(a.init_from) == "none":
        return build(a.seed)
    torch.manual_seed(a.seed)
    model = Gemma3nForCausalLM.from_pretrained(a.init_from, dtype=torch.float32)
    model.config._attn_implementation = "sdpa"
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("weights/nano-gemma3n-matformer"))
    p.add_argument("--work", type=Path, default=data.DEFAULT_WORK, help="where the sdist is downloaded")
    p.add_argument("--threads", type=int, default=1, help="torch threads (see tests.reference.nano.train)")
    p.add_argument("--eval-every", type=int, default=40)
    p.add_argument("--eval-windows", type=int, default=48)
    p.add_argument("--determinism-check", type=int, default=0, metavar="N")
    p.add_argument("--init-from", type=Path, default=INIT_FROM,
                   help="start from this checkpoint (default weights/nano-gemma3n); 'none' trains from scratch "
                        "with nano-gemma3n's full recipe (--steps 1400 --lr 2e-3 --min-lr 2e-4 --warmup 100)")
    for k, v in DEFAULTS.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    a = p.parse_args(argv)

    import torch
    torch.set_num_threads(a.threads)
    t_start = time.time()
    tok_dir = a.out if not a.determinism_check else Path("/tmp/nano-matformer-detcheck")
    train_ids, valid_ids, sp = data.prepare(tok_dir, a.work)
    print(f"corpus: train {len(train_ids)} ids, valid {len(valid_ids)} ids", file=sys.stderr)

    if a.determinism_check:
        a.steps = a.determinism_check
        runs = [train(start(a), train_ids, a, progress=False) for _ in range(2)]
        same = runs[0] == runs[1]
        print(json.dumps({"steps": a.steps, "identical": same, "run1": runs[0], "run2": runs[1]}))
        return 0 if same else 1

    a.out.mkdir(parents=True, exist_ok=True)
    model = start(a)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters; sub-models: widths {GRANULARITIES}, skip layer {SKIP_LAYER} "
          f"p={SKIP_PROB}", file=sys.stderr)
    windows = evaluate.windows(valid_ids, CONTEXT)
    with open(a.out / "train_log.tsv", "w") as log:
        log.write("step\ttokens\ttrain_loss\tlr\tgrad_norm\ttok_per_s\telapsed_s\tffn_widths\tskip\tvalid_loss\n")
        t_train = time.time()
        losses = train(model, train_ids, a, log=log, valid_windows=windows)
        train_wall = time.time() - t_train

    model.eval()
    evaluate.save_model(model, sp, a.out)
    summary = evaluate.summarize(model, train_ids, valid_ids, a.out)
    summary.update(
        command="python -m tests.reference.nano_matformer.train " + " ".join(argv or sys.argv[1:]),
        init_from=str(a.init_from),
        hyperparameters={k: getattr(a, k) for k in DEFAULTS}, context=CONTEXT, threads=a.threads,
        granularities=[m or "full" for m in GRANULARITIES], skip_layer=SKIP_LAYER, skip_prob=SKIP_PROB,
        parameters=n_params, train_tokens_seen=a.steps * a.batch * CONTEXT,
        train_wall_s=round(train_wall, 1), total_wall_s=round(time.time() - t_start, 1),
        throughput_tok_per_s=round(a.steps * a.batch * CONTEXT / train_wall, 1),
        final_train_loss_last50=float(np.mean(losses[-50:])),
        torch=torch.__version__, transformers=__import__("transformers").__version__)
    (a.out / "train_summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
