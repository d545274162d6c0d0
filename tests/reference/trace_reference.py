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
        import tests.reference.timm_custom  # noqa: F401  (registers small MobileNetV5 specs)
        from transformers import Gemma3nForConditionalGeneration as cls
    model = cls.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model.double() if dtype == "float64" else model


def trace_reference(model_dir, ids, dtype: str = "float32") -> dict:
    from tests.reference.lift_text import lifted_text
    model = load_reference(model_dir, dtype)
    x = torch.tensor([list(ids)], dtype=torch.long)
    with torch.no_grad(), lifted_text():
        return hooked_trace(model, lambda: model(input_ids=x))


def main(argv=None) -> int:
    from minig3n.checkpoint import save_safetensors
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    ids = [int(t) for t in a.ids.split(",") if t.strip()]
    tr = trace_reference(a.model, ids, a.dtype)
    save_safetensors(a.out, tr, {"order": json.dumps(list(tr)), "source": "reference transformers",
                                 "ids": json.dumps(ids), "dtype": a.dtype})
    print(f"wrote {len(tr)} tensors to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
