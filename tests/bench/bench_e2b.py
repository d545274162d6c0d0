"""E2B on a plain CPU: minig3n (as ``minig3n generate`` runs it) against transformers bf16 and float32.

    python -m tests.bench.bench_e2b [--preset E2B] [--rounds 2] [--threads 2] [--prompt 128] [--new 16]
                                    [--sides minig3n,hf-bf16,hf-fp32] [--unset-openblas-env]
    python -m tests.bench.bench_e2b --long 16384          # minig3n only: peak memory of one long prefill

The checkpoint: ``tests/bench/e2b_checkpoint.py`` (E2B text architecture, random BF16 weights, the official
sharded layout), built once into ``~/.cache/minig3n/bench-e2b/`` and reused. transformers loads the same
directory as ``Gemma3nForCausalLM`` (``dtype=torch.bfloat16``, its default for this checkpoint, and
``dtype=torch.float32``, the reference tier's precision).

Each side runs in its own fresh subprocess, one after the other, in interleaved rounds (minig3n, hf-bf16,
hf-fp32, then the next round), with ``OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = MKL_NUM_THREADS =
NUMBA_NUM_THREADS = N`` and ``torch.set_num_threads(N)``. Before every subprocess the checkpoint's pages are
dropped from the page cache (``posix_fadvise(DONTNEED)`` on each shard: only these files, nothing else on
the machine), so each first prefill is a cold start. A worker:

1. loads the model (minig3n: ``Generator`` over ``decoder.load_text_model``, as ``minig3n generate``);
2. cold: prefill of the prompt (P random ids, one forward, logits of the last token) -> "cold first token"
   = load + this prefill;
3. warm: the same prefill again; then greedy decode of ``new`` tokens (minig3n: ``Generator.generate``, whose
   own stats give prefill and decode seconds; transformers: the same loop by hand, ``model(ids,
   past_key_values=cache, use_cache=True)`` one token at a time, logits of the last position, argmax);
4. reports VmHWM (peak resident), RssAnon / RssFile at the end, the greedy ids, threads and the BLAS
   (threadpoolctl).

Before the rounds, two fresh processes load minig3n's numba kernels (``bf16.load_kernels``) and print the time:
the first compiles them if numba's cache (``minig3n/__pycache__``) does not hold them yet, which happens once
per install; a cold start in the rounds then means cold file pages, not a compiler run.
A separate subprocess measures the memory bandwidth (NumPy float32 GEMV over a 1 GiB matrix, best of 5) and
the roofline: bandwidth / bytes of weights one decode step reads (BF16 or float32; every matrix of the text
decoder plus the tied LM head; the PLE and embedding tables contribute one row each).
The greedy ids of minig3n must equal transformers float32's (first ``new`` ids) or the run fails.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIDES = ("minig3n", "hf-bf16", "hf-fp32")
GiB = 1024 ** 3


def proc_status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    return out


def blas_info() -> dict:
    try:
        from threadpoolctl import threadpool_info
        return {"threadpoolctl": [{k: d.get(k) for k in ("internal_api", "version", "num_threads",
                                                          "architecture", "filepath")} for d in threadpool_info()]}
    except ImportError:
        from tests.bench.bench_speed import openblas_info
        return {"openblas": openblas_info()}


def prompt_ids(P: int, V: int):
    import numpy as np
    ids = np.random.default_rng(0).integers(3, V, size=(1, P), dtype=np.int64)
    ids[0, 0] = 2                                                           # <bos>
    return ids


# ---------------------------------------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------------------------------------

def work_minig3n(d: Path, P: int, new: int) -> dict:
    from minig3n import decoder
    from minig3n.generate import Generator, Prompt
    from minig3n.kv_cache import KVCache
    from tests.bench.bench_speed import _NoText
    t0 = time.perf_counter()
    model = decoder.load_text_model(d)                                     # what Generator.load does
    gen = Generator(model, _NoText(), frozenset())                         # no tokenizer: ids only, no stop
    load = time.perf_counter() - t0
    ids = prompt_ids(P, model.cfg.vocab_size)
    t0 = time.perf_counter()
    decoder.forward(model, ids, cache=KVCache.empty(model.cfg, 1, model.dtype), logits_to_keep=1)
    cold = time.perf_counter() - t0
    st: dict = {}
    toks = [t for t, _ in gen.generate(Prompt(ids[0].tolist()), new + 1, stats=st)]
    from minig3n import accel
    return {"load": load, "cold_prefill": cold, "warm_prefill": st["prefill_seconds"],
            "decode_tok_s": st["decode_steps"] / st["decode_seconds"], "ids": [int(t) for t in toks[:new]],
            "accel": accel.mode(), "torch_imported": "torch" in sys.modules,
            "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT", "(unset)"),
            "numba_threads": _numba_threads()}


def _numba_threads():
    if "numba" not in sys.modules:
        return None
    import numba
    return {"threads": numba.get_num_threads(), "layer": numba.threading_layer()}


def work_hf(d: Path, P: int, new: int, dtype: str, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    from transformers import DynamicCache, Gemma3nForCausalLM
    t0 = time.perf_counter()
    model = Gemma3nForCausalLM.from_pretrained(d, dtype=getattr(torch, dtype)).eval()
    load = time.perf_counter() - t0
    ids = torch.from_numpy(prompt_ids(P, model.config.vocab_size))
    with torch.inference_mode():
        def prefill():
            cache = DynamicCache(config=model.config)
            out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            return out.logits[0, -1], out.past_key_values
        t0 = time.perf_counter()
        prefill()
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        logits, cache = prefill()
        warm = time.perf_counter() - t0
        toks = [int(logits.argmax())]
        t0 = time.perf_counter()
        pos = P
        for _ in range(new):
            step = torch.tensor([[toks[-1]]])
            out = model(step, past_key_values=cache, use_cache=True, logits_to_keep=1,
                        cache_position=torch.tensor([pos]))
            cache, pos = out.past_key_values, pos + 1
            toks.append(int(out.logits[0, -1].argmax()))
        dec = time.perf_counter() - t0
    return {"load": load, "cold_prefill": cold, "warm_prefill": warm, "decode_tok_s": new / dec,
            "ids": toks[:new], "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def work_bandwidth(threads: int) -> dict:
    import numpy as np
    W = np.random.default_rng(0).standard_normal((65536, 4096), dtype=np.float32)   # 1 GiB
    x = np.ones((1, 4096), np.float32)
    best = min(_t(lambda: x @ W.T) for _ in range(5))
    return {"gemv_gb_s": W.nbytes / best / 1e9}


def work_kernels() -> dict:
    """Import numba and load minig3n's BF16 kernels, as ``decoder.load_text_model`` does first: compiled on
    the first run after an install (or a change to ``_bf16_kernels.py``), then read from numba's cache."""
    t0 = time.perf_counter()
    from minig3n import bf16
    bf16.load_kernels()
    return {"kernels_s": time.perf_counter() - t0}


