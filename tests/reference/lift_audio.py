"""Lift the audio tower's float32 activation casts, so ``model.double()`` computes in float64.

``model.double()`` converts parameters and buffers, but some forward code casts activations to float32
on purpose (numerics doc section 8). Inside ``lift_audio()`` those casts follow the input instead: float64
activations stay float64; float32 runs are unchanged (each patch reduces to the original for float32).

Each patch edits one line of the reference's own source (``inspect.getsource``), recompiles the function in
its module's namespace and puts it back on exit; a patch whose original text is missing raises, so a
changed reference cannot be lifted silently. The patches:

1. ``Gemma3nRMSNorm.forward``: ``hidden_states.float()`` and ``self.weight.float()`` (every audio and
   embedder norm) -> float64 when the input is float64.
2. ``Gemma3nAudioRelativePositionEmbedding._get_timing_signal_1d_pos``: positions and inverse timescales
   cast to float32 -> cast to the requested dtype. The timescales keep their float32 *values* (buffer).
3. ``Gemma3nAudioAttention.forward``: ``softmax(..., dtype=torch.float32)`` -> the logits' dtype.
4. ``Gemma3nAudioCumulativeGroupNorm.forward``: ``calc_dtype = torch.float32`` -> float64 for float64 input.

Constants stay as the reference builds them: ``q_scale``, ``inv_timescales`` and ``softcap`` are float32
buffers whose values ``.double()`` keeps exactly.
"""
from __future__ import annotations

import inspect
import textwrap

from transformers.models.gemma3n import modeling_gemma3n as mg

from tests.reference.lift_text import patched

PATCHES = [
    (mg.Gemma3nRMSNorm, "forward", [
        ("self._norm(hidden_states.float())",
         "self._norm(hidden_states if hidden_states.dtype == torch.float64 else hidden_states.float())"),
        ("normed_output * self.weight.float()", "normed_output * self.weight.to(normed_output.dtype)"),
    ]),
    (mg.Gemma3nAudioRelativePositionEmbedding, "_get_timing_signal_1d_pos", [
        ("position = position.float().unsqueeze(-1)",
         "position = position.to(torch.float64 if dtype == torch.float64 else torch.float32).unsqueeze(-1)"),
        ("self.inv_timescales.to(device=position.device, dtype=torch.float32)",
         "self.inv_timescales.to(device=position.device, dtype=position.dtype)"),
    ]),
    (mg.Gemma3nAudioAttention, "forward", [
        ("torch.nn.functional.softmax(logits, dim=-1, dtype=torch.float32)",
         "torch.nn.functional.softmax(logits, dim=-1, "
         "dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32)"),
    ]),
    (mg.Gemma3nAudioCumulativeGroupNorm, "forward", [
        ("calc_dtype = torch.float32",
         "calc_dtype = torch.float64 if hidden_states.dtype == torch.float64 else torch.float32"),
    ]),
]


def _patched(cls, name, edits):
    src = textwrap.dedent(inspect.getsource(cls.__dict__[name]))
    for old, new in edits:
        if src.count(old) != 1:
            raise RuntimeError(f"lift_audio: expected exactly one '{old}' in {cls.__name__}.{name}; "
                               "the reference changed, update the patch")
        src = src.replace(old, new)
    namespace = dict(vars(mg))
    exec(compile(src, f"<lift_audio {cls.__name__}.{name}>", "exec"), namespace)
    return namespace[name]


# Built once, from the reference's own functions as imported (so entering this context inside another lift,
# e.g. tests/reference/lift_text.py, which also replaces Gemma3nRMSNorm.forward, still works; on exit each
# method gets back whatever it was on entry).
LIFTED = [(cls, name, _patched(cls, name, edits)) for cls, name, edits in PATCHES]


def lift_audio():
    """Within this context the audio tower and the multimodal embedders compute float64 end to end."""
    return patched(LIFTED)
