"""The multimodal forward: three towers, one sequence. Images and audio become rows of ``inputs_embeds``.

The idea (docs/NUMERICS.md §4; transformers 5.24 ``Gemma3nModel.forward``, input_ids path): the processor
left a run of placeholder ids where each image / audio clip goes (``processor.py``). The forward

1. embeds every id as text does (``embed_tokens(id) * sqrt(D)``), then overwrites the ids of the vision range
   ``[vision.vocab_offset, audio.vocab_offset)`` with ``embed_vision``'s *hard* path and the ids from
   ``audio.vocab_offset`` up with ``embed_audio``'s hard path (``hard_token_embeddings``): ``<end_of_image>``,
   ``<image_soft_token>``, ``<end_of_audio>``, ``<audio_soft_token>`` have their own small tables, and their
   vectors have RMS ~1 (no sqrt(D) scale). ``<start_of_image>`` / ``<start_of_audio>`` are ordinary text ids;
2. images: MobileNetV5 (``mobilenetv5.vision_encoder``) -> r*r soft tokens per image
   (``mobilenetv5.image_soft_tokens``: flatten, x sqrt(2048), ``embed_vision`` soft path), written in order
   into the positions holding ``image_token_id`` (``image_features``, ``merge_embeddings``);
3. audio: log-mel -> USM (``usm.audio_encoder``) -> ``embed_audio`` soft path; frames the encoder marks
   invalid (padding) are *replaced* by the hard embedding of id ``text vocab_size - 1`` (``embed_audio`` row
   127), and the clip is right-padded with that same vector to ``audio_soft_tokens_per_image`` (188) rows,
   the number of ``<audio_soft_token>`` ids the processor wrote (``audio_features``);
4. the text decoder runs on the merged embeddings (``decoder.forward(..., inputs_embeds=...)``). Its
   per-layer inputs take the *token part* from the ORIGINAL ids (ids >= ``vocab_size_per_layer_input``, i.e.
   every vision/audio id, read PLE row 0) and the *projection part* from the merged embeddings, so soft tokens
   reach the PLE only through the projection. Attention is causal over all tokens (no bidirectional image
   attention in Gemma 3n).

A prompt without images or audio gives exactly the text path's result (the merge then only touches
multimodal ids, which a text prompt does not contain).

Trace names (``trace={}``, the reference's module paths): the towers keep their batch axis
(``model.vision_tower.timm_model.conv_stem`` / ``.blocks.{s}.{b}`` / ``.msfa`` [N_img, C, Y, X];
``model.audio_tower.subsample_conv_projection`` / ``.conformer.{i}`` / ``model.audio_tower`` [N_aud, F, D]);
``model.embed_vision`` [N_img, r*r, D] and ``model.embed_audio`` [N_aud, F', D] are the soft-path outputs;
``model.language_model.embed_tokens`` [T, D] is the text embedding of the ids before the merge; then the text
decoder's names (``decoder.py``), batch row 0.

Source: transformers 5.24 ``Gemma3nModel.forward`` / ``get_image_features`` / ``get_audio_features`` /
``get_placeholder_mask`` and ``Gemma3nForConditionalGeneration.forward``.
Left out: ``inputs_embeds``-only calls (the reference then finds placeholders by comparing embeddings), batches
with a different number of media per row (one prompt at a time is what ``processor.py`` makes; a batch works
when the placeholders of all rows are filled in row order), training.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import decoder
from .checkpoint import Checkpoint
from .embedder import embed_hard, embed_soft, embedder_weight_shapes
from .errors import CheckpointError, InputError
from .finite import all_finite, locate


@dataclass
class MultimodalModel:
    """A multimodal checkpoint: the text model plus the config's towers (weights read lazily)."""

    text: decoder.TextModel
    ckpt: Checkpoint

    @property
    def cfg(self):
        return self.ckpt.config

    @property
    def dtype(self):
        return self.ckpt.dtype


def load_multimodal_model(model_dir_or_checkpoint, dtype=None) -> MultimodalModel:
    """Open a ``gemma3n`` checkpoint (text + vision + audio) and check the text and embedder tensor shapes."""
    if isinstance(model_dir_or_checkpoint, Checkpoint):
        ckpt = model_dir_or_checkpoint
    else:
        ckpt = Checkpoint(model_dir_or_checkpoint, np.float32 if dtype is None else dtype)
    if not ckpt.config.is_multimodal:
        raise CheckpointError(f"{ckpt.dir}: a text-only (gemma3n_text) checkpoint has no vision or audio tower; "
                              "images and audio (--image / --audio) need a multimodal (gemma3n) checkpoint")
    text = decoder.load_text_model(ckpt)
    cfg = ckpt.config
    ckpt.check_shapes({**embedder_weight_shapes(cfg.vision, cfg.text, "model.embed_vision."),
                       **embedder_weight_shapes(cfg.audio, cfg.text, "model.embed_audio.")})
    return MultimodalModel(text, ckpt)


