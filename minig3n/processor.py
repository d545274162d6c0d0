"""The Gemma 3n processor: chat messages (text, images, audio) -> token ids, pixel values, audio features, masks.

The idea: the language model reads one sequence of ids. Every image and every audio clip is represented in it
by a fixed run of placeholder ids that the multimodal forward later overwrites with the towers' outputs
(``multimodal.merge_embeddings``). The processor only has to (1) write the prompt with one placeholder per
media item, (2) expand each placeholder into its full run,
``"\\n\\n" <start_of_image> N x <image_soft_token> <end_of_image> "\\n\\n"`` (N = ``image_seq_length``, 256 in
E2B/E4B) or the same with ``<start_of_audio>`` / ``<audio_soft_token>`` / ``<end_of_audio>`` and
N = ``audio_seq_length`` (188), (3) tokenize, and (4) turn the media themselves into arrays:
``image.preprocess_images`` -> ``pixel_values`` [N_img, 3, H, W] and ``features.extract_features`` (all clips
of the prompt padded together to the longest) -> ``input_features`` [N_aud, F, M] + ``input_features_mask``.
Example (tiny checkpoint, N = 16 per image)::

    [{"role": "user", "content": [{"type": "image", "image": "cat.png"}, {"type": "text", "text": "What?"}]}]
    -> "<bos><start_of_turn>user\\n\\n\\n<start_of_image>" + 16 x "<image_soft_token>" + "<end_of_image>\\n\\nWhat?"
       "<end_of_turn>\\n<start_of_turn>model\\n"  -> ids [2, 6, ..., 1022, 1025 x 16, 1024, ...]

Media parts: ``{"type": "image", "image": X}`` with X a file path, a PIL image or a uint8 array (the keys
``"path"`` / ``"url"`` are read too; only local files); ``{"type": "audio", "audio": X}`` with X a WAV path or
an array of samples, plus ``"sampling_rate"`` for an array (default 16000; other rates are resampled,
``audio_io``). A raw prompt (``process_prompt``) writes the placeholders itself: ``<image_soft_token>`` /
``<audio_soft_token>``, one per item, in the order the items are given; the counts must match.

The audio rule (transformers docs, ``model_doc/gemma3n.md``: "Gemma 3n accept[s] at most one target audio clip
per input, though multiple audio clips can be provided in few-shot prompts"): the *target* clip is the audio of
the last user turn, the one the model answers; that turn may hold at most one clip. Earlier user turns
(few-shot examples, each already answered) may hold clips too. A raw prompt counts as one turn, unless it
writes its own turns: then the clips after its last ``<start_of_turn>user`` are the target. The reference
processor itself does not check this (it would process any number); minig3n raises an ``InputError``.

``token_type_ids`` (the reference's ``mm_token_type_ids``): 1 at image soft tokens, 3 at audio soft tokens,
0 elsewhere; the model does not read them.

Source: transformers 5.24 ``Gemma3nProcessor`` (``processing_gemma3n.py``), ``ProcessorMixin.__call__`` /
``apply_chat_template`` (``processing_utils.py``); the chat format is ``chat.py``'s.
Left out: batches of several conversations (one prompt at a time), URLs, video, padding/truncation of ids,
the reference's default torchvision image backend (minig3n follows its PIL backend; see ``image.py``).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import chat
from .chat import check_prompt_choice
from .errors import ConfigError, InputError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")     # http://, https://, file://, s3:// ...
IMAGE_TYPE_ID, AUDIO_TYPE_ID = 1, 3     # token_type_ids values (the reference's mm token types)


@dataclass
class ProcessorConfig:
    """``processor_config.json`` (soft tokens per item) + ``preprocessor_config.json`` (image settings)."""

    image_seq_length: int = 256
    audio_seq_length: int = 188
    image: object = None                # image.ImageConfig

    @classmethod
    def from_dir(cls, model_dir, image_backend=None) -> "ProcessorConfig":
        """``image_backend``: "torchvision" (the reference's default) or "pil"; None = torchvision."""
        from dataclasses import replace

        from .image import load_image_config
        d = Path(model_dir)
        counts = {}
        for name in ("processor_config.json", "preprocessor_config.json"):
            f = d / name
            if f.is_file():
                try:
                    j = json.loads(f.read_text())
                except ValueError as e:
                    raise ConfigError(f"{f}: not valid JSON ({e})") from None
                for key in ("image_seq_length", "audio_seq_length"):
                    if key in j and key not in counts:
                        counts[key] = j[key]
        for key, v in counts.items():
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{d}: '{key}' must be a positive integer, got {v!r}")
        image = load_image_config(d)
        if image_backend is not None:
            image = replace(image, backend=image_backend)
            image.validate()
        return cls(**counts, image=image)


@dataclass
class ModelInputs:
    """What the multimodal forward reads (batch of one prompt)."""

    input_ids: np.ndarray                       # [1, T] int64
    attention_mask: np.ndarray                  # [1, T] int64, all ones
    token_type_ids: np.ndarray                  # [1, T] int64: 1 image soft token, 3 audio soft token, else 0
    pixel_values: np.ndarray | None = None      # [N_img, 3, H, W] float32
    input_features: np.ndarray | None = None    # [N_aud, F, M] float32
    input_features_mask: np.ndarray | None = None   # [N_aud, F] bool, True = valid frame
    text: str = ""                              # the expanded prompt


class Processor:
    """Tokenizer + processor settings of a checkpoint directory. ``Processor.from_dir(d)``."""

    def __init__(self, tokenizer, config: ProcessorConfig):
        self.tokenizer, self.config = tokenizer, config

    @classmethod
    def from_dir(cls, model_dir, image_backend=None) -> "Processor":
        """``image_backend``: which reference image backend to reproduce, "torchvision" (its default, and
        minig3n's) or "pil" (``AutoProcessor.from_pretrained(d, backend="pil")``)."""
        from .tokenizer import Tokenizer
        return cls(Tokenizer.from_dir(model_dir), ProcessorConfig.from_dir(model_dir, image_backend))

    # public entry points ------------------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> ModelInputs:
        """Chat messages (content parts may be images / audio) -> model inputs, as the reference's
        ``processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)``."""
        images, audio = media_of_messages(messages)
        check_target_audio_messages(messages)
        prompt = chat.render_chat(messages, add_generation_prompt)
        return self._inputs(prompt, images, audio, add_bos=False)

    def process_prompt(self, text: str, images=(), audio=()) -> ModelInputs:
        """A raw prompt holding one placeholder per item (``<image_soft_token>``, ``<audio_soft_token>``) ->
        model inputs; ``<bos>`` is added (the reference's ``processor(text=..., images=..., audio=...)``).
        ``audio`` items: a path, an array (16 kHz), or a pair ``(array, sampling_rate)``."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("prompt (--prompt) must be a non-empty string")
        images = list(images or ())
        audio = [{"audio": a[0], "sampling_rate": a[1]} if isinstance(a, tuple) else {"audio": a}
                 for a in (audio or ())]
        check_placeholder_counts(text, len(images), len(audio))
        last_user = text.rfind(chat.START_OF_TURN + "user")
        n_target = text[max(last_user, 0):].count(chat.AUDIO_PLACEHOLDER)
        if n_target > 1:
            raise InputError(f"more than one target audio clip: the prompt's last turn holds {n_target} "
                             f"{chat.AUDIO_PLACEHOLDER} placeholders; Gemma 3n accepts at most one target clip "
                             "(earlier clips belong in few-shot turns written before it)")
        return self._inputs(text, images, audio, add_bos=True)

    # the work ------------------------------------------------------------------------------------------------
    def _inputs(self, prompt: str, images: list, audio: list, add_bos: bool) -> ModelInputs:
        cfg = self.config
        expanded = chat.expand_media_placeholders(prompt, cfg.image_seq_length, cfg.audio_seq_length)
        ids = np.asarray([self.tokenizer.encode(expanded, add_bos=add_bos)], dtype=np.int64)     # [1, T]
        types = np.zeros_like(ids)                                                               # [1, T]
        types[ids == self.tokenizer.image_token_id] = IMAGE_TYPE_ID
        types[ids == self.tokenizer.audio_token_id] = AUDIO_TYPE_ID
        out = ModelInputs(ids, np.ones_like(ids), types, text=expanded)
        if images:
            out.pixel_values = load_images(images, cfg.image)                                   # [N, 3, H, W]
        if audio:
            out.input_features, out.input_features_mask = load_audio_features(audio)            # [N, F, M], [N, F]
        return out


# Media ----------------------------------------------------------------------------------------------------------
def _source(part: dict, keys: tuple):
    for k in keys:
        if k in part and part[k] is not None:
            return part[k]
    return None


def media_of_messages(messages) -> tuple[list, list]:
    """(image sources, audio dicts) in conversation order. Each media part must carry its data."""
    images, audio = [], []
    if not isinstance(messages, (list, tuple)):
        raise InputError("messages must be a list of {'role': ..., 'content': ...} dicts")
    for k, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, (list, tuple)):
            continue
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                src = _source(part, ("image", "path", "url"))
                if src is None:
                    raise InputError(f"message {k}: an image part needs its image under 'image' (a path, a PIL "
                                     f"image or an array), got {sorted(part)}")
                images.append(src)
            elif kind == "audio":
                src = _source(part, ("audio", "path", "url"))
                if src is None:
                    raise InputError(f"message {k}: an audio part needs its audio under 'audio' (a WAV path or "
                                     f"an array of samples), got {sorted(part)}")
                audio.append({"audio": src, "sampling_rate": part.get("sampling_rate")})
    return images, audio


def check_target_audio_messages(messages) -> None:
    """At most one audio clip in the last user turn (the target); earlier turns are few-shot examples."""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), (list, tuple)):
        return
    n = sum(1 for p in users[-1]["content"] if isinstance(p, dict) and p.get("type") == "audio")
    if n > 1:
        raise InputError(f"more than one target audio clip: the last user turn holds {n} audio parts; Gemma 3n "
                         "accepts at most one target clip per prompt (few-shot clips go in earlier user turns, "
                         "each followed by the assistant's answer)")


def check_placeholder_counts(text: str, n_images: int, n_audio: int) -> None:
    """The raw prompt must hold exactly one placeholder per image and per audio clip."""
    for what, ph, n in (("image", chat.IMAGE_PLACEHOLDER, n_images), ("audio", chat.AUDIO_PLACEHOLDER, n_audio)):
        found = text.count(ph)
        if found != n:
            raise InputError(f"the prompt holds {found} {ph} placeholder(s) but {n} {what} item(s) were given "
                             f"(--{what}); write one {ph} where each {what} goes")
    for ph, run in ((chat.IMAGE_PLACEHOLDER, chat.BOI), (chat.AUDIO_PLACEHOLDER, chat.BOA)):
        if run in text:
            raise InputError(f"the prompt contains {run}: write only the placeholder {ph}; the processor adds "
                             f"{run}, the soft-token run and its end token")


def load_images(sources, image_config=None) -> np.ndarray:
    """Paths / PIL images / uint8 arrays -> pixel_values [N, 3, H, W] float32 (``image.preprocess_images``)."""
    from .image import preprocess_images
    for s in sources:
        if isinstance(s, str) and _URL.match(s):
            raise InputError(f"image {s!r}: URLs are not read, give a local file path")
    return preprocess_images(list(sources), image_config)


def load_audio_features(items) -> tuple[np.ndarray, np.ndarray]:
    """Audio dicts ({"audio": path | array, "sampling_rate": int | None}) -> (input_features [N, F, M],
    input_features_mask [N, F] True = valid), all clips padded together (``features.extract_features``)."""
    from .audio_io import load_audio
    from .features import extract_features
    waves = []
    for it in items:
        src, rate = it["audio"], it.get("sampling_rate")
        if isinstance(src, str) and _URL.match(src):
            raise InputError(f"audio {src!r}: URLs are not read, give a local WAV file path")
        if isinstance(src, (str, os.PathLike)) and rate is not None:
            raise InputError(f"audio {os.fspath(src)}: 'sampling_rate' is only for arrays (a WAV file has its own)")
        waves.append(load_audio(src, rate))                                                     # [A] 16 kHz
    feats, mask = extract_features(waves)                                                        # [N, F, M], [N, F]
    if feats.shape[1] == 0:
        raise InputError("audio is too short: it gave no mel frames (at least 513 samples, 32 ms at 16 kHz)")
    return feats, mask


# Helpers for the command line and the generator ---------------------------------------------------------------
def messages_have_media(messages) -> bool:
    """True if any message's content holds an image or audio part."""
    if not isinstance(messages, (list, tuple)):
        return False
    return any(isinstance(p, dict) and p.get("type") in ("image", "audio")
               for m in messages if isinstance(m, dict) and isinstance(m.get("content"), (list, tuple))
               for p in m["content"])


def chat_with_media(user_text: str, system: str | None = None, images=(), audio=()) -> list[dict]:
    """The messages of ``--chat TEXT [--system S] --image A --image B --audio C``: one user turn holding the
    images, then the audio, then the text (the order of the official examples: media before the question)."""
    if not isinstance(user_text, str) or not user_text.strip():
        raise InputError("chat (--chat) must be a non-empty string")
    parts = [{"type": "image", "image": im} for im in images]
    for a in audio:
        parts.append({"type": "audio", "audio": a[0], "sampling_rate": a[1]} if isinstance(a, tuple)
                     else {"type": "audio", "audio": a})
    parts.append({"type": "text", "text": user_text})
    msgs = [{"role": "system", "content": system}] if system is not None else []
    return msgs + [{"role": "user", "content": parts}]


def process(processor: Processor, *, prompt=None, chat=None, system=None, messages=None, images=(),
            audio=()) -> ModelInputs:
    """One of ``prompt`` (raw text with placeholders) / ``chat`` (+ ``system``; media attached to the user turn) /
    ``messages`` (media inside their parts; ``images``/``audio`` must then be empty) -> model inputs."""
    check_prompt_choice(prompt, chat, messages, system)
    images, audio = list(images or ()), list(audio or ())
    if prompt is not None:
        return processor.process_prompt(prompt, images, audio)
    if chat is not None:
        return processor.apply_chat_template(chat_with_media(chat, system, images, audio))
    if images or audio:
        raise InputError("with messages, put images and audio inside the messages' content parts")
    return processor.apply_chat_template(messages)
