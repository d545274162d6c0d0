"""nano-gemma3n-matformer (weights/nano-gemma3n-matformer): nano-gemma3n fine-tuned with MatFormer's nested
objective, so that its ``minig3n slice`` sub-models keep their quality (NumPy tier, no torch).

What is checked: the checkpoint has nano-gemma3n's architecture and tokenizer; on the committed held-out
windows (``eval_slice.npy``, the first 4 here) minig3n's perplexity of three slices cut with ``minig3n slice``
(narrower FFNs everywhere, a mix of widths, a skipped layer) rises far less above the full model's than the
same slices of nano-gemma3n do (on average at most 0.4 x the relative rise, each slice at most 0.6 x), while the full model stays as good.
Both numbers are recomputed here from the two checkpoints. Training: ``tests/reference/nano_matformer/``;
model card: ``weights/nano-gemma3n-matformer/README.md``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.adapters import matformer as slicer
from tests.adapters import nano as adapter

pytestmark = [pytest.mark.nano, pytest.mark.matformer]

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
NANO, NESTED = WEIGHTS / "nano-gemma3n", WEIGHTS / "nano-gemma3n-matformer"
WINDOWS = 4
SLICES = {"mix 384/256": ([384, 384, 384, 256, 256, 256], []),
          "all 256": ([256] * 6, []),
          "skip layer 4": ([512, 512, 512, 384, 256], [4])}


def perplexities(model_dir: Path, tmp: Path) -> dict:
    windows = np.load(model_dir / "eval_slice.npy").astype(np.int64)[:WINDOWS]           # [W, T+1]
    out = {"full": adapter.run_token_losses(adapter.run_load(model_dir), windows).mean()}
    for name, (ffn, skip) in SLICES.items():
        d = slicer.run_slice(model_dir, tmp / f"{model_dir.name}-{name.replace(' ', '_').replace('/', '-')}",
                             ffn, skip)
        out[name] = adapter.run_token_losses(adapter.run_load(d), windows).mean()
    return {k: math.exp(float(v)) for k, v in out.items()}


def test_same_architecture_and_tokenizer():
    a, b = (json.loads((d / "config.json").read_text()) for d in (NANO, NESTED))
    assert {k: v for k, v in a.items() if k != "transformers_version"} == \
        {k: v for k, v in b.items() if k != "transformers_version"}
    assert (NANO / "tokenizer.model").read_bytes() == (NESTED / "tokenizer.model").read_bytes()
    assert np.array_equal(np.load(NANO / "eval_slice.npy"), np.load(NESTED / "eval_slice.npy"))


def test_slices_lose_far_less_than_nano(tmp_path):
    nano, nested = perplexities(NANO, tmp_path), perplexities(NESTED, tmp_path)
    for name in ["full", *SLICES]:
        print(f"{name:14s} nano-gemma3n {nano[name]:7.2f} (x{nano[name] / nano['full']:.3f})   "
              f"nano-gemma3n-matformer {nested[name]:7.2f} (x{nested[name] / nested['full']:.3f})")
    assert nested["full"] <= 1.03 * nano["full"]                  # the full model is not given up
    rises = {name: (nano[name] / nano["full"] - 1, nested[name] / nested["full"] - 1) for name in SLICES}
    for name, (rise_nano, rise_nested) in rises.items():
        assert rise_nano > 0.05, name                               # the slice really costs nano something
        # the skipped layer was trained in a quarter of the steps only: its gap shrinks least (0.55 x here,
        # 0.40 x on all 24 windows); the narrower FFNs shrink to 0.1-0.3 x
        assert rise_nested <= 0.6 * rise_nano, (name, rise_nested, rise_nano)
        assert nested[name] < nano[name], name                      # and is better outright
    mean_nano = np.mean([r[0] for r in rises.values()])
    mean_nested = np.mean([r[1] for r in rises.values()])
    assert mean_nested <= 0.4 * mean_nano, (mean_nested, mean_nano)