# 1. ids -> embeddings ----------------------------------------------------------------------------------------
def hard_token_embeddings(model: MultimodalModel, input_ids) -> np.ndarray:
    """Text embeddings, with vision-range and audio-range ids replaced by their embedders' hard path.

    [B, T] int -> [B, T, D]"""
    cfg = model.cfg
    ids = decoder.check_input_ids(input_ids, cfg.text)
    x = decoder.embed_tokens(model.text, ids)                                     # [B, T, D]
    ranges = (("embed_vision", cfg.vision, cfg.vision.vocab_offset, cfg.audio.vocab_offset),
              ("embed_audio", cfg.audio, cfg.audio.vocab_offset, cfg.text.vocab_size))
    for name, tower, lo, hi in ranges:
        sel = (ids >= lo) & (ids < hi)                                            # [B, T]
        if sel.any():
            p = model.ckpt.params(f"model.{name}")
            x[sel] = embed_hard(ids[sel] - tower.vocab_offset, p, tower.rms_norm_eps, x.dtype)  # [n, D]
    return x


# 2. images -------------------------------------------------------------------------------------------------
def image_features(model: MultimodalModel, pixel_values, trace=None) -> np.ndarray:
    """pixel_values -> soft tokens in the text space.   [N, 3, H, W] -> [N, r*r, D]"""
    from .mobilenetv5 import PREFIX, image_soft_tokens, vision_encoder
    cfg = model.cfg
    pixels = np.asarray(pixel_values).astype(model.dtype, copy=False)             # [N, 3, H, W]
    feats = vision_encoder(pixels, model.ckpt.params(PREFIX), cfg.vision, trace=trace)  # [N, Cv, r, r]
    soft = image_soft_tokens(feats, model.ckpt.params("model.embed_vision"), cfg.vision)  # [N, r*r, D]
    if trace is not None:
        trace["model.embed_vision"] = soft
    return soft


# 3. audio --------------------------------------------------------------------------------------------------
def audio_padding_embedding(model: MultimodalModel) -> np.ndarray:
    """``embed_audio`` hard path of id ``text vocab_size - 1`` (row 127): fills invalid and missing frames. -> [D]"""
    cfg = model.cfg
    pad_id = cfg.text.vocab_size - 1
    return embed_hard(np.asarray([pad_id - cfg.audio.vocab_offset]), model.ckpt.params("model.embed_audio"),
                      cfg.audio.rms_norm_eps, model.dtype)[0]                     # [D]


def audio_features(model: MultimodalModel, input_features, input_features_mask, trace=None) -> np.ndarray:
    """log-mel features + validity mask -> ``audio_soft_tokens_per_image`` soft tokens per clip.

    [N, F, M], [N, F] bool (True = valid frame, as the processor returns it) -> [N, S_a, D] (S_a = 188)"""
    from .usm import audio_encoder
    cfg = model.cfg
    feats = np.asarray(input_features).astype(model.dtype, copy=False)           # [N, F, M]
    valid = np.asarray(input_features_mask)
    if valid.dtype != np.bool_:
        valid = valid.astype(bool)                                                # [N, F]
    out, invalid = audio_encoder(feats, ~valid, model.ckpt.params("model.audio_tower"), cfg.audio,
                                 trace=trace)                                     # [N, F', Da], [N, F']
    soft = embed_soft(out, model.ckpt.params("model.embed_audio"), cfg.audio.rms_norm_eps)  # [N, F', D]
    if trace is not None:
        trace["model.embed_audio"] = soft
    pad = audio_padding_embedding(model)                                          # [D]
    soft = np.where(invalid[..., None], pad, soft)                                # [N, F', D]
    n_extra = cfg.audio_soft_tokens_per_image - soft.shape[1]
    if n_extra < 0:
        raise InputError(f"the audio encoder gave {soft.shape[1]} frames, more than audio_soft_tokens_per_image="
                         f"{cfg.audio_soft_tokens_per_image} (clips longer than 30 s must be truncated)")
    extra = np.broadcast_to(pad, (soft.shape[0], n_extra, pad.shape[0]))          # [N, S_a - F', D]
    return np.concatenate([soft, extra], axis=1)                                  # [N, S_a, D]


