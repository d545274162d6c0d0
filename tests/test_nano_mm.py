"""nano-gemma3n-mm (weights/nano-gemma3n-mm): the small multimodal Gemma 3n trained here to read digit images and
hear spoken digits, run by minig3n (NumPy tier, no torch).

What is checked: the checkpoint is a full ``gemma3n`` one (custom MobileNetV5 with MSFA, USM conformer, the
nano decoder) in the layout and size the model card states; minig3n's greedy answers on the committed held-out
files (``heldout/``: 3 images and 3 clips of every digit, drawn from seeds the training never used) are the
digit followed by ``<end_of_turn>``; both modalities meet the issue's target (>= 90 % of the committed images and
of the committed clips), with the answers the model card records (``heldout_committed_eval.json``);
``minig3n generate --chat ... --image/--audio`` answers from the command line; and the decoder still models
Shakespeare (perplexity on nano-gemma3n's held-out slice far below the unigram baseline).
Training: ``tests/reference/nano_mm/``; model card: ``weights/nano-gemma3n-mm/README.md``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.adapters import multimodal as A
from tests.adapters import nano as text_adapter

pytestmark = pytest.mark.nano

MM = Path(__file__).resolve().parent.parent / "weights" / "nano-gemma3n-mm"
NANO = MM.parent / "nano-gemma3n"
HELDOUT = MM / "heldout"
QUESTIONS = {"image": "What digit is this?", "audio": "Which digit was spoken?"}


def labels() -> dict:
    return json.loads((HELDOUT / "labels.json").read_text())["files"]


def files(kind: str) -> list[tuple[str, int]]:
    return [(str(HELDOUT / name), v["digit"]) for name, v in sorted(labels().items()) if name.startswith(kind)]


@pytest.fixture(scope="module")
def ask():
    """Greedy answer text of minig3n's generator (loaded once) for one held-out file."""
    from minig3n.generate import Generator, Prompt
    from minig3n.multimodal import embed_inputs, load_multimodal_model
    from minig3n.processor import Processor, chat_with_media

    gen = Generator.load(MM)
    mm = load_multimodal_model(gen.model.ckpt)
    proc = Processor.from_dir(MM)

    def answer(kind: str, path: str) -> tuple[str, list[int]]:
        msgs = chat_with_media(QUESTIONS[kind], images=[path] if kind == "image" else (),
                               audio=[path] if kind == "audio" else ())
        x = proc.apply_chat_template(msgs)
        embeds = embed_inputs(mm, x.input_ids, x.pixel_values, x.input_features, x.input_features_mask)
        out = list(gen.generate(Prompt([int(i) for i in x.input_ids[0]], embeds[0]), max_new_tokens=4))
        return "".join(p for _, p in out), [t for t, _ in out]

    return answer


def test_checkpoint_layout_and_size():
    cfg = json.loads((MM / "config.json").read_text())
    assert cfg["model_type"] == "gemma3n" and cfg["architectures"] == ["Gemma3nForConditionalGeneration"]
    v, a, t = cfg["vision_config"], cfg["audio_config"], cfg["text_config"]
    assert v["architecture"] == "mobilenetv5_custom_enc" and v["model_args"]["msfa_output_resolution"] == 2
    kinds = {b.split("_")[0] for stage in v["model_args"]["arch_def"] for b in stage}
    assert kinds == {"er", "uir", "mqa"}                                       # every MobileNetV5 block type
    assert a["conf_num_hidden_layers"] >= 2 and a["hidden_size"] == 96
    assert cfg["vision_soft_tokens_per_image"] == 4 and cfg["audio_soft_tokens_per_image"] == 16
    pre = json.loads((MM / "preprocessor_config.json").read_text())
    proc = json.loads((MM / "processor_config.json").read_text())
    assert pre["size"] == {"height": 64, "width": 64}
    assert (proc["image_seq_length"], proc["audio_seq_length"]) == (4, 16)
    nano = json.loads((NANO / "config.json").read_text())
    for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "layer_types", "num_kv_shared_layers",
              "altup_num_inputs", "laurel_rank", "activation_sparsity_pattern"):
        assert t[k] == nano[k], k                                              # nano's decoder
    assert (t["vocab_size"], t["vocab_size_per_layer_input"]) == (4352, 4096)
    size = (MM / "model.safetensors").stat().st_size
    assert size < 20_000_000, f"model.safetensors is {size} bytes"
    held = sum(f.stat().st_size for f in HELDOUT.iterdir())
    assert held < 1_500_000, f"heldout/ holds {held} bytes"
    assert len(files("image")) == len(files("audio")) == 30


