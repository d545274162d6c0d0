"""Trace the reference: every named sub-module output of a Gemma 3n text decoder, as ``minig3n trace`` does.

    python -m tests.reference.trace_reference --model DIR --ids 2,17,5 --out ref.safetensors --dtype float64
    minig3n trace --model DIR --ids 2,17,5 --out ours.safetensors --dtype float64
    minig3n compare ref.safetensors ours.safetensors --rtol 1e-10

Forward hooks on the modules named in ``TRACE_SUFFIXES`` (the names ``minig3n/decoder.py`` documents) store
each one's output for batch row 0, in call order (a module called twice keeps its first output; the
AltUp module's output is caught by wrapping ``scale_corrected_output``, which calls ``forward`` directly). With
``--dtype float64`` the model is ``.double()``-ed and run under ``lift_text.lifted_text()`` (float32 activation
casts lifted), so the comparison with minig3n's float64 mode is exact to ~1e-14.
Works for ``Gemma3nForCausalLM`` (``gemma3n_text``) and ``Gemma3nForConditionalGeneration`` (``gemma3n``)
checkpoint directories.
With ``--chat TEXT --image PATH ... --audio PATH`` (multimodal checkpoints) the inputs come from the reference
processor (PIL image backend, as minig3n; WAVs must be float32 at 16 kHz) and the towers are traced too
(``hooked_multimodal_trace``: module outputs with their batch axis, the embedders' soft-path outputs); float64
then runs under both ``lift_text`` and ``lift_audio``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np
import torch

TOP = ("embed_tokens", "embed_tokens_per_layer", "per_layer_model_projection", "per_layer_projection_norm",
       "norm", r"altup_projections\.\d+", r"altup_unembed_projections\.\d+")
PER_LAYER = ("input_layernorm", "laurel", "self_attn", "post_attention_layernorm", "pre_feedforward_layernorm",
             "mlp", "post_feedforward_layernorm", "altup", "per_layer_input_gate", "per_layer_projection",
             "post_per_layer_input_norm")
_PATTERN = re.compile(r"^(model\.|model\.language_model\.)(" + "|".join(TOP) + r"|layers\.\d+(\.(" +
                      "|".join(PER_LAYER) + r"))?)$|^lm_head$")


def hooked_trace(model: torch.nn.Module, run) -> dict:
    """Call ``run()`` with hooks on every traced module of ``model``; return {name: row-0 output} in call order,
    plus ``logits`` (the softcapped output of ``run()``)."""
    out: dict = {}

    def hook(name, is_layer):
        def fn(mod, args, result):
            if name in out:
                return
            r = result[0] if isinstance(result, tuple) else result
            r = r[:, 0] if is_layer else r[0]
            out[name] = r.detach().numpy().copy()
        return fn

    handles, patched = [], []
    for n, m in model.named_modules():
        if not _PATTERN.match(n):
            continue
        handles.append(m.register_forward_hook(hook(n, re.search(r"layers\.\d+$", n) is not None)))
        if n.endswith(".altup"):
            # Gemma3nTextAltUp.scale_corrected_output calls self.forward() directly, which skips hooks: wrap it
            def wrapped(x, m=m, record=hook(n, False)):
                y = type(m).forward(m, x)
                record(m, (x,), y)
                return y
            m.scale_corrected_output = wrapped
            patched.append(m)
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
        for m in patched:
            del m.scale_corrected_output
    out["logits"] = result.logits[0].detach().numpy().copy()
    return out


def load_reference(model_dir, dtype: str = "float32"):
    """The reference model of a checkpoint directory, float32 or float64 (call it under ``lifted_text``)."""
    from pathlib import Path
    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
    if model_type == "gemma3n_text":
        from transformers import Gemma3nForCausalLM as cls
    else:
        from tests.reference.timm_custom import register
        register()  # registers small MobileNetV5 specs
        from transformers import Gemma3nForConditionalGeneration as cls
    model = cls.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model.double() if dtype == "float64" else model


def trace_reference(model_dir, ids, dtype: str = "float32") -> dict:
    from tests.reference.lift_text import lifted_text
    model = load_reference(model_dir, dtype)
    x = torch.tensor([list(ids)], dtype=torch.long)
    with torch.no_grad(), lifted_text():
        return hooked_trace(model, lambda: model(input_ids=x))


# Multimodal: the towers and the embedders' soft paths (added for issue 7) ----------------------------------------
_TOWER_PATTERN = re.compile(r"^model\.vision_tower\.timm_model\.(conv_stem|blocks\.\d+\.\d+|msfa)$|"
                            r"^model\.audio_tower(\.subsample_conv_projection(\.conv_[01])?|\.conformer\.\d+)?$")
_EMBEDDERS = ("model.embed_vision", "model.embed_audio")


def hooked_multimodal_trace(model: torch.nn.Module, run) -> dict:
    """``hooked_trace`` plus the towers (every module in ``_TOWER_PATTERN``, batch axis kept: all images / clips)
    and the soft-path outputs of ``model.embed_vision`` / ``model.embed_audio`` (their calls with
    ``inputs_embeds``; the hard-path calls on ids are not recorded). Order: the text embedding of the ids, the
    towers and embedders in call order, then the language model's names (the reference's own call order)."""
    towers: dict = {}

    def hook(name):
        def fn(mod, args, kwargs, result):
            if name in towers:
                return
            if name in _EMBEDDERS and kwargs.get("inputs_embeds") is None:
                return
            r = result.last_hidden_state if hasattr(result, "last_hidden_state") else result
            r = r[0] if isinstance(r, tuple) else r
            towers[name] = r.detach().numpy().copy()
        return fn

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in model.named_modules()
               if _TOWER_PATTERN.match(n) or n in _EMBEDDERS]
    try:
        text = hooked_trace(model, run)
    finally:
        for h in handles:
            h.remove()
    first = [n for n in text if n.endswith("language_model.embed_tokens")]
    return {**{n: text[n] for n in first}, **towers, **{n: v for n, v in text.items() if n not in first}}


def trace_reference_multimodal(model_dir, inputs: dict, dtype: str = "float32") -> dict:
    """Trace ``Gemma3nForConditionalGeneration`` on processed inputs (numpy arrays: input_ids [1, T],
    pixel_values, input_features, input_features_mask); float64 runs under both lifts (text and audio)."""
    from tests.reference.lift_audio import lift_audio
    from tests.reference.lift_text import lifted_text
    model = load_reference(model_dir, dtype)
    work = torch.float64 if dtype == "float64" else torch.float32
    kw = {"input_ids": torch.tensor(np.asarray(inputs["input_ids"]), dtype=torch.long)}
    for k in ("pixel_values", "input_features"):
        if inputs.get(k) is not None:
            kw[k] = torch.tensor(np.asarray(inputs[k])).to(work)
    if inputs.get("input_features_mask") is not None:
        kw["input_features_mask"] = torch.tensor(np.asarray(inputs["input_features_mask"]).astype(bool))
    with torch.no_grad(), lifted_text(), lift_audio():
        return hooked_multimodal_trace(model, lambda: model(**kw))


def reference_inputs(model_dir, chat: str, images=(), audio=(), system=None) -> dict:
    """The reference processor's inputs for ``minig3n trace --chat TEXT --image ... --audio ...`` (media attached
    to the user turn: images, then audio, then the text). PIL image backend, WAVs read with scipy at 16 kHz."""
    from PIL import Image
    from scipy.io import wavfile
    from transformers import AutoProcessor
    proc = AutoProcessor.from_pretrained(model_dir, backend="pil")
    parts = [{"type": "image", "image": Image.open(p).convert("RGB")} for p in images]
    for p in audio:
        rate, data = wavfile.read(p)
        if rate != 16000 or data.dtype != np.float32:
            raise SystemExit(f"{p}: the reference tracer reads float32 16 kHz WAVs only")
        parts.append({"type": "audio", "audio": data})
    parts.append({"type": "text", "text": chat})
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user",
                                                                                       "content": parts}]
    out = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
    return {k: np.asarray(v) for k, v in out.items()}


def main(argv=None) -> int:
    from minig3n.checkpoint import save_safetensors
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ids", help="comma-separated token ids")
    src.add_argument("--chat", help="a user message (with --image / --audio attached), via the reference processor")
    ap.add_argument("--system")
    ap.add_argument("--image", action="append", default=[])
    ap.add_argument("--audio", action="append", default=[])
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.chat is not None:
        inputs = reference_inputs(a.model, a.chat, a.image, a.audio, a.system)
        ids = [int(t) for t in inputs["input_ids"][0]]
        tr = trace_reference_multimodal(a.model, inputs, a.dtype)
    else:
        ids = [int(t) for t in a.ids.split(",") if t.strip()]
        tr = trace_reference(a.model, ids, a.dtype)
    save_safetensors(a.out, tr, {"order": json.dumps(list(tr)), "source": "reference transformers",
                                 "ids": json.dumps(ids), "dtype": a.dtype})
    print(f"wrote {len(tr)} tensors to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