# 4. the merge ----------------------------------------------------------------------------------------------
def merge_embeddings(inputs_embeds, input_ids, token_id: int, features, what: str) -> np.ndarray:
    """Write ``features`` (all rows of all items, in order) into the positions where ``input_ids == token_id``
    (the reference's ``masked_scatter``).   [B, T, D], [B, T], [N, S, D] -> [B, T, D]"""
    ids = np.asarray(input_ids)
    sel = ids == token_id                                                         # [B, T]
    n_tokens, n_rows = int(sel.sum()), features.shape[0] * features.shape[1]
    if n_tokens != n_rows:
        raise InputError(f"{what} features and {what} tokens do not match: the ids hold {n_tokens} {what} soft "
                         f"tokens (id {token_id}) but {features.shape[0]} {what} item(s) give "
                         f"{features.shape[0]} x {features.shape[1]} = {n_rows} rows")
    out = np.array(inputs_embeds)                                                 # [B, T, D]
    out[sel] = features.reshape(-1, features.shape[-1]).astype(out.dtype, copy=False)  # [n, D] in row order
    return out


def embed_inputs(model: MultimodalModel, input_ids, pixel_values=None, input_features=None,
                 input_features_mask=None, trace=None) -> np.ndarray:
    """The merged ``inputs_embeds`` the text decoder reads.   [B, T] -> [B, T, D]"""
    cfg = model.cfg
    ids = decoder.check_input_ids(input_ids, cfg.text)
    x = hard_token_embeddings(model, ids)                                         # [B, T, D]
    if trace is not None:
        trace["model.language_model.embed_tokens"] = np.array(decoder.embed_tokens(model.text, ids[:1])[0])
    if pixel_values is not None:
        feats = image_features(model, pixel_values, trace)                         # [N, S_v, D]
        if not all_finite(feats):    # name the first non-finite tensor of the vision tower / embedder
            raise locate(lambda t: image_features(model, pixel_values, t), "model.embed_vision")
        x = merge_embeddings(x, ids, cfg.image_token_id, feats, "image")
    elif (ids == cfg.image_token_id).any():
        raise InputError(f"the ids hold image soft tokens (id {cfg.image_token_id}) but no pixel_values were given")
    if input_features is not None:
        if input_features_mask is None:
            raise InputError("input_features needs its input_features_mask (True = valid frame)")
        feats = audio_features(model, input_features, input_features_mask, trace)  # [N, S_a, D]
        if not all_finite(feats):
            raise locate(lambda t: audio_features(model, input_features, input_features_mask, t),
                         "model.embed_audio")
        x = merge_embeddings(x, ids, cfg.audio_token_id, feats, "audio")
    elif (ids == cfg.audio_token_id).any():
        raise InputError(f"the ids hold audio soft tokens (id {cfg.audio_token_id}) but no input_features were given")
    return x


def forward(model: MultimodalModel, input_ids, *, pixel_values=None, input_features=None, input_features_mask=None,
            attention_mask=None, cache=None, trace=None, logits_to_keep: int = 0):
    """``Gemma3nForConditionalGeneration.forward``: ids (+ images, audio) -> (logits [B, T, V], cache).

    pixel_values [N_img, 3, H, W]; input_features [N_aud, F, M] with input_features_mask [N_aud, F] (True =
    valid); attention_mask / cache / logits_to_keep as ``decoder.forward``. The PLE token part comes from
    ``input_ids`` (decoder.forward does that when given inputs_embeds)."""
    embeds = embed_inputs(model, input_ids, pixel_values, input_features, input_features_mask, trace)  # [B, T, D]
    return decoder.forward(model.text, input_ids, inputs_embeds=embeds, attention_mask=attention_mask,
                           cache=cache, trace=trace, logits_to_keep=logits_to_keep)


# The generator's entry point -----------------------------------------------------------------------------------
def media_prompt(text_model, *, prompt=None, chat=None, system=None, messages=None, images=(), audio=(),
                 image_backend=None):
    """Prompt + media -> (ids list, inputs_embeds [T, D], expanded prompt text), for ``generate``.

    ``text_model``: the generator's ``decoder.TextModel`` (its checkpoint must be multimodal)."""
    from .processor import Processor, process
    inputs = process(Processor.from_dir(text_model.ckpt.dir, image_backend), prompt=prompt, chat=chat, system=system,
                     messages=messages, images=images, audio=audio)
    model = load_multimodal_model(text_model.ckpt)
    embeds = embed_inputs(model, inputs.input_ids, inputs.pixel_values, inputs.input_features,
                          inputs.input_features_mask)                           # [1, T, D]
    return [int(i) for i in inputs.input_ids[0]], embeds[0], inputs.text
