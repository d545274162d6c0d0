"""Perplexity of MatFormer slices (``minig3n slice``) of nano-gemma3n and nano-gemma3n-matformer, via minig3n.

    python -m tests.reference.nano_matformer.evaluate [--models weights/nano-gemma3n weights/nano-gemma3n-matformer]

Every slice in ``SLICES`` is cut with ``minig3n slice --model M --out TMP --ffn-dims ... [--skip-layers ...]``
and scored by minig3n (NumPy, float32) on the committed held-out windows (``eval_slice.npy``, 24 x 129 ids of
Macbeth, the same file in both checkpoints): mean next-token cross-entropy over the 3072 predicted ids, and its
exponential. Prints a markdown table and writes ``--json``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
# (name, FFN width of every kept layer, skipped layers); the full widths are 512 512 512 384 384 256
SLICES = (
    ("full", [512, 512, 512, 384, 384, 256], []),
    ("mix 384/256", [384, 384, 384, 256, 256, 256], []),
    ("all 256", [256] * 6, []),
    ("all 128", [128] * 6, []),
    ("skip layer 4", [512, 512, 512, 384, 256], [4]),
    ("all 256, skip layer 4", [256] * 5, [4]),
)


def slice_args(model_dir, out_dir, ffn, skip) -> list[str]:
    args = ["slice", "--model", str(model_dir), "--out", str(out_dir), "--ffn-dims", *map(str, ffn)]
    return args + (["--skip-layers", *map(str, skip)] if skip else [])


def token_losses(model_dir, windows) -> np.ndarray:
    from tests.adapters import nano as adapter
    return adapter.run_token_losses(adapter.run_load(model_dir, np.float32), windows)       # [W, T]


def evaluate(model_dir: Path, windows: np.ndarray, slices=SLICES) -> dict:
    from minig3n.cli import main as cli
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ffn, skip in slices:
            d = Path(tmp) / name.replace(" ", "_").replace("/", "-").replace(",", "")
            if cli(slice_args(model_dir, d, ffn, skip)) != 0:
                raise RuntimeError(f"minig3n slice failed for {name}")
            loss = float(token_losses(d, windows).mean())
            out[name] = dict(ffn_dims=ffn, skip_layers=skip, loss=loss, ppl=math.exp(loss))
            print(f"  {model_dir.name} {name}: ppl {math.exp(loss):.2f}", file=sys.stderr)
    return out


def table(results: dict) -> str:
    models = list(results)
    head = "| slice | FFN widths | skipped | " + " | ".join(f"{m} ppl (x full)" for m in models) + " |\n"
    head += "|---" * (3 + len(models)) + "|\n"
    rows = []
    for name, ffn, skip in SLICES:
        cells = []
        for m in models:
            r, full = results[m][name], results[m]["full"]
            cells.append(f"{r['ppl']:.1f} ({r['ppl'] / full['ppl']:.3f})")
        rows.append(f"| {name} | {' '.join(map(str, ffn))} | {' '.join(map(str, skip)) or '-'} | "
                    + " | ".join(cells) + " |\n")
    return head + "".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", type=Path,
                   default=[REPO / "weights" / "nano-gemma3n", REPO / "weights" / "nano-gemma3n-matformer"])
    p.add_argument("--windows", type=int, default=24)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    results = {}
    for m in a.models:
        windows = np.load(m / "eval_slice.npy").astype(np.int64)[:a.windows]
        results[m.name] = evaluate(m, windows)
    print(table(results))
    if a.json:
        a.json.write_text(json.dumps(dict(windows=a.windows, results=results), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
