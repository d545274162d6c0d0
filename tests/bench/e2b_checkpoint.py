"""An E2B-shaped (or E4B-shaped) random BF16 text checkpoint in the official sharded Hugging Face layout.

    python -m tests.bench.e2b_checkpoint [--preset E2B|E4B] [--dir DIR]

Used by ``bench_e2b``: built once into ``~/.cache/minig3n/bench-<preset>/`` (reused when its ``DONE`` file
is there), outside the repository. The text architecture is minig3n's preset (``config.e2b_config().text``,
the published E2B text config: 30 layers, hidden 2048, 262,144 vocabulary, PLE 256 per layer, 10 KV-shared
layers), written as a text-only ``Gemma3nForCausalLM`` directory: ``config.json`` (``gemma3n_text``),
``model.safetensors.index.json`` and shards of at most 4 GiB holding every tensor under ``model.``, BF16,
including the k/v projections the KV-shared layers carry but never use (as the official files do).

Weights (NumPy generator, seeded per tensor, so the bytes are the same on every machine):

* matrices [out, in]: N(0, 1/in) (activations keep their scale through every projection);
* ``embed_tokens``: N(0, 0.02^2) (times sqrt(2048) in the model: about 0.9 per entry; logits of about 1 through
  the tied head); ``embed_tokens_per_layer``: N(0, 0.05^2);
* ``q_norm`` / ``k_norm``: uniform(0.15, 0.25). With head_dim 256 and no 1/sqrt(E) scale, norm weights near 1
  give attention logits with a standard deviation of about 16, a nearly one-hot softmax that amplifies every
  rounding difference (transformers' own SDPA and eager paths then disagree by 2e-2). At 0.2 the logits have a
  standard deviation of about 0.6 and greedy tokens are stable across implementations;
* other 1-D weights (norm scales, ``correct_output_scale``): uniform(0.5, 1.5);
* AltUp ``prediction_coefs`` / ``correction_coefs`` / ``modality_router``: N(0, 0.2^2).

BF16 values are float32 draws truncated to their top 16 bits (fast; any BF16 value will do).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from minig3n.config import PRESETS

SHARD_BYTES = 4 * 1024 ** 3
CHUNK = 1 << 24          # values drawn at a time (64 MiB of float32)


def cache_dir(preset: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "minig3n" / f"bench-{preset.lower()}"


def tensor_shapes(cfg) -> dict[str, tuple]:
    """Every tensor of the text-only checkpoint, official names (prefix ``model.``), in file order."""
    from minig3n.checkpoint import text_weight_shapes
    shapes = dict(text_weight_shapes(cfg, "model."))
    G, E, D = cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
    for li in range(cfg.first_kv_shared_layer, cfg.num_hidden_layers):   # carried, never read
        p = f"model.layers.{li}.self_attn."
        shapes.update({p + "k_proj.weight": (G * E, D), p + "v_proj.weight": (G * E, D), p + "k_norm.weight": (E,)})
    return dict(sorted(shapes.items()))


def _draw(name: str, shape: tuple, rng, n: int) -> np.ndarray:
    """``n`` float32 values of tensor ``name`` (the next ones of its stream)."""
    if len(shape) == 1:
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            return rng.uniform(0.15, 0.25, n).astype(np.float32)
        return rng.uniform(0.5, 1.5, n).astype(np.float32)
    if name.endswith("embed_tokens.weight"):
        std = 0.02
    elif name.endswith("embed_tokens_per_layer.weight"):
        std = 0.05
    elif ".altup." in name:
        std = 0.2
    else:
        std = shape[1] ** -0.5
    return rng.standard_normal(n, dtype=np.float32) * np.float32(std)


def build(directory: Path, preset: str = "E2B", progress=sys.stderr) -> Path:
    """Write the checkpoint into ``directory`` (atomic per file; ``DONE`` written last). Returns the dir."""
    cfg = PRESETS[preset]().text
    directory.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(cfg)
    shards, cur, size = [], [], 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * 2
        if cur and size + nbytes > SHARD_BYTES:
            shards.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += nbytes
    shards.append(cur)
    weight_map, t0, done_bytes = {}, time.time(), 0
    total = sum(int(np.prod(s)) * 2 for s in shapes.values())
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {}, 0
        for name in names:
            n = int(np.prod(shapes[name])) * 2
            header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        header["__metadata__"] = {"format": "pt"}
        head = json.dumps(header, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)
        tmp = directory / (fname + ".tmp")
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            for name in names:
                shape = shapes[name]
                rng = np.random.default_rng(zlib.crc32(name.encode()))
                left = int(np.prod(shape))
                while left:
                    n = min(left, CHUNK)
                    f.write((_draw(name, shape, rng, n).view(np.uint32) >> 16).astype(np.uint16).tobytes())
                    left -= n
                    done_bytes += 2 * n
                if progress and done_bytes > 0:
                    print(f"\rbuilding {directory}: {done_bytes / 2**30:5.1f} / {total / 2**30:.1f} GiB "
                          f"({time.time() - t0:.0f} s)", end="", file=progress, flush=True)
        os.replace(tmp, directory / fname)
    meta = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(meta, indent=2))
    d = cfg.to_dict()
    d.update(architectures=["Gemma3nForCausalLM"], torch_dtype="bfloat16")
    (directory / "config.json").write_text(json.dumps(d, indent=2))
    (directory / "DONE").write_text(f"{preset} {total} bytes\n")
    if progress:
        print(f"\nbuilt {directory} in {time.time() - t0:.0f} s", file=progress)
    return directory


def ensure(preset: str = "E2B", directory: Path | None = None) -> Path:
    d = directory or cache_dir(preset)
    if not (d / "DONE").exists():
        build(d, preset)
    return d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="E2B", choices=sorted(PRESETS))
    ap.add_argument("--dir", type=Path, default=None)
    a = ap.parse_args(argv)
    print(ensure(a.preset, a.dir))


if __name__ == "__main__":
    main()
