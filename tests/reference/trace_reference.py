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
processor (``--image-backend``, default torchvision as the reference and minig3n; WAVs must be float32 at
16 kHz) and the towers are traced too
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
FINE_PER_LAYER = (r"mlp\.gate_proj", r"self_attn\.v_norm")     # with --fine (minig3n's FineTrace)
_FINE = re.compile(r"^(model\.|model\.language_model\.)layers\.\d+\.(" + "|".join(FINE_PER_LAYER) + ")$")
_PATTERN = re.compile(r"^(model\.|model\.language_model\.)(" + "|".join(TOP) + r"|layers\.\d+(\.(" +
                      "|".join(PER_LAYER) + r"))?)$|^lm_head$")


def hooked_trace(model: torch.nn.Module, run, fine: bool = False) -> dict:
    """Call ``run()`` with hooks on every traced module of ``model``; return {name: row-0 output} in call order,
    plus ``logits`` (the softcapped output of ``run()``). ``fine``: the finer names too (``_inner_values``)."""
    out: dict = {}

    def hook(name, is_layer):
        name = name[:-len("v_norm")] + "v" if name.endswith("self_attn.v_norm") else name   # v after v_norm
        def fn(mod, args, result):
            if name in out:
                return
            r = result[0] if isinstance(result, tuple) else result
            r = r[:, 0] if is_layer else r[0]
            out[name] = r.detach().numpy().copy()
        return fn

    handles, patched = [], []
    for n, m in model.named_modules():
        if not (_PATTERN.match(n) or fine and _FINE.match(n)):
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
    handles += _inner_values(model, out) if fine else []
    lm = dict(model.named_modules()).get("model.language_model")
    if lm is not None:      # Gemma3nForConditionalGeneration: the merged embeddings the language model receives
        def pre(mod, args, kwargs):
            e = kwargs.get("inputs_embeds")
            if e is not None and INPUTS_EMBEDS not in out:
                out[INPUTS_EMBEDS] = e[0].detach().numpy().copy()
        handles.append(lm.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
        for m in patched:
            del m.scale_corrected_output
    out["logits"] = result.logits[0].detach().numpy().copy()
    if INPUTS_EMBEDS in out:   # Gemma3nModel looks up the PLE rows before it calls the language model; minig3n
        names = [n for n in out if n != INPUTS_EMBEDS]     # records the merged embeddings first (forward order)
        at = names.index("model.language_model.embed_tokens_per_layer")
        out = {n: out[n] for n in [*names[:at], INPUTS_EMBEDS, *names[at:]]}
    return out


INPUTS_EMBEDS = "model.language_model.inputs_embeds"


def _inner_values(model, out) -> list:
    """Hooks for the traced values no module outputs: ``self_attn.q`` / ``self_attn.k`` (the results of
    ``apply_rotary_pos_emb`` inside each attention: the query's call first, then the key's on non-shared layers)
    and ``X.altup_streams`` (layer 0's input streams). Returns removable handles."""
    from transformers.models.gemma3n import modeling_gemma3n as mg
    handles, current = [], []
    orig = mg.apply_rotary_pos_emb

    def rope(x, cos, sin, *a, **kw):
        y = orig(x, cos, sin, *a, **kw)
        if current:
            name, count = current[-1]
            sub = "q" if count == 0 else "k"
            current[-1] = (name, count + 1)
            out.setdefault(f"{name}.{sub}", y[0].detach().numpy().copy())   # [T, heads, E]
        return y

    class Restore:
        def remove(self):
            mg.apply_rotary_pos_emb = orig
    mg.apply_rotary_pos_emb = rope
    handles.append(Restore())
    for n, m in model.named_modules():
        if re.match(r"^(model\.|model\.language_model\.)layers\.\d+\.self_attn$", n):
            handles.append(m.register_forward_pre_hook(lambda mod, args, n=n: current.append((n, 0))))
            handles.append(m.register_forward_hook(lambda mod, args, res: current.pop() and None))  # keep res
        if re.match(r"^(model\.|model\.language_model\.)layers\.0$", n):
            name = n[:-len("layers.0")] + "altup_streams"

            def pre(mod, args, kwargs, name=name):
                x = args[0] if args else kwargs["hidden_states"]
                out.setdefault(name, x[:, 0].detach().numpy().copy())       # [K, T, D]
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
    return handles


def traced_decode(model, tracer, first: dict, steps: int, fine: bool = False) -> tuple[dict, list]:
    """``tracer(model, run)`` on the prefill ``model(**first)``, then ``steps`` greedy steps with the reference's
    own KV cache (``cache=``, formerly ``past_key_values``), each traced by ``hooked_trace`` under ``step{n}.`` +
    the same names, as
    ``minig3n trace --decode-steps``. -> (trace, the ids fed to the steps)."""
    held = {}

    def call(**kw):
        held["r"] = model(**kw, use_cache=True)
        return held["r"]

    trace = tracer(model, lambda: call(**first), fine)
    fed = []
    for n in range(1, steps + 1):
        token = int(held["r"].logits[0, -1].argmax())
        fed.append(token)
        cache = held["r"].past_key_values
        step = hooked_trace(model, lambda: call(input_ids=torch.tensor([[token]]), cache=cache), fine)
        trace.update({f"step{n}.{k}": v for k, v in step.items()})
    return trace, fed


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


def trace_reference(model_dir, ids, dtype: str = "float32", decode_steps: int = 0, fine: bool = False):
    """The reference's trace of ``ids``; with ``decode_steps``, (trace, fed ids) of ``traced_decode``."""
    from tests.reference.lift_text import lifted_text
    model = load_reference(model_dir, dtype)
    x = torch.tensor([list(ids)], dtype=torch.long)
    with torch.no_grad(), lifted_text():
        if decode_steps:
            return traced_decode(model, hooked_trace, {"input_ids": x}, decode_steps, fine)
        return hooked_trace(model, lambda: model(input_ids=x), fine)


# Multimodal: the towers and the embedders' soft paths (added for issue 7) ----------------------------------------
_TOWER_PATTERN = re.compile(r"^model\.vision_tower\.timm_model\.(conv_stem|blocks\.\d+\.\d+|msfa)$|"
                            r"^model\.audio_tower(\.subsample_conv_projection(\.conv_[01])?|\.conformer\.\d+)?$")
_EMBEDDERS = ("model.embed_vision", "model.embed_audio")


def hooked_multimodal_trace(model: torch.nn.Module, run, fine: bool = False) -> dict:
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
        text = hooked_trace(model, run, fine)
    finally:
        for h in handles:
            h.remove()
    first = [n for n in text if n.endswith("language_model.embed_tokens")]
    return {**{n: text[n] for n in first}, **towers, **{n: v for n, v in text.items() if n not in first}}


def trace_reference_multimodal(model_dir, inputs: dict, dtype: str = "float32", decode_steps: int = 0,
                               fine: bool = False):
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
    front = {"input_ids": np.asarray(inputs["input_ids"])[0].astype(np.float64)}   # the processor's outputs
    for k in ("pixel_values", "input_features", "input_features_mask"):
        if inputs.get(k) is not None:
            v = np.asarray(inputs[k])
            front[k] = v.astype(np.float64) if v.dtype.kind in "iub" else v
    with torch.no_grad(), lifted_text(), lift_audio():
        if decode_steps:
            tr, fed = traced_decode(model, hooked_multimodal_trace, kw, decode_steps, fine)
            return {**front, **tr}, fed
        return {**front, **hooked_multimodal_trace(model, lambda: model(**kw), fine)}


def reference_inputs(model_dir, chat: str, images=(), audio=(), system=None, image_backend="torchvision") -> dict:
    """The reference processor's inputs for ``minig3n trace --chat TEXT --image ... --audio ...`` (media attached
    to the user turn: images, then audio, then the text). Image backend ``image_backend`` (the reference's default,
    torchvision, like minig3n's; or "pil"), WAVs read with scipy at 16 kHz."""
    from PIL import Image
    from scipy.io import wavfile
    from transformers import AutoProcessor
    proc = AutoProcessor.from_pretrained(model_dir, backend=image_backend)
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
    ap.add_argument("--image-backend", choices=["torchvision", "pil"], default="torchvision")
    ap.add_argument("--decode-steps", type=int, default=0)
    ap.add_argument("--fine", action="store_true", help="also the finer names (q, k, v, gate_proj, altup_streams)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.chat is not None:
        inputs = reference_inputs(a.model, a.chat, a.image, a.audio, a.system, a.image_backend)
        ids = [int(t) for t in inputs["input_ids"][0]]
        tr = trace_reference_multimodal(a.model, inputs, a.dtype, a.decode_steps, a.fine)
    else:
        ids = [int(t) for t in a.ids.split(",") if t.strip()]
        tr = trace_reference(a.model, ids, a.dtype, a.decode_steps, a.fine)
    fed = []
    if a.decode_steps:
        tr, fed = tr
    save_safetensors(a.out, tr, {"order": json.dumps(list(tr)), "source": "reference transformers",
                                 "ids": json.dumps(ids), "dtype": a.dtype, "decoded_ids": json.dumps(fed)})
    print(f"wrote {len(tr)} tensors to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
