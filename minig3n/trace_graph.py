"""Which traced tensors a module reads: the data-flow graph between Gemma 3n's trace names, for ``compare``'s
error attribution (a module's own error is judged against its inputs' error).

The idea: every name ``decoder.py`` traces is the output of one module of the reference; the module's inputs are
other traced names (``X.layers.3.mlp`` reads ``X.layers.3.pre_feedforward_layernorm``), so the error a module
*adds* is its error minus the largest error among its inputs. Names this graph does not know (a tower's blocks,
your own extra names) read the name before them in forward order.

Source: transformers 5.24 ``Gemma3nTextDecoderLayer.forward`` / ``Gemma3nTextModel.forward`` (the data flow);
the names are ``decoder.py``'s.
Left out: the producer layer a KV-shared layer reads its keys and values from (it needs the config).
"""
from __future__ import annotations

import re

_LAYER = re.compile(r"^(?P<step>step\d+\.)?(?P<X>.*?)layers\.(?P<l>\d+)(?:\.(?P<sub>[\w.]+))?$")
_TOPLEVEL = re.compile(r"^(?P<step>step\d+\.)?(?P<X>.*?)(?P<sub>embed_tokens|embed_tokens_per_layer|inputs_embeds|"
                       r"per_layer_model_projection|per_layer_projection_norm|altup_projections\.\d+|altup_streams|"
                       r"altup_unembed_projections\.\d+|norm|lm_head|logits)$")
_IN_LAYER = {   # sub-module -> the sub-modules of the same layer it reads ("<streams>" = the layer's input)
    "input_layernorm": ["<streams>"],
    "laurel": ["input_layernorm"],
    "self_attn": ["input_layernorm", "self_attn.q", "self_attn.k", "self_attn.v"],
    "self_attn.q": ["input_layernorm"], "self_attn.k": ["input_layernorm"], "self_attn.v": ["input_layernorm"],
    "post_attention_layernorm": ["self_attn"],
    "pre_feedforward_layernorm": ["post_attention_layernorm", "laurel", "<streams>"],
    "mlp.gate_proj": ["pre_feedforward_layernorm"], "mlp": ["pre_feedforward_layernorm", "mlp.gate_proj"],
    "post_feedforward_layernorm": ["mlp"],
    "altup": ["post_feedforward_layernorm", "pre_feedforward_layernorm", "<streams>"],
    "per_layer_input_gate": ["altup"],
    "per_layer_projection": ["per_layer_input_gate", "<ple>"],
    "post_per_layer_input_norm": ["per_layer_projection"],
    "": ["altup", "post_per_layer_input_norm", "post_feedforward_layernorm", "<streams>"],
}


def inputs_of(name: str, names) -> list[str]:
    """The traced tensors (among ``names``, a collection) the module ``name`` reads, by the Gemma 3n trace names
    (``decoder.py``): e.g. ``X.layers.3.mlp`` reads ``X.layers.3.pre_feedforward_layernorm``; a layer's input
    streams are ``X.layers.{l-1}`` (layer 0: the embeddings and ``X.altup_projections.*``). A cached decode step
    (``step{n}.``) also reads the previous step's attention input of the same layer (the KV cache). Names it does
    not know read the tensor before them in ``names`` (when ``names`` is ordered)."""
    names = list(names)
    present = set(names)

    def first_present(cands):
        return [c for c in cands if c in present]

    m = _LAYER.match(name)
    if m and (m["sub"] is None or m["sub"] in _IN_LAYER):
        step, X, li, sub = m["step"] or "", m["X"], int(m["l"]), m["sub"] or ""
        here = f"{step}{X}layers.{li}"
        if li > 0:
            streams = [f"{step}{X}layers.{li - 1}"]
        else:
            streams = [f"{step}{X}{s}" for s in ("altup_streams", "inputs_embeds", "embed_tokens")] + \
                      [n for n in names if n.startswith(f"{step}{X}altup_projections.")]
        out = []
        for src in _IN_LAYER[sub]:
            if src == "<streams>":
                out += streams
            elif src == "<ple>":
                out += [f"{step}{X}per_layer_projection_norm", f"{step}{X}embed_tokens_per_layer"]
            else:
                out.append(f"{here}.{src}")
        sm = re.match(r"step(\d+)\.", step)
        if sub.startswith("self_attn") and sm and int(sm[1]) > 0:   # keys/values of the earlier steps
            prev = f"step{int(sm[1]) - 1}.{X}layers.{li}"
            out += [f"{prev}.self_attn.k", f"{prev}.self_attn.v", f"{prev}.input_layernorm"]
        return first_present(dict.fromkeys(out))
    m = _TOPLEVEL.match(name)
    if m:
        step, X, sub = m["step"] or "", m["X"], m["sub"]
        last = sorted({int(k["l"]) for k in map(_LAYER.match, names) if k and (k["step"] or "") == step
                       and k["X"] == X and k["sub"] is None}, reverse=True)
        top = {"embed_tokens": [], "embed_tokens_per_layer": [], "inputs_embeds": ["embed_tokens"],
               "per_layer_model_projection": ["inputs_embeds", "embed_tokens"],
               "per_layer_projection_norm": ["per_layer_model_projection"],
               "norm": [n[len(step + X):] for n in names if n.startswith(f"{step}{X}altup_unembed_projections.")]
               + ([f"layers.{last[0]}"] if last else []),
               "lm_head": ["norm"], "logits": ["lm_head"]}
        if sub == "altup_streams":
            srcs = ["inputs_embeds", "embed_tokens"] + [n[len(step + X):] for n in names
                                                        if n.startswith(f"{step}{X}altup_projections.")]
        elif sub.startswith("altup_projections."):
            srcs = ["inputs_embeds", "embed_tokens"]
        elif sub.startswith("altup_unembed_projections."):
            srcs = [f"layers.{last[0]}"] if last else []
        else:
            srcs = top[sub]
        if sub == "lm_head":      # lm_head / logits carry no model prefix: the text model's norm
            return first_present([f"{step}model.norm", f"{step}model.language_model.norm"])
        if sub == "logits":
            return first_present([f"{step}lm_head"])
        return first_present(dict.fromkeys(f"{step}{X}{s}" for s in srcs))
    i = names.index(name) if name in present else -1
    return [names[i - 1]] if i > 0 else []
