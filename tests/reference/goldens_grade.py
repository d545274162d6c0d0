"""Golden cases for the grader: the functions no module golden covers (``tests/goldens/grade_*.safetensors``).

    python -m tests.make_goldens grade

Read by ``tests/grading/cases.py`` (the classroom grader). Each file comes from the reference
(transformers 5.24 / timm 1.0.31): ``out32`` from the float32 reference, ``out64`` from the float64 one with
the float32 activation casts lifted (``lift_text.lifted_text``), on the same float32-representable inputs.

* ``grade_mlp``: ``Normal(0, 1).icdf(s)`` for a few sparsities (the std multiplier), and the reference's
  ``Gemma3nTextMLP._gaussian_topk`` on a random gate (sparsity 0.95).
* ``grade_attention``: ``Gemma3nRotaryEmbedding`` (inv_freq buffers, cos/sin for both layer types),
  ``rotate_half`` and ``apply_rotary_pos_emb`` (with ``unsqueeze_dim=2``: [B, T, H, E] layout).
* ``grade_decoder``: the per-layer-input branch of layer 3 of the tiny model (the lines of
  ``Gemma3nTextDecoderLayer.forward`` after ``altup.correct``: scale, gate, GELU, times the per-layer input,
  projection, norm), fed a random corrected active stream.
* ``grade_sampling``: ``TemperatureLogitsWarper`` -> ``TopKLogitsWarper`` -> ``TopPLogitsWarper`` (the order
  ``generate`` applies them) on one logit vector, float64; and the softmax of the result.
* ``grade_features``: ``Gemma3nAudioFeatureExtractor``'s ``window``, ``mel_filters`` (several widths) and
  ``_extract_spectrogram`` (the log-mel of one waveform, before padding/masking).
* ``grade_vision``: timm ``create_conv2d(padding='same')`` dense and depthwise, strided and dilated, and
  ``RmsNorm2d``, float32 and float64.
"""
from __future__ import annotations

import numpy as np
import torch

from tests.golden_io import save_golden
from tests.reference.goldens_text import _both, _np
from tests.reference.text_models import tiny_causal_lm

SEED = 4321


def _rand(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g)).to(torch.float32)


def _versions():
    from tests.reference.versions import stamp
    return stamp("torch", "transformers", "timm")


def _config_meta(model):
    from tests.reference.goldens_text import _meta
    return _meta(model)["config"]


def make_text(model):
    cfg = model.config
    # MLP: std multiplier and gaussian top-k (layer 0 is sparse, 0.95)
    sparsities = [0.95, 0.9, 0.75, 0.6]
    std = {f"std_multiplier.{i}": np.asarray(torch.distributions.normal.Normal(0, 1).icdf(
        torch.tensor(s, dtype=torch.float32)).numpy(), np.float64) for i, s in enumerate(sparsities)}
    gate = _rand((2, 5, cfg.intermediate_size[0]), SEED + 1, 2.0)

    def topk(m, dt):
        return {"gaussian_topk": m.model.layers[0].mlp._gaussian_topk(gate.to(dt))}
    o32, o64 = _both(model, topk)
    save_golden("grade_mlp", {"gate": gate.numpy()}, {}, {**o32, **std}, o64,
                {"sparsities": sparsities, "gaussian_topk_sparsity": cfg.activation_sparsity_pattern[0],
                 "seed": SEED, **_versions()})

    # Attention: RoPE pieces
    from transformers.models.gemma3n import modeling_gemma3n as M
    B, T, H, E = 2, 7, 2, cfg.head_dim
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 2, 900, 4093]])
    x = _rand((B, T, H, E), SEED + 2)
    types = {"sliding": "sliding_attention", "full": "full_attention"}

    def rope(m, dt):
        out = {"rotate_half": M.rotate_half(x.to(dt))}
        for short, lt in types.items():
            cos, sin = m.model.rotary_emb(x.to(dt), pos, lt)
            out[f"cos.{short}"], out[f"sin.{short}"] = cos, sin
            out[f"rope.{short}"] = M.apply_rotary_pos_emb(x.to(dt), cos, sin, unsqueeze_dim=2)
        return out
    o32, o64 = _both(model, rope)
    for short, lt in types.items():
        inv = _np(getattr(model.model.rotary_emb, f"{lt}_inv_freq")).astype(np.float32)
        o32[f"inv_freq.{short}"] = inv
    bases = {short: float(cfg.rope_parameters[lt]["rope_theta"]) for short, lt in types.items()}
    save_golden("grade_attention", {"x": x.numpy(), "position_ids": pos.numpy()}, {}, o32, o64,
                {"bases": bases, "head_dim": E, "seed": SEED, **_versions()})

    # Decoder: the per-layer-input branch of layer 3
    li = 3
    corrected = _rand((2, 6, cfg.hidden_size), SEED + 3)
    ple = _rand((2, 6, cfg.hidden_size_per_layer_input), SEED + 4)

    def branch(m, dt):
        layer = m.model.layers[li]
        first = corrected.to(dt)
        if cfg.altup_correct_scale:
            first = layer.altup.scale_corrected_output(first)
        first = layer.per_layer_input_gate(first)
        first = layer.act_fn(first)
        first = torch.multiply(first, ple.to(dt))
        first = layer.per_layer_projection(first)
        return {"per_layer_input_branch": layer.post_per_layer_input_norm(first)}
    o32, o64 = _both(model, branch)
    keep = ("per_layer_input_gate.", "per_layer_projection.", "post_per_layer_input_norm.", "altup.correct_output_scale")
    w = {k: v.detach().to(torch.float64).numpy().astype(np.float32)
         for k, v in model.model.layers[li].state_dict().items() if k.startswith(keep)}
    save_golden("grade_decoder", {"corrected_active": corrected.numpy(), "per_layer_input": ple.numpy()}, w, o32, o64,
                {"config": _config_meta(model), "layer_idx": li, "seed": SEED, **_versions()})


