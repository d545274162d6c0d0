"""Speed of minig3n against the reference (transformers / timm on torch), same inputs, same weights, one run.

    python -m tests.bench.bench_speed [--quick] [--threads N] [--cases text,decode,audio,vision] [--repeats R]
                                      [--audio-seconds S]

Cases (``--quick``: the small variant in brackets, for the reference-tier smoke test):

* ``text``: prefill of T=256 tokens [20] through a random ``Gemma3nForCausalLM`` (hidden 512, 8 layers,
  heads 8/2 x 64, intermediate 2048, vocab 8192, AltUp 4, LAuReL 64, 3 KV-shared layers, sparsity 0.95 on 3
  layers; [``text_models.tiny_config()``]), float32, all logits. Weights written by ``save_pretrained``,
  read by ``minig3n.decoder.load_text_model``.
* ``decode``: greedy generation of 32 tokens [8] after a 64-token [16] prompt, same model:
  ``minig3n.generate.Generator.generate`` against ``model.generate(do_sample=False)``, prefill included;
  the tokens must agree.
* ``audio``: 5 s [1 s] of audio (``--audio-seconds 30``: the 30 s a Gemma 3n prompt clip may hold) through the default (E2B/E4B-size) audio config [``goldens_audio.TINY``],
  random weights: ``extract_features`` + ``usm.audio_encoder`` against ``Gemma3nAudioFeatureExtractor`` +
  ``Gemma3nAudioEncoder``.
* ``vision``: one 768 x 768 [64 x 64] image through ``mobilenetv5_300m_enc`` [``goldens_vision.SPEC``],
  random weights, float32: ``mobilenetv5.vision_encoder`` against timm's forward.

How: a ``prepare`` subprocess builds the reference models with fixed seeds and writes weights and inputs to a
temp dir; then, per case, one subprocess runs minig3n (NumPy only, never imports torch) and another runs the
reference. Both get ``OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = MKL_NUM_THREADS = N`` in their environment
before anything is imported, and the reference calls ``torch.set_num_threads(N)``. Each side does one
warm-up call, then reports the median of ``R`` timed calls and its peak resident memory (VmHWM, the whole
process: interpreter, libraries, weights). Outputs are compared (relative error, tokens) so the two sides
are known to compute the same thing. Ratio = minig3n time / reference time (> 1: minig3n is slower).
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are passed through untouched and printed: see tests/bench/README.md.
The minig3n side imports minig3n before NumPy, as ``minig3n generate`` does, so that minig3n's
``OPENBLAS_THREAD_TIMEOUT=4`` applies (before 2026-12-07 23:40 it did not: OpenBLAS's idle threads then spun
for about 0.1 s after each call, on the cores numba's kernels wanted: audio 4.4 against 3.0 s, vision 3.5 against 3.2).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("text", "decode", "audio", "vision")
REPO = Path(__file__).resolve().parents[2]
REPEATS = {"text": 5, "decode": 3, "audio": 3, "vision": 2}     # timed calls per case (after one warm-up)
MAX_REL_ERR = 1e-3       # sanity bound on the float32 outputs: the sides must compute the same function

S, F = "sliding_attention", "full_attention"
TEXT_FULL = dict(vocab_size=8192, vocab_size_per_layer_input=8192, hidden_size=512, hidden_size_per_layer_input=128,
                 intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                 head_dim=64, max_position_embeddings=512, sliding_window=128, layer_types=[S, S, S, F] * 2,
                 num_kv_shared_layers=3, laurel_rank=64, altup_num_inputs=4,
                 activation_sparsity_pattern=[0.95] * 3 + [0.0] * 5)
SIZES = {  # (full, quick)
    "text_T": (256, 20), "prompt": (64, 16), "new_tokens": (32, 8), "audio_samples": (80_000, 16_000),
    "image": (768, 64),
}


def size(name: str, quick: bool):
    return SIZES[name][1 if quick else 0]


# ---------------------------------------------------------------------------------------------------------
# worker helpers (run inside the subprocesses; numpy / torch are imported only there)
# ---------------------------------------------------------------------------------------------------------

def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def openblas_info() -> dict:
    """NumPy's BLAS as it runs: the OpenBLAS kernel (core) picked at load time and its thread count, read
    through ctypes from the library NumPy bundles (threadpoolctl reports the same when installed)."""
    import ctypes
    import glob

    import numpy as np
    info = {"numpy": np.__version__}
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception as e:  # noqa: BLE001 - only descriptive
        info["blas"] = f"unknown ({e})"
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*.so*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for sym, key in (("get_corename", "core"), ("get_config", "config"), ("get_num_threads", "threads")):
            fn = next((getattr(lib, n) for n in (f"scipy_openblas_{sym}64_", f"openblas_{sym}")
                       if hasattr(lib, n)), None)
            if fn is not None:
                if key != "threads":
                    fn.restype = ctypes.c_char_p
                    info[key] = fn().decode()
                else:
                    info[key] = fn()
    return info


RUN: dict = {}          # per-worker facts gathered along the way (peak RSS of loading)


class _NoText:
    """Stands in for the tokenizer in ``Generator``: the random model's vocabulary (8192 ids) is larger than
    any bundled tokenizer's, and the benchmark times token ids, not text pieces."""

    def is_byte(self, token_id) -> bool:
        return False

    def decode(self, ids) -> str:
        return ""


