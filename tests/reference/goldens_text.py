"""Golden fixtures of the text decoder: ``tests/goldens/text_*.safetensors``.

    python -m tests.make_goldens text

Every fixture comes from the reference (transformers 5.24) on the tiny random models of ``text_models.py``:
``out32`` from the float32 model as published, ``out64`` from ``model.double()`` with the float32 activation
casts lifted (``lift_text.lifted_text``), both on the *same* inputs (float32-representable values). Weights
are stored in float32 (the float64 model holds the same values). ``meta.config`` is the HF config dict.

Fixtures (inputs -> outputs):
* ``text_ple``: ids (some >= vocab_size_per_layer_input), inputs_embeds -> token part, per_layer_inputs.
* ``text_altup``: layer 1's AltUp: streams, activated -> router, predict, correct, scaled output.
* ``text_altup_streams``: embeddings -> the K streams; streams -> the collapsed hidden state.
* ``text_laurel``, ``text_mlp_sparse`` (layer 0, sparsity 0.95), ``text_mlp_dense`` (layer 2, I differs).
* ``text_attention_sliding`` (layer 1), ``text_attention_full`` (layer 2): 2 rows x 14 tokens (window 8),
  row 1 left-padded by 4 -> attention output.
* ``text_decoder_layer``: layer 3 (sliding, the sliding K/V producer) -> output streams.
* ``text_model_causal``: the whole Gemma3nForCausalLM, 2 x 14 tokens, left padding, ids >= 256 ->
  logits; out64 also holds every trace name (``decoder.py``) for row 0 as ``trace.<name>``.
* ``text_model_k3``: a variant with hidden size 16, 3 AltUp streams, active stream 1, no correct-scale, 2 shared layers
  (both consumers sliding), final softcap 5, dense MLPs only -> logits.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from tests.golden_io import save_golden
from tests.reference.lift_text import lifted_text
from tests.reference.text_models import S, F, tiny_causal_lm
from tests.reference.versions import stamp

SEED = 1234
B, T, PAD = 2, 14, 4


def _np(t) -> np.ndarray:
    return t.detach().numpy()


def _weights(module, dtype=np.float32) -> dict:
    return {k: v.detach().to(torch.float64).numpy().astype(dtype) for k, v in module.state_dict().items()}


def _both(model32, fn):
    """fn(model, torch_dtype) -> dict of tensors; run on the float32 model and the lifted float64 copy."""
    model64 = copy.deepcopy(model32).double()
    with torch.no_grad():
        out32 = {k: _np(v) for k, v in fn(model32, torch.float32).items()}
        with lifted_text():
            out64 = {k: _np(v) for k, v in fn(model64, torch.float64).items()}
    return out32, out64


def _meta(model, **extra) -> dict:
    cfg = model.config.to_dict()
    keep = {k: cfg[k] for k in ("vocab_size", "vocab_size_per_layer_input", "hidden_size",
                                "hidden_size_per_layer_input", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
                                "sliding_window", "layer_types", "num_kv_shared_layers", "laurel_rank",
                                "altup_num_inputs", "altup_active_idx", "altup_correct_scale",
                                "activation_sparsity_pattern", "rope_parameters", "final_logit_softcapping",
                                "rms_norm_eps", "model_type", "pad_token_id", "eos_token_id", "bos_token_id")}
    return {"config": keep, "seed": SEED, **stamp("torch", "transformers"), **extra}


def _inputs(vocab, pad=True):
    g = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    ids[:, 0] = 2
    ids[0, 3], ids[0, 7], ids[1, 9] = vocab - 1, vocab - 20, vocab - 40     # ids >= vocab_size_per_layer_input
    mask = torch.ones(B, T, dtype=torch.long)
    if pad:
        mask[1, :PAD] = 0
        ids[1, :PAD] = 0
        ids[1, PAD] = 2
    return ids, mask


def _rand(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g)).to(torch.float32)      # float32-representable


def _bool_mask(mask, window=None):
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    allowed = k <= q
    if window is not None:
        allowed = allowed & (k > q - window)
    return (allowed[None] & mask.bool()[:, None, :])[:, None]               # [B, 1, T, S]


def make_module_fixtures(model):
    cfg = model.config
    D, K = cfg.hidden_size, cfg.altup_num_inputs
    meta = _meta(model)
    ids, mask = _inputs(cfg.vocab_size)

    # PLE
    embeds = _rand((B, T, D), 11, 3.0)

    def ple(m, dt):
        tok = m.model.get_per_layer_inputs(ids)
        return {"token_inputs": tok, "per_layer_inputs": m.model.project_per_layer_inputs(embeds.to(dt), tok)}
    w = {k: v for k, v in _weights(model.model).items()
         if k.startswith(("embed_tokens_per_layer", "per_layer_model_projection", "per_layer_projection_norm"))}
    save_golden("text_ple", {"input_ids": ids.numpy(), "inputs_embeds": embeds.numpy()}, w, *_both(model, ple), meta)

    # AltUp of layer 1
    streams, activated = _rand((K, B, T, D), 12), _rand((B, T, D), 13)

    def alt(m, dt):
        a = m.model.layers[1].altup
        pred = a.predict(streams.to(dt))
        corr = a.correct(pred, activated.to(dt))
        return {"router_modalities": a.compute_router_modalities(activated.to(dt)), "predict": pred,
                "correct": corr, "scale_corrected_output": a.scale_corrected_output(corr[cfg.altup_active_idx])}
    save_golden("text_altup", {"streams": streams.numpy(), "activated": activated.numpy()},
                _weights(model.model.layers[1].altup), *_both(model, alt), meta)

    # AltUp stream creation and collapse have no module of their own in the reference (they are lines of
    # Gemma3nTextModel.forward): hooks catch layer 0's input streams and the final norm's input (the collapse),
    # on a pass fed with inputs_embeds (the same float32 values in both runs). The collapse's input (the last
    # layer's output) differs between the runs, so both are stored: in.final_streams32 / in.final_streams64.
    def alt_streams(m, dt):
        cap = {}

        def keep(name, value):   # hooks must return None (a pre-hook's return value replaces the inputs)
            cap.setdefault(name, value)
        hooks = [m.model.layers[0].register_forward_pre_hook(lambda mod, a: keep("streams", a[0])),
                 m.model.layers[-1].register_forward_hook(lambda mod, a, o: keep("final_streams", o)),
                 m.model.norm.register_forward_pre_hook(lambda mod, a: keep("collapsed", a[0]))]
        try:
            m(inputs_embeds=embeds.to(dt))
        finally:
            for h in hooks:
                h.remove()
        return cap
    w = {k: v for k, v in _weights(model.model).items() if k.startswith("altup_")}
    o32, o64 = _both(model, alt_streams)
    ins = {"inputs_embeds": embeds.numpy(), "final_streams32": o32.pop("final_streams"),
           "final_streams64": o64.pop("final_streams")}
    save_golden("text_altup_streams", ins, w, o32, o64, meta)

    # LAuReL (layer 0), MLPs (layer 0 sparse, layer 2 dense)
    x = _rand((B, T, D), 14)
    save_golden("text_laurel", {"x": x.numpy()}, _weights(model.model.layers[0].laurel),
                *_both(model, lambda m, dt: {"out": m.model.layers[0].laurel(x.to(dt))}), meta)
    for name, li in (("text_mlp_sparse", 0), ("text_mlp_dense", 2)):
        save_golden(name, {"x": x.numpy()}, _weights(model.model.layers[li].mlp),
                    *_both(model, lambda m, dt, li=li: {"out": m.model.layers[li].mlp(x.to(dt))}),
                    {**meta, "layer_idx": li})

    # Attention (layer 1 sliding, layer 2 full), with left padding on row 1
    pos = torch.arange(T)[None].expand(B, T)
    for name, li in (("text_attention_sliding", 1), ("text_attention_full", 2)):
        lt = cfg.layer_types[li]
        am = _bool_mask(mask, cfg.sliding_window if lt == S else None)

        def att(m, dt, li=li, lt=lt, am=am):
            from transformers.cache_utils import KVSharingDict
            h = x.to(dt)
            cos_sin = m.model.rotary_emb(h, pos, lt)
            out, _ = m.model.layers[li].self_attn(h, cos_sin, am, shared_kv_states=KVSharingDict())
            return {"out": out}
        save_golden(name, {"x": x.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()},
                    _weights(model.model.layers[li].self_attn), *_both(model, att), {**meta, "layer_idx": li})

    # One decoder layer (layer 3: sliding, producer, sparse MLP)
    ple_in = _rand((B, T, cfg.hidden_size_per_layer_input), 15)
    am = _bool_mask(mask, cfg.sliding_window)

    def layer(m, dt):
        from transformers.cache_utils import KVSharingDict
        h = streams.to(dt)
        cos_sin = m.model.rotary_emb(h, pos, S)
        return {"out": m.model.layers[3](h, cos_sin, ple_in.to(dt), shared_kv_states=KVSharingDict(),
                                         attention_mask=am, position_ids=pos)}
    save_golden("text_decoder_layer", {"streams": streams.numpy(), "per_layer_input": ple_in.numpy(),
                                       "attention_mask": mask.numpy()},
                _weights(model.model.layers[3]), *_both(model, layer), {**meta, "layer_idx": 3})


def make_model_fixture(name, model, with_trace: bool):
    from tests.reference.trace_reference import hooked_trace
    cfg = model.config
    ids, mask = _inputs(cfg.vocab_size)

    def run(m, dt):
        out = {}
        if with_trace and dt == torch.float64:   # per-module float64 checks; float32 ones use the module fixtures
            tr = hooked_trace(m, lambda: m(ids, attention_mask=mask))
            out.update({f"trace.{k}": torch.from_numpy(v) for k, v in tr.items() if k != "logits"})  # = logits[0]
        out["logits"] = m(ids, attention_mask=mask).logits
        return out
    w = {k: v for k, v in _weights(model).items() if k != "lm_head.weight"}
    save_golden(name, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, w, *_both(model, run),
                _meta(model))


def make():
    torch.set_num_threads(1)
    model = tiny_causal_lm(SEED)
    make_module_fixtures(model)
    make_model_fixture("text_model_causal", model, with_trace=True)
    variant = tiny_causal_lm(SEED + 7, hidden_size=16, altup_num_inputs=3, altup_active_idx=1, altup_correct_scale=False,
                             num_hidden_layers=5, layer_types=[S, F, S, S, S], num_kv_shared_layers=2,
                             intermediate_size=[40, 48, 56, 32, 64], activation_sparsity_pattern=[0.0] * 5,
                             final_logit_softcapping=5.0)
    make_model_fixture("text_model_k3", variant, with_trace=False)
