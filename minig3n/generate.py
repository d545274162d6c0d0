"""Text generation: prompt -> token ids -> prefill -> decode loop -> streamed text. Also ``minig3n generate``.

The idea, in two named phases (as in llama3.np's ``generate``):

* **prefill**: one forward pass over the whole prompt fills a fresh ``KVCache`` and gives the logits of the
  last position, from which the first new token is chosen;
* **decode**: each new token is fed alone, with the cache returned by the previous call, until a stop token
  (``<eos>``, ``<end_of_turn>`` or any of the config's ``eos_token_id``) or ``max_new_tokens``.

Tokens are chosen by ``sampling.sample_next`` (greedy when temperature is 0). Text is streamed as it is made:
``StreamDecoder`` decodes the growing sequence and hands out only the part that can no longer change. The text
of a trailing run of byte-fallback pieces (``<0xE6>`` ``<0x97>`` ... of a multi-byte character) is held back
until the run ends, so a character split over several tokens is printed once, whole. Gemma's vocabulary has no
dummy prefix, so the space marker ``▁`` is simply a space wherever it appears (also on the first new token).
The concatenated stream equals ``tokenizer.decode`` of the new tokens (stop token excluded).

Python API: ``generate(model_dir, prompt, ...)`` yields ``(token_id, text_piece)``, the stop token included
(with piece ""), like the reference's ``generate`` output which ends with the eos id.

Source: transformers 5.24 ``GenerationMixin.generate`` / ``_sample`` (greedy when ``do_sample=False``).
Left out: batching, beam search, speculative decoding, stop strings.
Extension point: ``Prompt.inputs_embeds`` (the multimodal merge for ``--image`` / ``--audio``) is passed to
the prefill; ``build_prompt`` is where images and audio enter (``multimodal.media_prompt``).
"""
from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .chat import chat_messages, check_prompt_choice, encode_chat, render_chat
from .default_model import default_model_dir   # --model's default: see minig3n/default_model.py
from .errors import CheckpointError, InputError
from .sampling import SamplingParams, sample_next
from .tokenizer import Tokenizer, check_tokenizer

DTYPES = {"float32": np.float32, "float64": np.float64}


