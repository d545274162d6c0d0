"""Resident memory of loading the E2B text decoder's shapes from a sharded BF16 checkpoint.

    python -m tests.bench.bench_loader_memory [--dir DIR] [--preset E2B|E4B]

Writes a *sparse* sharded BF16 checkpoint with the preset's text shapes (the files have their full
logical size, 10 GB for E2B, but the holes take no disk), then, in a fresh process: opens it with
minig3n, checks every shape, gathers the per-layer-embedding rows and token-embedding rows of 64 ids,
and loads one decoder layer. Prints peak resident memory (VmHWM) against the sizes of the two tables.
"""
import argparse
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from minig3n.checkpoint import text_weight_shapes
from minig3n.config import PRESETS


def write_sparse_checkpoint(d: Path, preset="E2B", shard_bytes=2 * 1024 ** 3) -> dict:
    """Sharded BF16 checkpoint with every text tensor of the preset; data regions are holes (zeros)."""
    cfg = PRESETS[preset]()
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    shapes = text_weight_shapes(cfg.text, "model.language_model.")
    shards, cur, size = [], {}, 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * 2
        if cur and size + nbytes > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = shape
        size += nbytes
    shards.append(cur)
    weight_map = {}
    for i, part in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {}, 0
        for name, shape in part.items():
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        head = json.dumps(header).encode()
        head += b" " * (-len(head) % 8)
        with open(d / fname, "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            f.truncate(8 + len(head) + off)  # sparse: no data written
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return shapes


CHILD = r"""
import json, sys, numpy as np
from minig3n.checkpoint import Checkpoint, text_weight_shapes
def rss(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = rss('VmRSS:')
ck = Checkpoint(sys.argv[1])
ck.check_shapes(text_weight_shapes(ck.config.text, ck.text_prefix))
ids = np.arange(0, 262144, 4096)[:64]
ple = ck.rows('model.language_model.embed_tokens_per_layer.weight', ids)
emb = ck.rows('model.language_model.embed_tokens.weight', ids)
layer = {n: ck.get(n) for n in ck.names if n.startswith('model.language_model.layers.0.')}
print(json.dumps({'base': base, 'peak': rss('VmHWM:'), 'ple_rows': list(ple.shape),
                  'layer0_bytes': sum(v.nbytes for v in layer.values())}))
"""


def measure(d: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(d)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="where to write the sparse checkpoint (default: a temp dir)")
    ap.add_argument("--preset", default="E2B", choices=sorted(PRESETS))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = a.dir or Path(tmp) / "ckpt"
        shapes = write_sparse_checkpoint(d, a.preset)
        r = measure(d)
    ple = int(np.prod(shapes["model.language_model.embed_tokens_per_layer.weight"])) * 2
    emb = int(np.prod(shapes["model.language_model.embed_tokens.weight"])) * 2
    total = sum(int(np.prod(s)) * 2 for s in shapes.values())
    mib = 1024 ** 2
    print(f"{a.preset}: checkpoint {total / mib:,.0f} MiB BF16; PLE table {ple / mib:,.0f} MiB, "
          f"token table {emb / mib:,.0f} MiB")
    print(f"peak resident after open + shape check + 64-row gathers + layer 0 as float32: "
          f"{r['peak'] / mib:,.0f} MiB (process start {r['base'] / mib:,.0f} MiB; layer 0 float32 "
          f"{r['layer0_bytes'] / mib:,.0f} MiB) = {r['peak'] / ple:.3f} x the PLE table")


if __name__ == "__main__":
    main()