def reset_peak_rss() -> bool:
    """Restart the VmHWM high-water mark at the current RSS (Linux: write 5 to /proc/self/clear_refs), so the
    peak read after the timed calls covers the computation (weights resident + activations), not loading."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed(fn, repeats: int):
    """One warm-up call, then ``repeats`` timed calls: (median seconds, all times, last result)."""
    RUN["load_peak_rss"], RUN["rss_reset"] = peak_rss_bytes(), reset_peak_rss()
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


# ---------------------------------------------------------------------------------------------------------
# prepare: reference models with fixed seeds -> weights + inputs in the work dir
# ---------------------------------------------------------------------------------------------------------

def prepare(work: Path, cases, quick: bool, threads: int) -> dict:
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    facts = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
             "torch_blas": "MKL" if torch.backends.mkl.is_available() else "?"}
    import transformers
    facts["transformers"] = transformers.__version__
    if "text" in cases or "decode" in cases:
        from tests.reference.text_models import tiny_causal_lm
        model = tiny_causal_lm(3, **({} if quick else TEXT_FULL))
        model.save_pretrained(work / "text")
        V = model.config.vocab_size
        rng = np.random.default_rng(0)
        ids = rng.integers(3, V, size=(1, size("text_T", quick)), dtype=np.int64)
        ids[0, 0] = model.config.bos_token_id
        np.save(work / "text_ids.npy", ids)
        np.save(work / "prompt_ids.npy", ids[:, :size("prompt", quick)])
    if "audio" in cases:
        from safetensors.torch import save_file
        from transformers import Gemma3nAudioConfig
        from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder

        from tests.reference.goldens_audio import TINY, randomize, wave
        kw = dict(TINY) if quick else {}
        torch.manual_seed(5)
        enc = Gemma3nAudioEncoder(Gemma3nAudioConfig(**kw)).eval()
        randomize(enc, 5)
        save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(work / "audio.safetensors"))
        (work / "audio.json").write_text(json.dumps(kw))
        np.save(work / "wave.npy", wave(6, size("audio_samples", quick)))
        facts["audio_params"] = sum(p.numel() for p in enc.parameters())
        del enc
    if "vision" in cases:
        import timm
        from safetensors.torch import save_file

        from tests.reference.goldens_vision import SPEC, build_timm, vision_config_dict
        from tests.reference.timm_custom import ARCH_NAME
        facts["timm"] = timm.__version__
        if quick:
            vcfg = vision_config_dict(dict(SPEC, msfa_output_resolution=2), ARCH_NAME)
        else:
            vcfg = vision_config_dict(None, "mobilenetv5_300m_enc")
        m = build_timm(vcfg.get("model_args"), seed=7, architecture=vcfg["architecture"])
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(work / "vision.safetensors"))
        (work / "vision.json").write_text(json.dumps(vcfg))
        n = size("image", quick)
        g = torch.Generator().manual_seed(8)
        np.save(work / "pixels.npy", torch.rand((1, 3, n, n), generator=g).numpy())
        facts["vision_params"] = sum(p.numel() for p in m.parameters())
        del m
    return facts


# ---------------------------------------------------------------------------------------------------------
# the two sides
# ---------------------------------------------------------------------------------------------------------

def run_minig3n(work: Path, case: str, quick: bool, repeats: int) -> dict:
    __import__("minig3n")  # before NumPy, as the CLI imports it: its OPENBLAS_THREAD_TIMEOUT=4 applies
    import numpy as np
    res = {}
    if case in ("text", "decode"):
        from minig3n import decoder
        model = decoder.load_text_model(work / "text", np.float32)
        if case == "text":
            ids = np.load(work / "text_ids.npy")
            res["median"], res["times"], (out, _) = timed(lambda: decoder.forward(model, ids), repeats)
            np.save(work / "out_minig3n_text.npy", out)
        else:
            from minig3n.generate import Generator, Prompt
            gen = Generator(model, _NoText(), frozenset())          # no stop token: all N steps are taken
            prompt = Prompt(np.load(work / "prompt_ids.npy")[0].tolist())
            n_new = size("new_tokens", quick)
            res["median"], res["times"], toks = timed(lambda: [t for t, _ in gen.generate(prompt, n_new)], repeats)
            res["tokens"] = [int(t) for t in toks]
    elif case == "audio":
        from minig3n import features, usm
        from minig3n.checkpoint import load_safetensors
        from minig3n.config import AudioConfig
        kw = json.loads((work / "audio.json").read_text())
        cfg = AudioConfig(**kw)
        p, _ = load_safetensors(work / "audio.safetensors")
        w = np.load(work / "wave.npy")

        def run():
            f, m = features.extract_features([w], feature_size=cfg.input_feat_size)
            return usm.audio_encoder(f, ~m, p, cfg)[0]
        res["median"], res["times"], out = timed(run, repeats)
        np.save(work / "out_minig3n_audio.npy", out)
    elif case == "vision":
        from minig3n import mobilenetv5
        from minig3n.checkpoint import load_safetensors
        from minig3n.config import VisionConfig
        vcfg = VisionConfig.from_dict(json.loads((work / "vision.json").read_text()))
        p, _ = load_safetensors(work / "vision.safetensors")
        px = np.load(work / "pixels.npy")
        res["median"], res["times"], out = timed(lambda: mobilenetv5.vision_encoder(px, p, vcfg, prefix=""), repeats)
        np.save(work / "out_minig3n_vision.npy", out)
    res["blas"] = openblas_info()
    res["torch_imported"] = "torch" in sys.modules
    return res


def run_reference(work: Path, case: str, quick: bool, repeats: int, threads: int) -> dict:
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    res = {}
    with torch.inference_mode():
        if case in ("text", "decode"):
            from transformers import Gemma3nForCausalLM
            model = Gemma3nForCausalLM.from_pretrained(work / "text", dtype=torch.float32).eval()
            if case == "text":
                ids = torch.from_numpy(np.load(work / "text_ids.npy"))
                res["median"], res["times"], out = timed(lambda: model(ids, use_cache=False).logits, repeats)
                np.save(work / "out_reference_text.npy", out.numpy())
            else:
                ids = torch.from_numpy(np.load(work / "prompt_ids.npy"))
                model.generation_config.eos_token_id = None                       # no stop token: all N steps
                n_new = size("new_tokens", quick)
                res["median"], res["times"], out = timed(
                    lambda: model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=n_new, pad_token_id=0), repeats)
                res["tokens"] = out[0, ids.shape[1]:].tolist()
        elif case == "audio":
            from safetensors.torch import load_file
            from transformers import Gemma3nAudioConfig, Gemma3nAudioFeatureExtractor
            from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder
            kw = json.loads((work / "audio.json").read_text())
            cfg = Gemma3nAudioConfig(**kw)
            enc = Gemma3nAudioEncoder(cfg).eval()
            enc.load_state_dict(load_file(str(work / "audio.safetensors")))
            fe = Gemma3nAudioFeatureExtractor(feature_size=cfg.input_feat_size)
            w = np.load(work / "wave.npy")

            def run():
                r = fe([w], return_tensors="pt")
                return enc(r["input_features"], ~r["input_features_mask"]).last_hidden_state
            res["median"], res["times"], out = timed(run, repeats)
            np.save(work / "out_reference_audio.npy", out.numpy())
        elif case == "vision":
            import timm
            from safetensors.torch import load_file

            from tests.reference.timm_custom import register
            register()  # registers the custom-spec architecture
            vcfg = json.loads((work / "vision.json").read_text())
            m = timm.create_model(vcfg["architecture"], pretrained=False, num_classes=0,
                                  **(vcfg.get("model_args") or {})).eval()
            m.load_state_dict(load_file(str(work / "vision.safetensors")))
            px = torch.from_numpy(np.load(work / "pixels.npy"))
            res["median"], res["times"], out = timed(lambda: m(px), repeats)
            np.save(work / "out_reference_vision.npy", out.numpy())
    res["torch_threads"] = torch.get_num_threads()
    return res


# ---------------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------------

def worker_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def spawn(role: str, work: Path, a, case: str = "") -> dict:
    cmd = [sys.executable, "-m", "tests.bench.bench_speed", "--worker", role, "--dir", str(work),
           "--threads", str(a.threads), "--cases", case or ",".join(a.case_list)]
    if a.quick:
        cmd.append("--quick")
    if a.repeats:
        cmd += ["--repeats", str(a.repeats)]
    if a.audio_seconds:
        cmd += ["--audio-seconds", str(a.audio_seconds)]
    p = subprocess.run(cmd, cwd=REPO, env=worker_env(a.threads), capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"bench_speed: the {role} worker{' for ' + case if case else ''} failed "
                         f"(exit {p.returncode})")
    return json.loads(p.stdout.strip().splitlines()[-1])


def worker_main(a) -> None:
    work = Path(a.dir)
    if a.worker == "prepare":
        out = prepare(work, a.case_list, a.quick, a.threads)
        out["blas"] = openblas_info()
    else:
        case = a.case_list[0]
        repeats = a.repeats or (1 if a.quick else REPEATS[case])
        out = (run_minig3n(work, case, a.quick, repeats) if a.worker == "minig3n"
               else run_reference(work, case, a.quick, repeats, a.threads))
    out["peak_rss"] = peak_rss_bytes()
    out.update(RUN)
    print(json.dumps(out))


def describe(case: str, quick: bool) -> str:
    if case == "text":
        return f"text prefill T={size('text_T', quick)}"
    if case == "decode":
        return f"decode {size('new_tokens', quick)} tok after {size('prompt', quick)}"
    if case == "audio":
        return f"audio {size('audio_samples', quick) / 16000:g} s"
    return f"vision {size('image', quick)}x{size('image', quick)}"


def check(work: Path, case: str, ours: dict, ref: dict) -> str:
    """Evidence that both sides computed the same thing; raises SystemExit if they did not."""
    if case == "decode":
        if ours["tokens"] != ref["tokens"]:
            raise SystemExit(f"bench_speed: decode tokens differ: minig3n {ours['tokens']} vs reference "
                             f"{ref['tokens']}")
        return f"{len(ours['tokens'])} tokens equal"
    import numpy as np

    from tests.golden_io import rel_err
    o, r = np.load(work / f"out_minig3n_{case}.npy"), np.load(work / f"out_reference_{case}.npy")
    e = rel_err(o, r)
    if not e <= MAX_REL_ERR:
        raise SystemExit(f"bench_speed: {case} outputs differ: rel err {e:.3g} > {MAX_REL_ERR}")
    return f"rel err {e:.1e}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small models and inputs (smoke test)")
    ap.add_argument("--threads", type=int, default=1, help="threads for both sides (default 1)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--repeats", type=int, default=0, help="timed calls per case (default: per case; 1 with --quick)")
    ap.add_argument("--audio-seconds", type=float, default=0, help="length of the audio case's clip (default 5 s)")
    ap.add_argument("--worker", choices=["prepare", "minig3n", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.audio_seconds:
        SIZES["audio_samples"] = (int(a.audio_seconds * 16000), SIZES["audio_samples"][1])
    a.case_list = [c.strip() for c in a.cases.split(",") if c.strip()]
    bad = [c for c in a.case_list if c not in CASES]
    if bad or not a.case_list:
        ap.error(f"--cases: unknown case(s) {bad}; choose from {','.join(CASES)}")
    if a.threads < 1:
        ap.error("--threads must be >= 1")
    if a.worker:
        return worker_main(a)

    t_start, load0 = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        work = Path(tmp)
        facts = spawn("prepare", work, a)
        rows = []
        for case in a.case_list:
            ours = spawn("minig3n", work, a, case)
            if ours["torch_imported"]:
                raise SystemExit("bench_speed: the minig3n worker imported torch")
            ref = spawn("reference", work, a, case)
            rows.append((case, ours, ref, check(work, case, ours, ref)))
    load1 = os.getloadavg()

    b = rows[0][1]["blas"]                      # NumPy's BLAS as the minig3n worker saw it
    env_note = ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"))
    print(f"bench_speed {'--quick ' if a.quick else ''}{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))}"
          f"  {cpu_model()}  nproc {os.cpu_count()}  load avg {load0[0]:.2f} -> {load1[0]:.2f}")
    print(f"python {platform.python_version()}  numpy {b['numpy']}  torch {facts['torch']}  transformers "
          f"{facts['transformers']}" + (f"  timm {facts['timm']}" if "timm" in facts else ""))
    print(f"threads {a.threads}: torch {rows[0][2]['torch_threads']} ({facts['torch_blas']}), "
          f"NumPy BLAS {b.get('blas')} core {b.get('core', '?')} threads {b.get('threads', '?')}; {env_note}")
    sizes = [f"{k.split('_')[0]} {facts[k] / 1e6:.3g}M" for k in ("audio_params", "vision_params") if k in facts]
    if sizes:
        print("random weights, parameters: " + ", ".join(sizes))
    mib = 1024 ** 2
    head = f"{'case':<28} {'minig3n s':>10} {'reference s':>12} {'ratio':>8} {'minig3n MiB':>12} {'ref MiB':>8}  check"
    print(head)
    print("-" * len(head))
    for case, ours, ref, note in rows:
        label = describe(case, a.quick)
        extra = ""
        if case == "decode":
            n = len(ours["tokens"])
            extra = f"; {n / ours['median']:.1f} vs {n / ref['median']:.1f} tok/s"
        print(f"{label:<28} {ours['median']:>10.4g} {ref['median']:>12.4g} {ours['median'] / ref['median']:>7.3g}x "
              f"{ours['peak_rss'] / mib:>12.0f} {ref['peak_rss'] / mib:>8.0f}  {note}{extra}")
    reset = all(o.get("rss_reset") and r.get("rss_reset") for _, o, r, _ in rows)
    print("ratio = minig3n / reference: median of the timed calls after one warm-up; > 1 means minig3n is slower")
    print("MiB = peak RSS of each side's process " + ("while computing (high-water mark reset after loading; "
          "weights + activations + libraries)" if reset else "(whole process, loading included)"))
    for case, ours, ref, _ in rows:
        print(f"  {case}: minig3n {' '.join(f'{t:.4f}' for t in ours['times'])} s; reference "
              f"{' '.join(f'{t:.4f}' for t in ref['times'])} s; load peak {ours['load_peak_rss'] / mib:.0f} / "
              f"{ref['load_peak_rss'] / mib:.0f} MiB")
    print(f"total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