# Streaming -----------------------------------------------------------------------------------------------
class StreamDecoder:
    """Turns token ids into text pieces as they arrive; the pieces concatenate to ``tokenizer.decode(ids)``.

    Decoding is concatenative at every token that is not a byte piece, so text before the trailing run of
    byte pieces is final; that run is decoded once it ends (or at ``flush``)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.pending: list[int] = []    # ids not yet turned into text: a trailing run of byte pieces

    def push(self, token_id: int) -> str:
        """Add one id; return the text that became final."""
        if self.tok.is_byte(token_id):
            self.pending.append(int(token_id))
            return ""
        text = self.tok.decode(self.pending + [int(token_id)])
        self.pending = []
        return text

    def flush(self) -> str:
        """The text of a trailing byte run (invalid UTF-8 becomes U+FFFD, as in ``decode``)."""
        text, self.pending = self.tok.decode(self.pending), []
        return text


# Prompt --------------------------------------------------------------------------------------------------
@dataclass
class Prompt:
    ids: list[int]
    inputs_embeds: np.ndarray | None = None     # [T, D]: the multimodal merge, when images / audio are given
    text: str = ""                              # the rendered prompt (chat template applied), for display


def build_prompt(tokenizer: Tokenizer, prompt: str | None = None, *, chat: str | None = None,
                 system: str | None = None, messages=None, images=(), audio=(), model=None,
                 image_backend=None) -> Prompt:
    """Token ids for a raw ``prompt`` (``<bos>`` + text), or a chat (``chat`` [+ ``system``] or ``messages``,
    rendered with the Gemma 3n template). Exactly one of prompt / chat / messages.
    With ``images`` / ``audio`` (or media parts in ``messages``) the prompt goes through the multimodal processor
    and towers (``multimodal.media_prompt``; needs ``model``, the loaded ``decoder.TextModel``)."""
    check_prompt_choice(prompt, chat, messages, system)
    from .processor import messages_have_media
    placeholders = isinstance(prompt, str) and ("<image_soft_token>" in prompt or "<audio_soft_token>" in prompt)
    if images or audio or messages_have_media(messages) or placeholders:   # placeholders: counts are checked
        from .multimodal import media_prompt
        if model is None:
            raise InputError("image / audio input needs the loaded model (build_prompt(..., model=...))")
        ids, embeds, text = media_prompt(model, prompt=prompt, chat=chat, system=system, messages=messages,
                                         images=images, audio=audio, image_backend=image_backend)
        return Prompt(ids, embeds, text)
    for name, text in (("prompt (--prompt)", prompt), ("chat (--chat)", chat)):
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise InputError(f"{name} must be a non-empty string")
    if prompt is not None:
        return Prompt(tokenizer.encode(prompt, add_bos=True), text=prompt)
    msgs = messages if messages is not None else chat_messages(chat, system)
    text = render_chat(msgs, add_generation_prompt=True)
    return Prompt(encode_chat(tokenizer, msgs), text=text)


def check_max_new_tokens(max_new_tokens, prompt_len: int = 0, max_positions: int | None = None) -> int:
    """max_new_tokens must be an integer >= 1 and fit, with the prompt, into max_position_embeddings."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens (--max-new-tokens) must be an integer >= 1, got {max_new_tokens!r}")
    if max_positions is not None and prompt_len >= max_positions:
        raise InputError(f"the prompt is too long: {prompt_len} tokens, and the model holds "
                         f"max_position_embeddings={max_positions} positions in all, which leaves no room for a "
                         "new token; shorten the prompt")
    if max_positions is not None and prompt_len + max_new_tokens > max_positions:
        raise InputError(f"max_new_tokens (--max-new-tokens) too large: {prompt_len} prompt tokens + "
                         f"{max_new_tokens} new tokens exceed max_position_embeddings={max_positions}; at most "
                         f"{max_positions - prompt_len} new tokens fit after this prompt")
    return int(max_new_tokens)


# Loading -------------------------------------------------------------------------------------------------
class _Notice:
    """Print ``message`` to stderr if the block takes more than ``after`` seconds, then the time it took."""

    def __init__(self, message: str, stream=None, after: float = 1.0):
        self.message, self.stream, self.after, self.shown = message, stream, after, False

    def _show(self):
        self.shown = True
        print(f"minig3n generate: {self.message} ...", file=self.stream, flush=True)

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.timer = threading.Timer(self.after, self._show) if self.stream is not None else None
        if self.timer:
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc):
        if self.timer:
            self.timer.cancel()
        if self.shown and exc[0] is None:
            print(f"minig3n generate: {self.message} done in {time.perf_counter() - self.t0:.1f} s",
                  file=self.stream, flush=True)


