"""The nano-gemma3n architecture: every Gemma 3n text feature on, at a size that trains on 2 CPU cores.

* AltUp with 4 streams; LAuReL (rank 16); per-layer embeddings (P = 32 per layer);
* both layer types: period-3 pattern sliding, sliding, full; sliding window 64 < training context 128;
* KV sharing: the last 3 layers (sliding, sliding, full) reuse the KV of layer 1 (sliding) and layer 2 (full);
* activation sparsity 0.95 (gaussian top-k) on the first 2 layers;
* per-layer FFN widths differ (512, 512, 512, 384, 384, 256), so a MatFormer slice is meaningful;
* final logit soft-capping 30; tied embeddings; the Gemma ids pad 0, eos 1, bos 2.
"""
from __future__ import annotations

from .data import BOS, EOS, PAD, VOCAB_SIZE

CONTEXT = 128  # training context (tokens per window)

CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    vocab_size_per_layer_input=VOCAB_SIZE,
    hidden_size=128,
    hidden_size_per_layer_input=32,
    intermediate_size=[512, 512, 512, 384, 384, 256],
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    pad_token_id=PAD,
    eos_token_id=EOS,
    bos_token_id=BOS,
    tie_word_embeddings=True,
    sliding_window=64,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
    final_logit_softcapping=30.0,
    altup_num_inputs=4,
    altup_active_idx=0,
    altup_coef_clip=120.0,
    altup_correct_scale=True,
    num_kv_shared_layers=3,
    laurel_rank=16,
    activation_sparsity_pattern=[0.95, 0.95, 0.0, 0.0, 0.0, 0.0],
    rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                     "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
)


def build(seed: int, attn_implementation: str = "sdpa", config: dict | None = None):
    import torch
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    cfg = Gemma3nTextConfig(**(config or CONFIG))
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = Gemma3nForCausalLM(cfg)
    return model
