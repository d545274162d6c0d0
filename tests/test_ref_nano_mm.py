"""nano-gemma3n-mm against the reference, live (transformers 5.24 ``Gemma3nForConditionalGeneration`` and
``AutoProcessor`` with the PIL image backend, on weights/nano-gemma3n-mm and its committed held-out files).

* the processors agree: ids, pixel values and audio features identical;
* logits of an image question and of an audio question: float32 within 1e-4 of the output scale, float64
  within 1e-10 of the lifted float64 reference (``lift_text`` + ``lift_audio``), same argmax everywhere;
* greedy answers identical on 10 held-out images and 10 held-out clips;
* the training loop is deterministic (two short runs from one seed give identical losses).
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from tests.adapters import multimodal as A
from tests.golden_io import rel_err
from tests.test_nano_mm import MM, QUESTIONS, files

pytestmark = [pytest.mark.reference, pytest.mark.nano]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)


def read_wav(path) -> np.ndarray:
    from tests.reference.nano_mm.evaluate import _read_wav
    return _read_wav(path)


def messages(kind: str, path: str) -> list[dict]:
    media = path if kind == "image" else read_wav(path)
    part = {"type": kind, kind: media}
    if kind == "audio":
        part["sampling_rate"] = 16000
    return [{"role": "user", "content": [part, {"type": "text", "text": QUESTIONS[kind]}]}]


def ref_messages(kind: str, path: str) -> list[dict]:
    from PIL import Image
    media = Image.open(path) if kind == "image" else read_wav(path)
    return [{"role": "user", "content": [{"type": kind, kind: media}, {"type": "text", "text": QUESTIONS[kind]}]}]


@pytest.fixture(scope="module")
def proc():
    from transformers import AutoProcessor
    return AutoProcessor.from_pretrained(MM, backend="pil")


@pytest.fixture(scope="module")
def ref():
    from tests.reference.timm_custom import register
    register()                                 # the custom MobileNetV5
    from transformers import Gemma3nForConditionalGeneration
    return Gemma3nForConditionalGeneration.from_pretrained(MM, dtype=torch.float32).eval()


def ref_inputs(proc, kind, path) -> dict:
    out = proc.apply_chat_template(ref_messages(kind, path), add_generation_prompt=True, tokenize=True,
                                   return_dict=True)
    return {k: np.asarray(v) for k, v in out.items()}


def torch_inputs(ins: dict, dtype=torch.float32) -> dict:
    kw = {"input_ids": torch.tensor(ins["input_ids"]), "attention_mask": torch.tensor(ins["attention_mask"])}
    if "pixel_values" in ins:
        kw["pixel_values"] = torch.tensor(ins["pixel_values"]).to(dtype)
    if "input_features" in ins:
        kw["input_features"] = torch.tensor(ins["input_features"]).to(dtype)
        kw["input_features_mask"] = torch.tensor(ins["input_features_mask"]).bool()
    return kw


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_processor_matches_reference(proc, kind):
    for path, _ in files(kind)[:3]:
        want = ref_inputs(proc, kind, path)
        got = A.run_process_messages(MM, messages(kind, path))
        np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
        key = "pixel_values" if kind == "image" else "input_features"
        np.testing.assert_array_equal(got[key], want[key])
        if kind == "audio":
            np.testing.assert_array_equal(got["input_features_mask"], want["input_features_mask"])


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_logits_float32_and_float64(proc, ref, kind):
    from tests.reference.lift_audio import lift_audio
    from tests.reference.lift_text import lifted_text
    path, _ = files(kind)[1]
    ins = ref_inputs(proc, kind, path)
    with torch.no_grad():
        want32 = ref(**torch_inputs(ins)).logits[0].numpy()
        ref64 = ref.double()
        try:
            with lifted_text(), lift_audio():
                want64 = ref64(**torch_inputs(ins, torch.float64)).logits[0].numpy()
        finally:
            ref.float()
    inputs = {k: ins.get(k) for k in ("input_ids", "pixel_values", "input_features", "input_features_mask")}
    got32 = A.run_forward(A.load_model(MM, np.float32), inputs)[0]
    as64 = {k: (v.astype(np.float64) if k in ("pixel_values", "input_features") and v is not None else v)
            for k, v in inputs.items()}
    got64 = A.run_forward(A.load_model(MM, np.float64), as64)[0]
    e32, e64 = rel_err(got32, want32), rel_err(got64, want64)
    print(f"{kind}: float32 rel err {e32:.2e}, float64 vs lifted reference {e64:.2e}")
    assert e32 <= 1e-4
    assert e64 <= 1e-10
    np.testing.assert_array_equal(got32.argmax(-1), want32.argmax(-1))


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_greedy_answers_equal_reference(proc, ref, kind):
    for path, digit in files(kind)[:10]:
        kw = torch_inputs(ref_inputs(proc, kind, path))
        with torch.no_grad():
            out = ref.generate(**kw, max_new_tokens=4, do_sample=False)
        want = [int(t) for t in out[0, kw["input_ids"].shape[1]:]]
        got = A.run_generate(MM, messages(kind, path), max_new_tokens=4)
        assert got == want, (path, digit, got, want)


def test_training_is_deterministic():
    """Two vision pre-training steps and two steps of the chat training loop (image, audio and text batches of
    2), with the published third stage's settings (auxiliary segmentation heads, ``--vision-lr``), twice from
    one seed: identical losses."""
    from tests.reference.nano_mm import data, train
    from tests.reference.nano_mm import model as M

    tok, sp = train.build_tokenizer()
    processor = train.build_processor(tok)
    pool = data.clean_pool(4, 11)
    text = np.random.default_rng(0).integers(12, 4096, 3000).astype(np.int64)
    a = argparse.Namespace(**{**train.DEFAULTS, "steps": 2, "batch": 2, "text_batch": 1, "eval_every": 10 ** 9,
                              "save_every": 0, "vision_steps": 2, "vision_batch": 2,
                              "seg_weight": 1.0, "vision_lr": 1e-3})
    runs = [train.train(M.build(a.seed), train.Batcher(processor, sp, pool, text, 5), a, progress=False)
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 2
