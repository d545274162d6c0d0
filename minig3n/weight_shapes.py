"""Weight-shape tables: every tensor a Gemma 3n checkpoint holds, with the shape its config implies.

The idea: the config alone fixes every tensor's name and shape, so a checkpoint can be checked before any
arithmetic runs (``Checkpoint.check_shapes``), parameters counted without opening a file
(``param_count``), and a sliced model planned (``matformer``). The text decoder's table is written out
here; each tower's table lives with its chapter (``usm.audio_weight_shapes``,
``mobilenetv5.vision_weight_shapes``, ``embedder.embedder_weight_shapes``) and is only gathered here.

Two views: what the model *reads* (``model_weight_shapes``, checked when loading) and what an official
checkpoint *stores* (``checkpoint_shapes``): the stored files also carry k_proj/v_proj/k_norm for the
KV-shared layers (never read) and lack the vision stem's ``conv_stem.conv.bias`` (timm's encoder has it,
zeros; the official checkpoint does not).

Source: the tensor names of transformers 5.24 ``Gemma3nForConditionalGeneration`` / ``Gemma3nForCausalLM``
state dicts and of the official checkpoints.
Left out: ``lm_head.weight`` (tied to ``embed_tokens``; tolerated when stored).
"""
from __future__ import annotations

from .kv_share import is_kv_shared

STEM_BIAS = "model.vision_tower.timm_model.conv_stem.conv.bias"


def text_weight_shapes(cfg, prefix: str) -> dict[str, tuple]:
    """Every tensor the text decoder reads, with the shape the config implies. ``prefix`` ends with '.'.

    KV-shared layers (index >= L - num_kv_shared_layers) carry k_proj/v_proj/k_norm in the official
    checkpoints, but the model never reads them, so they are not listed (and tolerated when present).
    """
    D, P, L = cfg.hidden_size, cfg.hidden_size_per_layer_input, cfg.num_hidden_layers
    N, G, E, R, K = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.laurel_rank, cfg.altup_num_inputs
    s = {
        prefix + "embed_tokens.weight": (cfg.vocab_size, D),
        prefix + "embed_tokens_per_layer.weight": (cfg.vocab_size_per_layer_input, L * P),
        prefix + "per_layer_model_projection.weight": (L * P, D),
        prefix + "per_layer_projection_norm.weight": (P,),
        prefix + "norm.weight": (D,),
    }
    for i in range(K - 1):
        s[f"{prefix}altup_projections.{i}.weight"] = (D, D)
        s[f"{prefix}altup_unembed_projections.{i}.weight"] = (D, D)
    for li in range(L):
        p, I = f"{prefix}layers.{li}.", cfg.intermediate_size[li]
        s.update({
            p + "self_attn.q_proj.weight": (N * E, D), p + "self_attn.o_proj.weight": (D, N * E),
            p + "self_attn.q_norm.weight": (E,),
            p + "mlp.gate_proj.weight": (I, D), p + "mlp.up_proj.weight": (I, D), p + "mlp.down_proj.weight": (D, I),
            p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
            p + "pre_feedforward_layernorm.weight": (D,), p + "post_feedforward_layernorm.weight": (D,),
            p + "altup.correct_output_scale": (D,), p + "altup.correction_coefs.weight": (K, K),
            p + "altup.prediction_coefs.weight": (K * K, K), p + "altup.modality_router.weight": (K, D),
            p + "altup.router_norm.weight": (D,),
            p + "laurel.linear_left.weight": (R, D), p + "laurel.linear_right.weight": (D, R),
            p + "laurel.post_laurel_norm.weight": (D,),
            p + "per_layer_input_gate.weight": (P, D), p + "per_layer_projection.weight": (D, P),
            p + "post_per_layer_input_norm.weight": (D,),
        })
        if not is_kv_shared(cfg, li):
            s.update({p + "self_attn.k_proj.weight": (G * E, D), p + "self_attn.v_proj.weight": (G * E, D),
                      p + "self_attn.k_norm.weight": (E,)})
    return s


def text_checkpoint_shapes(text, prefix: str) -> dict:
    """The text tensors an official checkpoint stores: what the model reads (``text_weight_shapes``) plus
    the k_proj, v_proj, k_norm that KV-shared layers carry although the model never reads them."""
    shapes = text_weight_shapes(text, prefix)
    G, E, D = text.num_key_value_heads, text.head_dim, text.hidden_size
    for li in (i for i in range(text.num_hidden_layers) if is_kv_shared(text, i)):
        p = f"{prefix}layers.{li}.self_attn."
        shapes.update({p + "k_proj.weight": (G * E, D), p + "v_proj.weight": (G * E, D), p + "k_norm.weight": (E,)})
    return shapes


def tower_weight_shapes(cfg) -> dict[str, tuple]:
    """Audio tower, vision tower and the two embedders of a multimodal ``Gemma3nConfig``, as the model reads
    them (the vision stem's bias included)."""
    from .embedder import embedder_weight_shapes
    from .mobilenetv5 import vision_weight_shapes
    from .usm import audio_weight_shapes
    s = dict(audio_weight_shapes(cfg.audio, "model.audio_tower."))
    s.update(vision_weight_shapes(cfg.vision, "model.vision_tower.timm_model."))
    s.update(embedder_weight_shapes(cfg.audio, cfg.text, "model.embed_audio."))
    s.update(embedder_weight_shapes(cfg.vision, cfg.text, "model.embed_vision."))
    return s


def model_weight_shapes(cfg, text_prefix: str) -> dict[str, tuple]:
    """Every tensor the model reads, for the towers ``cfg`` has (text only, or text + audio + vision)."""
    shapes = text_weight_shapes(cfg.text, text_prefix)
    if cfg.is_multimodal:
        shapes.update(tower_weight_shapes(cfg))
    return shapes


def checkpoint_shapes(cfg) -> dict[str, tuple]:
    """Every tensor an official-layout checkpoint of ``cfg`` stores (LM head not stored: tied)."""
    if not cfg.is_multimodal:
        return text_checkpoint_shapes(cfg.text, "model.")
    shapes = text_checkpoint_shapes(cfg.text, "model.language_model.")
    shapes.update(tower_weight_shapes(cfg))
    shapes.pop(STEM_BIAS, None)
    return shapes
