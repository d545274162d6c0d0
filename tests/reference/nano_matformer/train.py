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
import sys
from pathlib import Path

import numpy as np

from ..nano.model import CONFIG, build
from ..nano import train as nano_train
from ..nano.train import DEFAULTS
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
    """nano-gemma3n's loop (tests.reference.nano.train.train) with one sub-model drawn per step."""
    import torch

    sub_gen = torch.Generator().manual_seed(a.seed + 2)    # sub-model draws (batches: nano's stream, seed + 1)

    def pick():
        widths, skip = draw(sub_gen)
        return use_submodel(model, widths, skip), dict(ffn_widths=",".join(map(str, widths)),
                                                       skip=",".join(map(str, skip)))
    return nano_train.train(model, train_ids, a, log=log, valid_windows=valid_windows, progress=progress,
                            pick=pick)


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
    nano_train.add_common_args(p, Path("weights/nano-gemma3n-matformer"), 40, DEFAULTS)
    p.add_argument("--init-from", type=Path, default=INIT_FROM,
                   help="start from this checkpoint (default weights/nano-gemma3n); 'none' trains from scratch "
                        "with nano-gemma3n's full recipe (--steps 1400 --lr 2e-3 --min-lr 2e-4 --warmup 100)")
    a = p.parse_args(argv)
    return nano_train.run(
        a, start, train, command="python -m tests.reference.nano_matformer.train " + " ".join(argv or sys.argv[1:]),
        log_columns="ffn_widths\tskip\t", defaults=DEFAULTS,
        describe=lambda model: f"; sub-models: widths {GRANULARITIES}, skip layer {SKIP_LAYER} p={SKIP_PROB}",
        extra_summary=dict(init_from=str(a.init_from), granularities=[m or "full" for m in GRANULARITIES],
                           skip_layer=SKIP_LAYER, skip_prob=SKIP_PROB))


if __name__ == "__main__":
    sys.exit(main())
