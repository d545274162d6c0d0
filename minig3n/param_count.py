"""Counting the parameters of a Gemma 3n config or checkpoint: total, text, effective.

Three numbers, as Google's notebook prints them:

* **text**: every tensor of the language model as the checkpoint stores it, *including* the k_proj,
  v_proj and k_norm of the KV-shared layers (present in the official files, never read by the model);
* **effective**: text without the token embedding ``embed_tokens`` [V, D] and the PLE table
  ``embed_tokens_per_layer`` [U, L*P]; both are look-up tables (one row read per token) that can stay
  in slow memory, which is what the "E" in E2B/E4B means;
* **total**: everything in the checkpoint (text, audio and vision towers, their embedders) *plus* the LM
  head counted once more, although it is tied to ``embed_tokens``.

For the E2B row applied to E4B this gives total 5,976,833,408, text 4,456,156,768 and effective
1,905,495,648, the notebook's numbers. (A sum over the reference's modules lands 64 higher: timm's
MobileNetV5 stem conv has a bias [64] that the official checkpoint does not carry.)

The shapes come from ``weight_shapes.checkpoint_shapes`` (a config) or the stored tensors (a checkpoint).
Source: Google's gemma-cookbook "Gemma 3n MatFormer Lab" notebook (its parameter printout).
Left out: bytes per parameter (dtype), which depends on how the checkpoint is stored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .weight_shapes import checkpoint_shapes


@dataclass
class ParamCount:
    """Parameter counts by part. ``total``, ``text`` and ``effective`` are the three numbers of Google's
    notebook (see the module docstring)."""

    text: int                          # the language model, KV-shared layers' K/V included
    token_embedding: int               # embed_tokens [V, D]
    per_layer_embedding: int           # embed_tokens_per_layer [U, L*P]
    audio: int = 0                     # audio_tower
    vision: int = 0                    # vision_tower
    embedders: int = 0                 # embed_audio + embed_vision
    lm_head: int = 0                   # the LM head, counted on its own although tied to embed_tokens
    other: int = 0                     # anything else stored

    @property
    def effective(self) -> int:
        return self.text - self.token_embedding - self.per_layer_embedding

    @property
    def total(self) -> int:
        return self.text + self.audio + self.vision + self.embedders + self.lm_head + self.other


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def count_names(shapes: dict, text_prefix: str, tied_lm_head: int = 0) -> ParamCount:
    """Sort ``{name: shape}`` into a ParamCount. ``tied_lm_head``: parameters of a tied LM head that is not
    stored (counted separately, as the notebook does)."""
    c = ParamCount(0, 0, 0, lm_head=tied_lm_head)
    for name, shape in shapes.items():
        n = _numel(shape)
        if name == "lm_head.weight":
            c.lm_head = n
        elif name.startswith("model.audio_tower."):
            c.audio += n
        elif name.startswith("model.vision_tower."):
            c.vision += n
        elif name.startswith(("model.embed_audio.", "model.embed_vision.")):
            c.embedders += n
        elif name.startswith(text_prefix):
            c.text += n
            if name == text_prefix + "embed_tokens.weight":
                c.token_embedding = n
            elif name == text_prefix + "embed_tokens_per_layer.weight":
                c.per_layer_embedding = n
        else:
            c.other += n
    return c


def count_config(cfg) -> ParamCount:
    """Counts of a config, from the shapes it implies (the LM head counted separately when tied)."""
    prefix = "model.language_model." if cfg.is_multimodal else "model."
    tied = cfg.text.vocab_size * cfg.text.hidden_size if cfg.text.tie_word_embeddings else 0
    return count_names(checkpoint_shapes(cfg), prefix, tied)


def tied_head_params(text, shapes) -> int:
    """Parameters of a tied LM head that the checkpoint does not store (counted separately, as the notebook
    does); 0 when untied or stored."""
    return text.vocab_size * text.hidden_size if text.tie_word_embeddings and "lm_head.weight" not in shapes else 0


def count_checkpoint(model_dir) -> ParamCount:
    """Counts of a checkpoint directory from its stored tensors (``matformer.count_checkpoint`` also counts
    the checkpoint a slice would cut, without writing it)."""
    from .checkpoint import Checkpoint
    ckpt = Checkpoint(model_dir)
    shapes = {n: ckpt.shape(n) for n in ckpt.names}
    return count_names(shapes, ckpt.text_prefix, tied_head_params(ckpt.config.text, shapes))