def heldout_answers(ask, kind: str) -> tuple[list[str], float]:
    got = [ask(kind, path) for path, _ in files(kind)]
    right = [text == str(digit) for (text, _), (_, digit) in zip(got, files(kind))]
    for (text, ids), ok in zip(got, right):
        if ok:
            assert ids[-1] == 5 and len(ids) == 2, ids                  # the digit alone, then <end_of_turn>
    return [t for t, _ in got], sum(right) / len(right)


def test_heldout_audio_accuracy_meets_target(ask):
    """Issue 17's target for speech: >= 90 % of the committed clips answered with the right digit (chance 10 %)."""
    got, acc = heldout_answers(ask, "audio")
    print(f"audio accuracy {acc:.3f}; answers {got}")
    assert all(len(t) == 1 and t.isdigit() for t in got), got
    assert acc >= 0.9


def test_heldout_image_accuracy_meets_target(ask):
    """Issue 17's target for images: >= 90 % of the 30 committed images answered with the right digit through
    minig3n (chance 10 %); every answer is a single digit, and the answers are the ones the model card's figures
    come from (``heldout_committed_eval.json``, written by ``tests/reference/nano_mm/evaluate.py --committed``)."""
    got, acc = heldout_answers(ask, "image")
    print(f"image accuracy {acc:.3f}; answers {got}")
    assert all(len(t) == 1 and t.isdigit() for t in got), got
    assert acc >= 0.9
    recorded = json.loads((MM / "heldout_committed_eval.json").read_text())["image"]
    assert got == recorded["answers"]                    # the card's figures are these answers


def test_cli_answers_image_and_audio(capsys, ask):
    """``minig3n generate --model weights/nano-gemma3n-mm --chat "Which digit was spoken?" --audio X`` (and
    ``--chat "What digit is this?" --image X``) prints the right digit for committed files of five different
    digits per modality (the first file of each digit that the generator answers right)."""
    for kind in ("audio", "image"):
        picked, seen = [], set()
        for path, digit in files(kind):
            if digit not in seen and len(picked) < 5 and ask(kind, path)[0] == str(digit):
                picked.append((path, digit))
                seen.add(digit)
        assert len(picked) == 5, (kind, picked)
        for path, digit in picked:
            code = A.run_cli(["generate", "--model", str(MM), "--chat", QUESTIONS[kind], f"--{kind}", path])
            out, err = capsys.readouterr()
            assert code == 0, err
            assert out.strip() == str(digit), (path, digit, out, err)


def test_keeps_text_ability():
    """Text-only: the multimodal decoder still predicts Shakespeare (nano-gemma3n's held-out slice, 4 windows)
    far better than the unigram baseline."""
    from tests.test_nano import unigram_token_losses
    windows = np.load(NANO / "eval_slice.npy").astype(np.int64)[:4]
    model = text_adapter.run_load(MM, np.float32)
    loss = float(text_adapter.run_token_losses(model, windows).mean())
    uni = float(unigram_token_losses(np.load(NANO / "unigram_counts.npy"), windows).mean())
    print(f"text perplexity {math.exp(loss):.1f}, unigram {math.exp(uni):.1f}")
    assert math.exp(loss) < math.exp(uni) / 4
