"""The multimodal embedder: how audio and image tokens enter the language model's embedding space.

The idea: the text decoder only understands vectors of width 2048 (text hidden size). Each non-text
modality owns a small embedder (``embed_audio``, ``embed_vision``) with two entry points that end in the
same projection:

* **soft** path, for encoder outputs (one vector per audio frame / image patch):
  ``y = RMSNorm_noW( RMSNorm_soft(x) W_proj^T )``
* **hard** path, for the modality's reserved token ids (``<end_of_audio>``, ``<audio_soft_token>``, the
  padding row 127, ...): look the id up in the embedder's own 128-row table, then
  ``y = RMSNorm_noW( RMSNorm_hard(table[id - vocab_offset]) W_proj^T )``.

Both norms before the projection carry a weight (applied as ``x * w``, never ``1 + w``); the norm after the
projection has **no weight** (``embedding_post_projection_norm`` with ``with_scale=False``: no tensor in the
checkpoint). There is no ``sqrt(hidden)`` scaling on either path, unlike the text embedding; the vision tower
scales its features by sqrt(2048) *before* calling the soft path (that is the vision code's business).

Weights ``p`` (HF names relative to ``model.embed_audio.`` or ``model.embed_vision.``):
``embedding.weight [128, Dm]``, ``hard_embedding_norm.weight [Dm]``, ``soft_embedding_norm.weight [Dm]``,
``embedding_projection.weight [Dt, Dm]`` (Dm = the tower's width: audio 1536, vision 2048; Dt = text 2048).

Source: transformers 5.24 ``Gemma3nMultimodalEmbedder`` (modeling_gemma3n.py).
Left out: nothing; the caller (the multimodal merge) decides which ids take which path.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .ops import linear, rms_norm


def _project(x, p, eps):
    """Shared tail of both paths: projection to the text width, then the weightless RMSNorm.   [..., Dm] -> [..., Dt]"""
    y = linear(x, p["embedding_projection.weight"])                          # [..., Dt]
    return rms_norm(y, None, eps)                                            # [..., Dt]


def embed_soft(x, p, eps=1e-6):
    """Soft path: encoder outputs -> text-width embeddings.   [..., Dm] -> [..., Dt]

    Works in the dtype of ``x`` (float32 or float64).
    """
    x = np.asarray(x)                                                        # [..., Dm]
    h = rms_norm(x, p["soft_embedding_norm.weight"], eps)                    # [..., Dm]
    return _project(h, p, eps)                                               # [..., Dt]


def embed_hard(ids_minus_offset, p, eps=1e-6, dtype=None):
    """Hard path: ids already shifted by the embedder's ``vocab_offset`` (so 0..127) -> embeddings.

    [...] int -> [..., Dt]. ``dtype`` defaults to the table's dtype (float32 or float64 from the loader).
    Raises InputError for an id outside the table.
    """
    ids = np.asarray(ids_minus_offset)                                       # [...]
    table = p["embedding.weight"]                                            # [V, Dm]
    if ids.dtype.kind not in "iu":
        raise InputError(f"embedder ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise InputError(f"embedder ids (minus vocab_offset) must lie in [0, {table.shape[0]}), got "
                         f"min {int(ids.min())}, max {int(ids.max())}")
    dtype = np.dtype(dtype or table.dtype)
    e = np.asarray(table[ids.reshape(-1)], dtype=dtype).reshape(*ids.shape, table.shape[1])  # [..., Dm]
    h = rms_norm(e, p["hard_embedding_norm.weight"], eps)                    # [..., Dm]
    return _project(h, p, eps)                                               # [..., Dt]


def embedder_weight_shapes(multimodal, text, prefix: str = "model.embed_audio.") -> dict[str, tuple]:
    """Every tensor an embedder reads, with its shape.

    ``multimodal``: the tower's config (``AudioConfig`` / ``VisionConfig``: ``hidden_size``, ``vocab_size``)
    or its width as an int (vocab 128); ``text``: the ``TextConfig`` or the text width as an int.
    Audio: ``embedder_weight_shapes(cfg.audio, cfg.text, "model.embed_audio.")`` (1536 -> 2048);
    vision: ``embedder_weight_shapes(cfg.vision, cfg.text, "model.embed_vision.")`` (2048 -> 2048).
    """
    dm = getattr(multimodal, "hidden_size", multimodal)
    vocab = getattr(multimodal, "vocab_size", 128)
    dt = getattr(text, "hidden_size", text)
    return {
        prefix + "embedding.weight": (vocab, dm),
        prefix + "hard_embedding_norm.weight": (dm,),
        prefix + "soft_embedding_norm.weight": (dm,),
        prefix + "embedding_projection.weight": (dt, dm),
    }
