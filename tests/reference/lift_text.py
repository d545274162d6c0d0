"""Lift the text decoder's float32 activation casts so that ``model.double()`` computes in float64.

transformers 5.24 ``modeling_gemma3n.py`` casts text activations to float32 in four places (numerics doc
section 8); each patch below removes one cast and changes nothing else (constants keep their float32 values:
the RoPE ``inv_freq`` buffer, embedding/PLE/router scales and the sparsity z-score are computed in float32
at construction and only widened by ``.double()``). For float32 inputs every patched function computes
exactly what the original does.

1. ``Gemma3nRMSNorm.forward``: ``self._norm(x.float())`` -> ``self._norm(x)`` and ``weight.float()`` ->
   ``weight.to(x.dtype)``.
2. ``Gemma3nRotaryEmbedding.forward``: angles ``position_ids.float() * inv_freq.float()`` -> in the dtype of
   ``x`` (float64 angles from the float32-valued inv_freq), cos/sin in that dtype.
3. ``Gemma3nTextAltUp.compute_router_modalities``: ``torch.tanh(routed.float())`` -> ``torch.tanh(routed)``.
4. ``eager_attention_forward``: ``softmax(..., dtype=torch.float32)`` -> softmax in the query dtype (only
   used with ``attn_implementation="eager"``; the default SDPA has no cast).
Not patched: ``Gemma3nTextMLP._gaussian_topk`` builds its z-score in float32 and casts it to the input
dtype: that is a constant, kept as is.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from transformers.models.gemma3n import modeling_gemma3n as M


def _rms_norm_forward(self, hidden_states):
    normed = self._norm(hidden_states)                                    # patch 1: no .float()
    if self.with_scale:
        normed = normed * self.weight.to(hidden_states.dtype)
    return normed.type_as(hidden_states)


def _rotary_forward(self, x, position_ids, layer_type):
    inv_freq = getattr(self, f"{layer_type}_inv_freq")
    scaling = getattr(self, f"{layer_type}_attention_scaling")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32   # patch 2
    freqs = position_ids[..., None].to(work) * inv_freq.to(device=x.device, dtype=work)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(x.dtype), (emb.sin() * scaling).to(x.dtype)


def _router_forward(self, x):
    router_inputs = self.router_norm(x) * self.router_input_scale
    routed = self.modality_router(router_inputs)
    return torch.tanh(routed).type_as(x)                                  # patch 3: no .float()


def _eager_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None,
                             **kwargs):
    if scaling is None:
        scaling = module.head_dim ** -0.5
    key_states = M.repeat_kv(key, module.num_key_value_groups)
    value_states = M.repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if softcap is not None:
        attn_weights = torch.tanh(attn_weights / softcap) * softcap
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=query.dtype)  # patch 4
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


PATCHES = [
    (M.Gemma3nRMSNorm, "forward", _rms_norm_forward),
    (M.Gemma3nRotaryEmbedding, "forward", _rotary_forward),
    (M.Gemma3nTextAltUp, "compute_router_modalities", _router_forward),
    (M, "eager_attention_forward", _eager_attention_forward),
]


@contextlib.contextmanager
def patched(patches):
    """Set ``owner.name = new`` for each ``(owner, name, new)``; on exit each attribute gets back what it was
    on entry (so lifts nest). Shared by the text and audio lifts."""
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
    try:
        for owner, name, new in patches:
            setattr(owner, name, new)
        yield
    finally:
        for owner, name, old in saved:
            setattr(owner, name, old)


def lifted_text():
    """Within this block the text decoder's float32 islands compute in the input dtype (float64 after
    ``model.double()``)."""
    return patched(PATCHES)
