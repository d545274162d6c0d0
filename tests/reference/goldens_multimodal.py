"""Golden fixtures for the multimodal chapter (issue 7), from the reference on weights/tiny-random-gemma3n.

    python -m tests.make_goldens multimodal

Writes ``multimodal_conversation``: the conversation of ``tests.multimodal_cases.conversation`` (system prompt,
two PIL-drawn images, one 0.8 s chirp) through the reference processor (``AutoProcessor`` with the PIL image
backend, the one minig3n follows) and ``Gemma3nForConditionalGeneration``:

* ``in.input_ids`` [1, T], ``in.token_type_ids``, ``in.pixel_values`` [2, 3, 128, 128],
  ``in.input_features`` [1, F, 128], ``in.input_features_mask`` [1, F];
* ``in.positions``: the positions whose logits are stored (every 8th, plus the last 8), to keep the file small;
* ``out32.logits`` / ``out64.logits`` [len(positions), V]: float32 reference / lifted float64 reference
  (``lift_text`` + ``lift_audio``); ``out32.argmax`` [T]: the float32 argmax at every position;
* ``out32.greedy_tokens``: the reference's ``generate(do_sample=False, max_new_tokens=32)`` new tokens (float32).
The weights are the committed tiny checkpoint's (not copied into the fixture).
"""
from __future__ import annotations

import numpy as np

from tests.golden_io import save_golden
from tests.multimodal_cases import conversation, make_audio, make_images
from tests.reference.make_tiny_checkpoint import OUT as TINY
from tests.reference.versions import stamp

MAX_NEW = 32


def reference_inputs(messages, backend="pil") -> dict:
    from transformers import AutoProcessor
    proc = AutoProcessor.from_pretrained(TINY, backend=backend)
    out = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return {k: np.asarray(v) for k, v in out.items()}


def reference_model(dtype="float32"):
    import torch

    from tests.reference.timm_custom import register
    register()
    from transformers import Gemma3nForConditionalGeneration
    m = Gemma3nForConditionalGeneration.from_pretrained(TINY, dtype=torch.float32).eval()
    return m.double() if dtype == "float64" else m


def torch_inputs(inputs: dict, dtype="float32") -> dict:
    import torch
    work = torch.float64 if dtype == "float64" else torch.float32
    kw = {k: torch.tensor(inputs[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    kw["pixel_values"] = torch.tensor(inputs["pixel_values"]).to(work)
    kw["input_features"] = torch.tensor(inputs["input_features"]).to(work)
    kw["input_features_mask"] = torch.tensor(inputs["input_features_mask"]).bool()
    return kw


def reference_logits(inputs: dict, dtype="float32") -> np.ndarray:
    import torch

    from tests.reference.lift_audio import lift_audio
    from tests.reference.lift_text import lifted_text
    m = reference_model(dtype)
    with torch.no_grad(), lifted_text(), lift_audio():
        return m(**torch_inputs(inputs, dtype)).logits[0].numpy()


def reference_greedy(inputs: dict, max_new: int = MAX_NEW) -> list[int]:
    import torch
    m = reference_model("float32")
    kw = torch_inputs(inputs)
    with torch.no_grad():
        out = m.generate(**kw, max_new_tokens=max_new, do_sample=False)
    return [int(t) for t in out[0, kw["input_ids"].shape[1]:]]


def stored_positions(T: int) -> np.ndarray:
    return np.unique(np.concatenate([np.arange(0, T, 8), np.arange(T - 8, T)]))


def make():
    import torch
    torch.set_num_threads(1)
    inputs = reference_inputs(conversation(make_images(), make_audio()))
    T = inputs["input_ids"].shape[1]
    pos = stored_positions(T)
    l32 = reference_logits(inputs, "float32")
    l64 = reference_logits(inputs, "float64")
    tokens = reference_greedy(inputs)
    ins = {k: inputs[k] for k in ("input_ids", "token_type_ids", "pixel_values", "input_features",
                                  "input_features_mask")}
    ins["positions"] = pos
    save_golden("multimodal_conversation", ins, {},
                {"logits": l32[pos], "argmax": l32.argmax(-1), "greedy_tokens": np.asarray(tokens)},
                {"logits": l64[pos]},
                {"model": "weights/tiny-random-gemma3n", "messages": "tests.multimodal_cases.conversation",
                 "max_new_tokens": MAX_NEW, "image_backend": "pil", **stamp("torch", "transformers")})
