"""The seam between the multimodal tests and minig3n (processor, merge, multimodal forward, generation).
A student's implementation is graded by pointing these functions at it. Arrays are NumPy; ``inputs`` is a dict
with ``input_ids`` [1, T], ``pixel_values``, ``input_features``, ``input_features_mask`` (any may be None)."""
from __future__ import annotations

import numpy as np

from tests.adapters._impl import impl   # MINIG3N_STUDENT switch (tests/adapters/_impl.py)


def _pil(fn, **kw):
    """The multimodal goldens were made with the reference's PIL image backend: pass image_backend="pil" to
    minig3n (whose default is the torchvision backend); a student's function without that argument is called as
    is."""
    import inspect
    try:
        takes = "image_backend" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes = False
    return {**kw, "image_backend": "pil"} if takes else kw


def run_process_messages(model_dir, messages) -> dict:
    """Chat messages with image / audio parts -> {input_ids, attention_mask, token_type_ids, pixel_values,
    input_features, input_features_mask} (the reference processor's ``apply_chat_template`` keys)."""
    Processor = impl("processor").Processor
    out = Processor.from_dir(model_dir, **_pil(Processor.from_dir)).apply_chat_template(messages)
    return {k: getattr(out, k) for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values",
                                         "input_features", "input_features_mask")}


def run_process_prompt(model_dir, text, images=(), audio=()) -> dict:
    """A raw prompt with placeholders (+ media) -> the same dict (``<bos>`` added)."""
    Processor = impl("processor").Processor
    out = Processor.from_dir(model_dir, **_pil(Processor.from_dir)).process_prompt(text, images, audio)
    return {k: getattr(out, k) for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values",
                                         "input_features", "input_features_mask")}


def load_model(model_dir, dtype=np.float32):
    load_multimodal_model = impl("multimodal").load_multimodal_model
    return load_multimodal_model(model_dir, dtype)


def run_forward(model, inputs: dict, trace=None) -> np.ndarray:
    """Logits [1, T, V] of ``Gemma3nForConditionalGeneration`` for the processed inputs."""
    forward = impl("multimodal").forward
    logits, _ = forward(model, inputs["input_ids"], pixel_values=inputs.get("pixel_values"),
                        input_features=inputs.get("input_features"),
                        input_features_mask=inputs.get("input_features_mask"), trace=trace)
    return logits


def run_text_forward(model, input_ids) -> np.ndarray:
    """Logits of the text decoder alone (``decoder.forward`` on ids, no merge)."""
    forward = impl("decoder").forward
    return forward(model.text, input_ids)[0]


def run_merge(inputs_embeds, input_ids, token_id, features) -> np.ndarray:
    """Write ``features`` [N, S, D] into the positions of ``token_id`` in row order.   -> [B, T, D]"""
    merge_embeddings = impl("multimodal").merge_embeddings
    return merge_embeddings(inputs_embeds, input_ids, token_id, features, "test")


def run_audio_features(model, input_features, input_features_mask) -> np.ndarray:
    """Audio soft tokens, invalid frames replaced and padded: [N, audio_soft_tokens_per_image, D]."""
    audio_features = impl("multimodal").audio_features
    return audio_features(model, input_features, input_features_mask)


def run_audio_padding_embedding(model) -> np.ndarray:
    audio_padding_embedding = impl("multimodal").audio_padding_embedding
    return audio_padding_embedding(model)


def run_hard_token_embeddings(model, input_ids) -> np.ndarray:
    hard_token_embeddings = impl("multimodal").hard_token_embeddings
    return hard_token_embeddings(model, input_ids)


def run_generate(model_dir, messages, max_new_tokens: int, dtype: str = "float32") -> list[int]:
    """Greedy new tokens (the stop token included if reached) for chat messages with media parts."""
    generate = impl("generate").generate
    return [t for t, _ in generate(model_dir, messages=messages, max_new_tokens=max_new_tokens, dtype=dtype,
                                   **_pil(generate))]


def run_cli(argv) -> int:
    """``minig3n ARGV`` in-process; returns the exit code."""
    main = impl("cli").main
    return main(list(argv))
