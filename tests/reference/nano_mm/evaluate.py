"""Held-out accuracy of nano-gemma3n-mm through minig3n (NumPy), per modality, with confusion matrices.

    python -m tests.reference.nano_mm.evaluate --model weights/nano-gemma3n-mm --per-digit 10 --seed 2000
    python -m tests.reference.nano_mm.evaluate --model weights/nano-gemma3n-mm --write-heldout 3 --seed 1000
    python -m tests.reference.nano_mm.evaluate --model weights/nano-gemma3n-mm --committed \
        --json weights/nano-gemma3n-mm/heldout_committed_eval.json

Fresh samples are drawn with ``data.draw_digit`` / ``data.speak_digit`` from ``--seed`` (the training run
draws from other seeds, ``data.SEEDS``), ``--per-digit`` of each digit per modality. Each one is asked through
``minig3n``'s generator, greedily, as ``minig3n generate --chat "What digit is this?" --image X`` would
(``"Which digit was spoken?"`` with ``--audio``); an answer is right when the generated text is exactly the
digit (the generator stops at ``<end_of_turn>``). ``--write-heldout K`` instead writes K samples of each digit
and modality as files (PNG; 16 kHz 16-bit WAV) plus ``labels.json`` into ``MODEL/heldout/`` for the NumPy-tier
test; ``--committed`` scores those committed files (``labels.json``) instead of fresh draws (what
``heldout_committed_eval.json`` records and tests/test_nano_mm.py recomputes). ``--engine reference`` asks the transformers model instead (greedy ``generate`` through the reference
processor, PIL image backend).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import data

QUESTIONS = {"image": "What digit is this?", "audio": "Which digit was spoken?"}


def draw(kind: str, per_digit: int, seed: int) -> list[dict]:
    """``per_digit`` samples of each digit, in digit-major shuffled order: [{"media", "digit", "desc"}]."""
    rng = np.random.default_rng(seed + (0 if kind == "image" else 1))
    digits = np.repeat(np.arange(10), per_digit)
    rng.shuffle(digits)
    out = []
    for d in digits:
        if kind == "image":
            im, _ = data.draw_digit(rng, int(d))
            out.append(dict(media=im, digit=int(d), desc=f"{im.size[0]}x{im.size[1]}"))
        else:
            x, _, desc = data.speak_digit(rng, int(d))
            out.append(dict(media=x, digit=int(d), desc=desc))
    return out


class Minig3nAsker:
    """Greedy answers from minig3n's generator, as ``minig3n generate --chat Q --image X`` computes them; the
    processor, towers and text model are loaded once (``generate``'s own path reloads them per call)."""

    def __init__(self, model_dir):
        from minig3n.generate import Generator
        from minig3n.multimodal import load_multimodal_model
        from minig3n.processor import Processor
        self.gen = Generator.load(model_dir)
        self.mm = load_multimodal_model(self.gen.model.ckpt)
        self.proc = Processor.from_dir(model_dir)

    def __call__(self, kind: str, media) -> str:
        from minig3n.generate import Prompt
        from minig3n.multimodal import embed_inputs
        from minig3n.processor import chat_with_media
        item = media if kind == "image" or isinstance(media, (str, Path)) else (media, data.RATE)
        msgs = chat_with_media(QUESTIONS[kind], images=[item] if kind == "image" else (),
                               audio=[item] if kind == "audio" else ())
        x = self.proc.apply_chat_template(msgs)
        embeds = embed_inputs(self.mm, x.input_ids, x.pixel_values, x.input_features, x.input_features_mask)
        prompt = Prompt([int(i) for i in x.input_ids[0]], embeds[0])
        return "".join(piece for _, piece in self.gen.generate(prompt, max_new_tokens=4))


class ReferenceAsker:
    def __init__(self, model_dir):
        import torch
        from tests.reference.timm_custom import register
        register()                                 # the custom MobileNetV5
        from transformers import AutoProcessor, Gemma3nForConditionalGeneration
        torch.set_num_threads(1)
        self.model = Gemma3nForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.proc = AutoProcessor.from_pretrained(model_dir, backend="pil")

    def __call__(self, kind: str, media) -> str:
        import torch
        from PIL import Image
        if isinstance(media, (str, Path)):
            media = Image.open(media) if kind == "image" else _read_wav(media)
        msgs = [{"role": "user", "content": [{"type": kind, kind: media}, {"type": "text", "text": QUESTIONS[kind]}]}]
        inputs = self.proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=4, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.proc.tokenizer.decode(new, skip_special_tokens=True)


def _read_wav(path) -> np.ndarray:
    import wave
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def score(ask, kind: str, items: list[dict], progress=True) -> dict:
    """Answers, accuracy and the confusion matrix (rows: true digit; columns 0-9, then 'other')."""
    conf = np.zeros((10, 11), dtype=int)
    answers = []
    t0 = time.time()
    for i, it in enumerate(items):
        ans = ask(kind, it["media"])
        a = ans.strip()
        col = int(a) if len(a) == 1 and a.isdigit() else 10
        conf[it["digit"], col] += 1
        answers.append(ans)
        if progress and (i + 1) % 10 == 0:
            print(f"  {kind} {i + 1}/{len(items)}: {np.trace(conf) / (i + 1):.3f} correct, "
                  f"{(time.time() - t0) / (i + 1):.2f} s each", file=sys.stderr)
    right = [a.strip() == str(it["digit"]) for a, it in zip(answers, items)]
    return dict(n=len(items), correct=int(sum(right)), accuracy=float(np.mean(right)), confusion=conf.tolist(),
                answers=answers, digits=[it["digit"] for it in items], descs=[it["desc"] for it in items])


def confusion_markdown(conf) -> str:
    head = "| true \\ answer | " + " | ".join(str(d) for d in range(10)) + " | other |\n"
    head += "|---" * 12 + "|\n"
    return head + "".join(f"| **{d}** | " + " | ".join(str(v) if v else "." for v in row) + " |\n"
                          for d, row in enumerate(conf))


def committed(model_dir: Path, kind: str) -> list[dict]:
    """The committed held-out files of ``kind`` (``MODEL/heldout/labels.json``), sorted by name, as ``draw``'s
    items (the media is the file's path)."""
    files = json.loads((Path(model_dir) / "heldout" / "labels.json").read_text())["files"]
    return [dict(media=str(Path(model_dir) / "heldout" / name), digit=v["digit"], desc=v["desc"])
            for name, v in sorted(files.items()) if name.startswith(kind)]


def write_heldout(out: Path, per_digit: int, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    labels = {}
    for kind in ("image", "audio"):
        for i, it in enumerate(draw(kind, per_digit, seed)):
            name = f"{kind}_{i:02d}.{'png' if kind == 'image' else 'wav'}"
            if kind == "image":
                it["media"].save(out / name, optimize=True)
            else:
                data.write_wav(out / name, it["media"])
            labels[name] = dict(digit=it["digit"], desc=it["desc"])
    (out / "labels.json").write_text(json.dumps(dict(seed=seed, per_digit=per_digit, files=labels), indent=1) + "\n")
    return labels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("weights/nano-gemma3n-mm"))
    p.add_argument("--per-digit", type=int, default=10)
    p.add_argument("--seed", type=int, default=data.SEEDS["card_heldout"])
    p.add_argument("--engine", choices=("minig3n", "reference"), default="minig3n")
    p.add_argument("--write-heldout", type=int, default=0, metavar="K")
    p.add_argument("--committed", action="store_true", help="score MODEL/heldout/ (labels.json), not fresh draws")
    p.add_argument("--json", type=Path, help="write the results here")
    a = p.parse_args(argv)
    if a.write_heldout:
        labels = write_heldout(a.model / "heldout", a.write_heldout, a.seed)
        size = sum(f.stat().st_size for f in (a.model / "heldout").iterdir())
        print(f"wrote {len(labels)} files, {size / 1e3:.0f} kB, into {a.model / 'heldout'}")
        return 0
    ask = (Minig3nAsker if a.engine == "minig3n" else ReferenceAsker)(a.model)
    results = {}
    for kind in ("image", "audio"):
        t = time.time()
        results[kind] = score(ask, kind, committed(a.model, kind) if a.committed else draw(kind, a.per_digit, a.seed))
        results[kind]["seconds"] = round(time.time() - t, 1)
        r = results[kind]
        print(f"{kind}: {r['correct']}/{r['n']} = {r['accuracy']:.3f} ({a.engine}, "
              f"{'committed files' if a.committed else f'seed {a.seed}'})")
        print(confusion_markdown(r["confusion"]))
    if a.committed:
        for r in results.values():
            r.pop("seconds")
    else:
        results.update(engine=a.engine, seed=a.seed, per_digit=a.per_digit)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
