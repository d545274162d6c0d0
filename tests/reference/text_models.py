"""Tiny random Gemma 3n text models of the reference (transformers 5.24), shared by the text goldens,
reference-tier tests and the reference tracer.

``tiny_config(**overrides)`` is a ``Gemma3nTextConfig`` that exercises every concept in a few layers:
7 layers (sliding/full mix), a sliding window of 8 (so sequences of 20 slide), 3 KV-shared layers with
consumers of both types (producers: layer 3 sliding, layer 2 full), activation sparsity 0.95 on layers
0, 1, 3 and off elsewhere, per-layer intermediate sizes that differ, PLE vocab 256 < vocab 300 (so ids
256..299 exercise the "map to row 0" rule), head_dim 16.

``randomize(model, seed)`` overwrites every parameter with seeded random values: matrices ~ N(0, 1/in),
norm weights and scales away from 1 and 0 (HF's init makes correct_output_scale zero and norms one, which
would hide bugs), embeddings ~ N(0, 0.5).
"""
from __future__ import annotations

import math

import torch

S, F = "sliding_attention", "full_attention"


def tiny_config(**overrides):
    from transformers import Gemma3nTextConfig
    kw = dict(
        vocab_size=300, vocab_size_per_layer_input=256, hidden_size=32, hidden_size_per_layer_input=8,
        intermediate_size=[48, 64, 40, 56, 48, 72, 32], num_hidden_layers=7, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, sliding_window=8,
        layer_types=[S, S, F, S, F, S, S], num_kv_shared_layers=3, laurel_rank=4, altup_num_inputs=4,
        activation_sparsity_pattern=[0.95, 0.95, 0.0, 0.95, 0.0, 0.0, 0.0],
        rope_parameters={F: {"rope_type": "default", "rope_theta": 1_000_000.0},
                         S: {"rope_type": "default", "rope_theta": 10_000.0}},
        final_logit_softcapping=30.0, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    kw.update(overrides)
    return Gemma3nTextConfig(**kw)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random values for every parameter (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim == 1:                      # norm weights, correct_output_scale
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            elif "embed" in name:                # token / PLE / multimodal tables
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            elif name.endswith(("prediction_coefs.weight", "correction_coefs.weight")):
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            else:                                # linear [out, in]
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(p.shape[-1]))
    return model


def tiny_causal_lm(seed: int = 0, **overrides):
    """A randomized ``Gemma3nForCausalLM`` (float32, eval mode) built from ``tiny_config(**overrides)``."""
    from transformers import Gemma3nForCausalLM
    torch.manual_seed(seed)
    model = Gemma3nForCausalLM(tiny_config(**overrides)).eval()
    return randomize(model, seed)


def state_dict_numpy(model, dtype="float32") -> dict:
    """The model's tensors as NumPy arrays under their HF names (tied lm_head dropped)."""
    return {k: v.detach().to(torch.float64).numpy().astype(dtype) for k, v in model.state_dict().items()
            if k != "lm_head.weight"}


def tiny_multimodal(seed: int = 0, **text_overrides):
    """A randomized ``Gemma3nForConditionalGeneration`` around ``tiny_config(**text_overrides)``, with a small
    audio encoder and a small MobileNetV5 (``timm_custom``); special ids laid out as in the real vocabulary:
    text ids [0, 256), then 22 vision ids (eoi 256, image soft 257), then 22 audio ids (eoa 278, audio soft 279).
    For the text decoder's sake only: feed it text ids."""
    from tests.reference.timm_custom import register
    register()
    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration
    text = tiny_config(**text_overrides).to_dict()
    cfg = Gemma3nConfig(
        text_config=text,
        audio_config=dict(vocab_size=22, vocab_offset=278, input_feat_size=128, hidden_size=16,
                          conf_num_attention_heads=2, conf_num_hidden_layers=1, sscp_conv_channel_size=[4, 4]),
        vision_config=dict(architecture="mobilenetv5_custom_enc",
                           model_args={"arch_def": [["er_r1_k3_s2_e2_c8"], ["uir_r1_a3_k3_s2_e2_c8"],
                                                    ["uir_r1_a3_k3_s2_e2_c8"], ["uir_r1_a3_k3_s2_e2_c8"]],
                                       "stem_size": 8, "msfa_output_resolution": 2},
                           hidden_size=2048, vocab_size=22, vocab_offset=256),
        vision_soft_tokens_per_image=4, boi_token_id=250, eoi_token_id=256, image_token_id=257,
        boa_token_id=251, eoa_token_id=278, audio_token_id=279)
    torch.manual_seed(seed)
    model = Gemma3nForConditionalGeneration(cfg).eval()
    return randomize(model, seed)