def _t(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def work_long(d: Path, T: int) -> dict:
    from minig3n import decoder
    from minig3n.kv_cache import KVCache
    model = decoder.load_text_model(d)
    ids = prompt_ids(T, model.cfg.vocab_size)
    t0 = time.perf_counter()
    logits, cache = decoder.forward(model, ids, cache=KVCache.empty(model.cfg, 1, model.dtype), logits_to_keep=1)
    return {"T": T, "prefill_s": time.perf_counter() - t0, "cache_bytes": cache.nbytes}


def worker_main(a) -> None:
    d = Path(a.dir)
    if a.worker == "minig3n":
        out = work_minig3n(d, a.prompt, a.new)
    elif a.worker == "bandwidth":
        out = work_bandwidth(a.threads)
    elif a.worker == "kernels":
        out = work_kernels()
    elif a.worker == "long":
        out = work_long(d, a.long)
    else:
        out = work_hf(d, a.prompt, a.new, "bfloat16" if a.worker == "hf-bf16" else "float32", a.threads)
    out.update(proc_status())
    out["blas"] = blas_info()
    print(json.dumps(out))


# ---------------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------------

def drop_file_pages(d: Path) -> None:
    """Evict the checkpoint's pages from the page cache (these files only)."""
    for f in d.glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def spawn(role: str, d: Path, a, unset: bool) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[k] = str(a.threads)
    if unset:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "tests.bench.bench_e2b", "--worker", role, "--dir", str(d),
           "--threads", str(a.threads), "--prompt", str(a.prompt), "--new", str(a.new), "--long", str(a.long)]
    drop_file_pages(d)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"bench_e2b: the {role} worker failed (exit {p.returncode})")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall"] = time.perf_counter() - t0
    return out


