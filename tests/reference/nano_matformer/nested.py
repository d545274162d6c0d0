"""MatFormer's nested sub-models inside a transformers ``Gemma3nForCausalLM`` (reference tier, torch).

A sub-model keeps, in layer l, the first ``d_l`` hidden units of the FFN (rows ``0..d_l-1`` of ``gate_proj``
and ``up_proj``, columns ``0..d_l-1`` of ``down_proj``) and may leave whole layers out (the layer passes its
AltUp streams through unchanged). This is exactly what ``minig3n slice`` cuts out of a checkpoint, so a
sub-model trained here is the model that ``minig3n slice --ffn-dims ... --skip-layers ...`` later produces.
The activation-sparsity statistics (mean and std of the gate over the FFN units) are taken over the kept
units, as in the sliced checkpoint, whose FFN is simply narrower.

``use_submodel(model, widths, skip)`` is a context manager; outside it the model is the full model.
"""
from __future__ import annotations

import contextlib

_PATCHED = False


def _patch_classes() -> None:
    """Give Gemma3nTextMLP / Gemma3nTextDecoderLayer an optional per-instance width / skip switch."""
    global _PATCHED
    if _PATCHED:
        return
    import torch.nn.functional as F
    from transformers.models.gemma3n import modeling_gemma3n as m

    mlp_forward, layer_forward = m.Gemma3nTextMLP.forward, m.Gemma3nTextDecoderLayer.forward

    def nested_mlp_forward(self, hidden_states):
        d = getattr(self, "nested_width", None)
        if d is None or d == self.intermediate_size:
            return mlp_forward(self, hidden_states)
        gate = F.linear(hidden_states, self.gate_proj.weight[:d])              # [..., d]
        if self.activation_sparsity > 0.0:
            gate = self._gaussian_topk(gate)
        up = F.linear(hidden_states, self.up_proj.weight[:d])                  # [..., d]
        return F.linear(self.act_fn(gate) * up, self.down_proj.weight[:, :d])  # [..., D]

    def nested_layer_forward(self, hidden_states, *args, **kwargs):
        if getattr(self, "nested_skip", False):
            return hidden_states                                               # [K, B, T, D] unchanged
        return layer_forward(self, hidden_states, *args, **kwargs)

    m.Gemma3nTextMLP.forward = nested_mlp_forward
    m.Gemma3nTextDecoderLayer.forward = nested_layer_forward
    _PATCHED = True


@contextlib.contextmanager
def use_submodel(model, widths=None, skip=()):
    """Run ``model`` (a Gemma3nForCausalLM) as the sub-model with FFN widths ``widths`` (one per layer, None =
    full) and the layers ``skip`` left out."""
    _patch_classes()
    layers = model.model.layers
    skip = set(skip)
    for i, layer in enumerate(layers):
        if i in skip:
            assert not layer.self_attn.store_full_length_kv, \
                f"layer {i} produces K/V that later layers reuse; it cannot be skipped"
        layer.mlp.nested_width = None if widths is None else int(widths[i])
        layer.nested_skip = i in skip
    try:
        yield model
    finally:
        for layer in layers:
            layer.mlp.nested_width = None
            layer.nested_skip = False