@dataclass
class Generator:
    """A loaded model and tokenizer (load once, generate many times)."""

    model: object                   # decoder.TextModel
    tokenizer: Tokenizer
    stop_ids: frozenset = field(default_factory=frozenset)

    def hard_token_embeds(self, ids: np.ndarray):
        """``inputs_embeds`` for ids that include multimodal token ids, else None.   [B, T] -> [B, T, D] | None

        In a multimodal checkpoint the ids at and above ``vision_config.vocab_offset`` (``<end_of_image>``,
        ``<image_soft_token>``, ... ``<audio_soft_token>``) are not looked up in ``embed_tokens``: the reference
        (``Gemma3nModel.forward``, input_ids path) replaces them by the hard path of ``embed_vision`` (ids in
        [vision offset, audio offset)) or ``embed_audio`` (ids >= audio offset). A random model may generate
        such ids, so the generator applies the same rule to prompt and generated tokens."""
        cfg = self.model.ckpt.config
        if not cfg.is_multimodal or not (ids >= cfg.vision.vocab_offset).any():
            return None
        from .multimodal import MultimodalModel, hard_token_embeddings
        return hard_token_embeddings(MultimodalModel(self.model, self.model.ckpt), ids)  # [B, T, D]

    @classmethod
    def from_pretrained(cls, model_dir=None, dtype="float32", progress=None) -> "Generator":
        """Load model and tokenizer from ``model_dir`` (default: ``default_model_dir()``); ``dtype`` "float32"
        or "float64" (or the NumPy dtype)."""
        return cls.load(model_dir, dtype if isinstance(dtype, str) else np.dtype(dtype).name, progress)

    @classmethod
    def load(cls, model_dir=None, dtype="float32", progress=None) -> "Generator":
        from . import decoder
        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        if dtype not in DTYPES:
            raise InputError(f"dtype (--dtype) must be one of {sorted(DTYPES)}, got {dtype!r}")
        with _Notice(f"loading {model_dir}", progress):
            if not model_dir.is_dir():
                raise CheckpointError(f"{model_dir}: checkpoint directory not found")
            tokenizer = Tokenizer.from_dir(model_dir)
            from .config import Gemma3nConfig
            check_tokenizer(tokenizer, Gemma3nConfig.from_file(model_dir / "config.json").text)  # before the weights
            model = decoder.load_text_model(model_dir, DTYPES[dtype])
        cfg = model.cfg
        stop = set(cfg.eos_token_ids) | {i for i in (tokenizer.eos_id, tokenizer.end_of_turn_id) if i is not None}
        return cls(model, tokenizer, frozenset(stop))

    def generate(self, prompt: Prompt, max_new_tokens: int = 64, params: SamplingParams = SamplingParams(),
                 stats: dict | None = None, progress=None):
        """Yield ``(token_id, text_piece)`` for each new token; the stop token (if reached) comes last with ""."""
        from . import decoder
        from .kv_cache import KVCache
        cfg = self.model.cfg
        params.validate()
        if not prompt.ids:
            raise InputError("prompt (--prompt) must not be empty")
        max_new_tokens = check_max_new_tokens(max_new_tokens, len(prompt.ids), cfg.max_position_embeddings)
        rng = np.random.default_rng(params.seed)
        stream = StreamDecoder(self.tokenizer)
        ids = np.asarray([prompt.ids], dtype=np.int64)                              # [1, T]
        embeds = (self.hard_token_embeds(ids) if prompt.inputs_embeds is None
                  else np.asarray(prompt.inputs_embeds)[None])                        # [1, T, D] | None
        st = stats if stats is not None else {}
        st.update(prompt_ids=[int(i) for i in prompt.ids], prompt_tokens=len(prompt.ids), new_tokens=0,
                  prefill_seconds=0.0, decode_seconds=0.0,
                  decode_steps=0)

        # prefill: the whole prompt in one call
        t0 = time.perf_counter()
        with _Notice(f"prefill of {len(prompt.ids)} tokens", progress):
            logits, cache = decoder.forward(self.model, ids, inputs_embeds=embeds,
                                            cache=KVCache.empty(cfg, 1, self.model.dtype), logits_to_keep=1)
        token = sample_next(logits[0, -1], params, rng)
        st["prefill_seconds"] = time.perf_counter() - t0

        # decode: one token per call, reusing the cache
        for step in range(max_new_tokens):
            st["new_tokens"] = step + 1
            if token in self.stop_ids:
                yield token, stream.flush()       # the stop token has no text; flush a pending byte run
                return
            piece = stream.push(token)
            if step == max_new_tokens - 1:
                piece += stream.flush()
                yield token, piece
                return
            yield token, piece
            t0 = time.perf_counter()
            step_ids = np.asarray([[token]], dtype=np.int64)                            # [1, 1]
            logits, cache = decoder.forward(self.model, step_ids, inputs_embeds=self.hard_token_embeds(step_ids),
                                            cache=cache, logits_to_keep=1)              # [1, 1, V]
            token = sample_next(logits[0, -1], params, rng)
            st["decode_seconds"] += time.perf_counter() - t0
            st["decode_steps"] += 1