def decode_bytes(cfg, itemsize: int) -> int:
    """Bytes of weights one decode step reads: every matrix of the text decoder and the tied LM head (the two
    embedding tables: one row each)."""
    import numpy as np

    from minig3n.checkpoint import text_weight_shapes
    n = 0
    for name, shape in text_weight_shapes(cfg, "model.").items():
        if name.endswith("embed_tokens_per_layer.weight"):
            n += shape[1]
        elif len(shape) == 2:
            n += int(np.prod(shape))
    return n * itemsize


def skipped_bytes(cfg, itemsize: int) -> int:
    """Of ``decode_bytes``, what minig3n expects not to read: on a layer with sparsity s > 0 the up_proj rows
    and the down_proj columns of the units the Gaussian top-k drops (a share s of them for Gaussian gates;
    ``mlp.py``). The roofline is still taken on every byte (the reference's work, and the figures of earlier
    runs)."""
    return int(sum(2 * s * i * cfg.hidden_size * itemsize
                   for s, i in zip(cfg.activation_sparsity_pattern, cfg.intermediate_size) if s > 0))


def load_avg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="E2B", choices=("E2B", "E4B"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (128)")
    ap.add_argument("--new", type=int, default=16, help="greedy tokens decoded and compared (16)")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--unset-openblas-env", action="store_true",
                    help="also run every side with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed (that command only)")
    ap.add_argument("--long", type=int, default=0, help="only measure minig3n's peak memory on a LONG-token prefill")
    ap.add_argument("--dir", help="checkpoint directory (default: the cached one, built if missing)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker_main(a)
    from tests.bench.e2b_checkpoint import ensure
    d = Path(a.dir) if a.dir else ensure(a.preset)
    from minig3n.config import Gemma3nConfig
    cfg = Gemma3nConfig.from_file(d / "config.json").text
    env_state = {k: os.environ.get(k, "(unset)") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    print(f"bench_e2b: {d} ({a.preset} text, {sum(f.stat().st_size for f in d.glob('*.safetensors')) / GiB:.2f} GiB "
          f"BF16); threads {a.threads}; env {env_state}; load average {load_avg()}", flush=True)
    if a.long:
        r = spawn("long", d, a, False)
        print(f"long prefill: {a.long} tokens in {r['prefill_s']:.0f} s; peak RSS {r['VmHWM'] / GiB:.2f} GiB "
              f"(anon {r['RssAnon'] / GiB:.2f}, file {r['RssFile'] / GiB:.2f} at the end); KV cache "
              f"{r['cache_bytes'] / GiB:.2f} GiB; load average {load_avg()}")
        return
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    envs = [False, True] if a.unset_openblas_env else [False]
    runs = {(s, u): [] for s in sides for u in envs}
    if "minig3n" in sides:      # a one-time compile is not a cold start: do it before the rounds, and say so
        k1, k2 = spawn("kernels", d, a, False), spawn("kernels", d, a, False)
        print(f"numba kernels (bf16.load_kernels in a fresh process): {k1['kernels_s']:.1f} s, then "
              f"{k2['kernels_s']:.1f} s (the first call compiles them if numba's cache does not hold them yet: "
              f"once per install)", flush=True)
    bw = spawn("bandwidth", d, a, False)
    print(f"memory bandwidth (NumPy float32 GEMV, 1 GiB): {bw['gemv_gb_s']:.1f} GB/s", flush=True)
    for r in range(a.rounds):
        for u in envs:
            for s in (sides[r % len(sides):] + sides[:r % len(sides)]):
                out = spawn(s, d, a, u)
                runs[(s, u)].append(out)
                print(f"round {r + 1} {s}{' (OPENBLAS_* unset)' if u else ''}: load {out['load']:.1f} s, cold "
                      f"prefill {out['cold_prefill']:.2f} s, warm {out['warm_prefill']:.2f} s, decode "
                      f"{out['decode_tok_s']:.2f} tok/s, peak RSS {out['VmHWM'] / GiB:.2f} GiB; load avg "
                      f"{load_avg()}", flush=True)
    # correctness: greedy ids against transformers float32
    ref = next((v[0]["ids"] for (s, _), v in runs.items() if s == "hf-fp32" and v), None)
    ours = next((v[0]["ids"] for (s, _), v in runs.items() if s == "minig3n" and v), None)
    if ref is not None and ours is not None:
        same = sum(1 for x, y in zip(ours, ref) if x == y)
        print(f"greedy ids, minig3n vs transformers float32: {same}/{len(ref)} equal ({ours[:8]}...)")
        if ours != ref:
            raise SystemExit(f"bench_e2b: greedy ids differ: minig3n {ours} vs transformers float32 {ref}")
    bf = next((v[0]["ids"] for (s, _), v in runs.items() if s == "hf-bf16" and v), None)
    if bf is not None and ours is not None:
        print(f"greedy ids, minig3n vs transformers bf16: {sum(1 for x, y in zip(ours, bf) if x == y)}/{len(bf)} equal")
    b16, b32 = decode_bytes(cfg, 2), decode_bytes(cfg, 4)
    print(f"weights per decode token: {b16 / 1e9:.2f} GB BF16 (minig3n skips about "
          f"{skipped_bytes(cfg, 2) / 1e9:.2f} GB of them: the sparse layers' up_proj rows and down_proj "
          "columns of dropped units), "
          f"{b32 / 1e9:.2f} GB float32; roofline at "
          f"{bw['gemv_gb_s']:.1f} GB/s: {bw['gemv_gb_s'] * 1e9 / b16:.1f} tok/s BF16, "
          f"{bw['gemv_gb_s'] * 1e9 / b32:.1f} tok/s float32")
    med = {k: {m: statistics.median(o[m] for o in v) for m in ("decode_tok_s", "cold_prefill", "warm_prefill",
                                                              "load", "VmHWM")} | {"first_token": statistics.median(
        o["load"] + o["cold_prefill"] for o in v)} for k, v in runs.items() if v}
    print()
    print("| side | env | decode tok/s | cold first token s (load + prefill) | warm prefill s | peak RSS GiB |")
    print("|---|---|---:|---:|---:|---:|")
    for (s, u), m in med.items():
        print(f"| {s} | {'OPENBLAS_* unset' if u else 'as set'} | {m['decode_tok_s']:.2f} | {m['first_token']:.1f} "
              f"({m['load']:.1f} + {m['cold_prefill']:.2f}) | {m['warm_prefill']:.2f} | {m['VmHWM'] / GiB:.2f} |")
    for u in envs:
        if ("minig3n", u) in med and ("hf-bf16", u) in med:
            o, r = med[("minig3n", u)], med[("hf-bf16", u)]
            print(f"ratios vs transformers bf16 ({'OPENBLAS_* unset' if u else 'env as set'}): decode "
                  f"{o['decode_tok_s'] / r['decode_tok_s']:.2f}x faster, warm prefill "
                  f"{r['warm_prefill'] / o['warm_prefill']:.2f}x faster, cold first token "
                  f"{o['first_token'] / r['first_token']:.2f}x the time, peak RSS {o['VmHWM'] / r['VmHWM']:.2f}x; "
                  f"minig3n decode = {o['decode_tok_s'] / (bw['gemv_gb_s'] * 1e9 / b16) * 100:.0f} % of the BF16 roofline")
    print("\nper run:")
    for k, v in runs.items():
        for o in v:
            print(f"  {k[0]} {'unset' if k[1] else 'set'}: " + json.dumps(
                {m: (round(x, 3) if isinstance(x, float) else x) for m, x in o.items() if m not in ("ids",)}))


if __name__ == "__main__":
    main()