def make_sampling():
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)
    logits = (_rand((40,), SEED + 5, 3.0)).to(torch.float64)
    params = [[1.0, 0, 1.0], [0.7, 0, 1.0], [1.0, 5, 1.0], [1.0, 0, 0.6], [1.3, 12, 0.85], [0.5, 3, 0.3]]
    out = {}
    for i, (t, k, p) in enumerate(params):
        x = logits[None].clone()
        x = TemperatureLogitsWarper(t)(None, x)
        if k:
            x = TopKLogitsWarper(k)(None, x)
        if p < 1.0:
            x = TopPLogitsWarper(p)(None, x)
        out[f"warp.{i}"] = _np(x[0])
        out[f"probs.{i}"] = _np(torch.softmax(x[0], dim=-1))
    save_golden("grade_sampling", {"logits": logits.numpy()}, {}, {}, out,
                {"warp_params": params, "seed": SEED, **_versions()})


def make_features():
    from transformers.models.gemma3n.feature_extraction_gemma3n import Gemma3nAudioFeatureExtractor
    n_mels = [128, 64, 32]
    o32, o64, ins = {}, {}, {}
    fe = Gemma3nAudioFeatureExtractor()
    o32["window"] = np.asarray(fe.window, np.float32)
    for m in n_mels:
        o64[f"mel.{m}"] = np.asarray(Gemma3nAudioFeatureExtractor(feature_size=m).mel_filters, np.float64)
    rng = np.random.default_rng(SEED)
    cases = {"wave1000": (1000, 128), "wave2345": (2345, 32)}
    for key, (n, m) in cases.items():
        w = (rng.standard_normal(n) * 0.1).astype(np.float32)
        ins[key] = w[None]
        spec, _ = Gemma3nAudioFeatureExtractor(feature_size=m)._extract_spectrogram(w[None], np.ones(n, np.int32))
        o32[f"log_mel.{key}"] = np.asarray(spec, np.float32)[None]
    save_golden("grade_features", ins, {}, o32, o64,
                {"n_mels": n_mels, "log_mel": {k: m for k, (n, m) in cases.items()}, "seed": SEED, **_versions()})


def make_vision():
    from timm.layers import RmsNorm2d, create_conv2d
    x = _rand((2, 3, 9, 11), SEED + 6)
    conv = {"k3s1": {"stride": 1, "dilation": 1, "k": 3, "out": 4}, "k3s2": {"stride": 2, "dilation": 1, "k": 3, "out": 5},
            "k5s2": {"stride": 2, "dilation": 1, "k": 5, "out": 2}, "k3d2": {"stride": 1, "dilation": 2, "k": 3, "out": 3}}
    dw = {"k3s1": {"stride": 1, "dilation": 1, "k": 3}, "k3s2": {"stride": 2, "dilation": 1, "k": 3},
          "k5s2": {"stride": 2, "dilation": 1, "k": 5}, "k3d2": {"stride": 1, "dilation": 2, "k": 3}}
    ins, o32, o64 = {"x": x.numpy()}, {}, {}
    for i, (name, a) in enumerate(conv.items()):
        m = create_conv2d(3, a["out"], a["k"], stride=a["stride"], dilation=a["dilation"], padding="same", bias=False)
        w = _rand(tuple(m.weight.shape), SEED + 10 + i, 0.3)
        with torch.no_grad():
            m.weight.copy_(w)
            o32[f"conv.{name}"] = _np(m(x))
            o64[f"conv.{name}"] = _np(m.double()(x.double()))
        ins[f"w.{name}"] = w.numpy()
    for i, (name, a) in enumerate(dw.items()):
        m = create_conv2d(3, 3, a["k"], stride=a["stride"], dilation=a["dilation"], padding="same", depthwise=True,
                          bias=False)
        w = _rand(tuple(m.weight.shape), SEED + 20 + i, 0.3)
        with torch.no_grad():
            m.weight.copy_(w)
            o32[f"dw.{name}"] = _np(m(x))
            o64[f"dw.{name}"] = _np(m.double()(x.double()))
        ins[f"w.dw.{name}"] = w.numpy()
    norm = RmsNorm2d(3, eps=1e-6)
    nw = _rand((3,), SEED + 30) + 1
    with torch.no_grad():
        norm.weight.copy_(nw)
        o32["rms_norm2d"] = _np(norm(x))
        o64["rms_norm2d"] = _np(norm.double()(x.double()))
    ins["norm_weight"] = nw.numpy()
    meta = {"conv": {k: {"stride": v["stride"], "dilation": v["dilation"]} for k, v in conv.items()},
            "dw": {k: {"stride": v["stride"], "dilation": v["dilation"]} for k, v in dw.items()},
            "seed": SEED, **_versions()}
    save_golden("grade_vision", ins, {}, o32, o64, meta)


def make():
    torch.set_num_threads(1)
    from tests.reference.goldens_text import SEED as TEXT_SEED
    make_text(tiny_causal_lm(TEXT_SEED))     # the model of the text goldens (layer 3 as in text_decoder_layer)
    make_sampling()
    make_features()
    make_vision()