def generate(model_dir=None, prompt: str | None = None, *, chat: str | None = None, system: str | None = None,
             messages=None, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             seed: int | None = None, dtype: str = "float32", stats: dict | None = None, progress=None,
             images=(), audio=(), image_backend=None):
    """Generate from a checkpoint directory (default: ``default_model_dir()``); yields ``(token_id, text_piece)``.

    ``prompt`` is raw text (``<bos>`` is added); ``chat`` (+ optional ``system``) or ``messages`` go through the
    Gemma 3n chat template. ``stats`` (a dict) receives prompt_tokens, new_tokens, prefill/decode seconds.
    A generator: nothing runs until the first item is asked for. Then the arguments are checked before the model
    is loaded; bad values raise ``InputError`` naming the argument (and its command-line flag)."""
    params = SamplingParams(temperature, top_k, top_p, seed).validate()
    check_max_new_tokens(max_new_tokens)
    if prompt is not None and isinstance(prompt, str) and not prompt.strip():
        raise InputError("prompt (--prompt) must be a non-empty string")
    gen = Generator.load(model_dir, dtype, progress)
    built = build_prompt(gen.tokenizer, prompt, chat=chat, system=system, messages=messages, images=images,
                         audio=audio, model=gen.model, image_backend=image_backend)
    yield from gen.generate(built, max_new_tokens, params, stats, progress)


# Command line --------------------------------------------------------------------------------------------
def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="checkpoint directory (default: nano-gemma3n, else tiny-random-gemma3n, from "
                             "$MINIG3N_MODEL, the checkout's weights/ or <prefix>/share/minig3n/weights)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", metavar="TEXT", help="raw prompt: <bos> + TEXT, continued as is")
    what.add_argument("--chat", metavar="TEXT", help="a user message, wrapped in the Gemma 3n chat template")
    parser.add_argument("--system", metavar="TEXT", help="system prompt (with --chat)")
    parser.add_argument("--image", metavar="PATH", action="append", default=[],
                        help="an image file (repeatable); with --prompt, write one <image_soft_token> where each "
                             "goes; with --chat, the images are attached to the user turn")
    parser.add_argument("--audio", metavar="PATH", action="append", default=[],
                        help="a WAV file; with --prompt, write <audio_soft_token> where it goes; at most one "
                             "target clip (more only as few-shot clips in earlier turns of a --prompt)")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="at most N new tokens (64)")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T",
                        help="sampling temperature; 0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely tokens (0 = off)")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="P",
                        help="nucleus sampling: keep the most likely tokens up to total probability P (1 = off)")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="random seed for sampling")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="working precision")
    parser.add_argument("--image-backend", choices=["torchvision", "pil"], default=None,
                        help="which reference image preprocessing to reproduce: torchvision (the reference's "
                             "default, and minig3n's) or pil (AutoProcessor(..., backend='pil'))")
    parser.add_argument("--json", action="store_true",
                        help="instead of streaming text, print one JSON object: prompt_ids, ids (the new token ids, "
                             "the stop token included if reached), text, stats (e.g. greedy ids to compare a port)")


def run_generate(args) -> int:
    stats: dict = {}
    out = sys.stdout
    tokens = generate(args.model, args.prompt, chat=args.chat, system=args.system,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, seed=args.seed, dtype=args.dtype, stats=stats, progress=sys.stderr,
                      images=args.image, audio=args.audio, image_backend=args.image_backend)
    if args.json:      # greedy ids as data (e.g. to compare a port's decoding)
        import json
        new, text = [], []
        for token, piece in tokens:
            new.append(int(token))
            text.append(piece)
        doc = {"prompt_ids": stats.pop("prompt_ids"), "ids": new, "text": "".join(text), "stats": stats}
        print(json.dumps(doc), file=out, flush=True)
        return 0
    for _, piece in tokens:
        if piece:
            out.write(piece)
            out.flush()
    out.write("\n")
    out.flush()
    stats.pop("prompt_ids", None)
    print(format_stats(stats), file=sys.stderr)
    return 0


def format_stats(st: dict) -> str:
    prefill = st["prompt_tokens"] / st["prefill_seconds"] if st.get("prefill_seconds") else math.inf
    decode = st["decode_steps"] / st["decode_seconds"] if st.get("decode_seconds") else 0.0
    return (f"prompt tokens: {st['prompt_tokens']}, new tokens: {st['new_tokens']}, "
            f"prefill: {prefill:.1f} tokens/s, decode: {decode:.1f} tokens/s")
