"""The seam between the generation tests and minig3n (tokenizer, chat template, sampling, streaming, greedy
decoding). A student's implementation is graded by pointing these functions at it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.adapters._impl import impl   # minig3n's module, or a student's re-implementation (MINIG3N_STUDENT)


def load_tokenizer(model_dir):
    return impl("tokenizer").Tokenizer.from_dir(model_dir)


def run_encode(tokenizer, text: str, add_bos: bool = True) -> list[int]:
    return list(tokenizer.encode(text, add_bos=add_bos))


def run_decode(tokenizer, ids, skip_special_tokens: bool = False) -> str:
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def special_ids(tokenizer) -> dict:
    names = ("pad_id", "eos_id", "bos_id", "unk_id", "start_of_turn_id", "end_of_turn_id", "boi_id", "eoi_id",
             "image_token_id", "boa_id", "eoa_id", "audio_token_id")
    return {n: getattr(tokenizer, n) for n in names}


def run_render_chat(messages, add_generation_prompt: bool = True) -> str:
    return impl("chat").render_chat(messages, add_generation_prompt)


def run_encode_chat(tokenizer, messages) -> list[int]:
    return list(impl("chat").encode_chat(tokenizer, messages))


def run_expand_media(prompt: str, image_tokens: int, audio_tokens: int) -> str:
    return impl("chat").expand_media_placeholders(prompt, image_tokens, audio_tokens)


def run_sample_next(logits, temperature=0.0, top_k=0, top_p=1.0, seed=None, rng=None) -> int:
    sampling = impl("sampling")
    SamplingParams = sampling.SamplingParams
    return sampling.sample_next(np.asarray(logits), SamplingParams(temperature, top_k, top_p, seed).validate(), rng)


def run_probabilities(logits, temperature=1.0, top_k=0, top_p=1.0) -> np.ndarray:
    sampling = impl("sampling")
    SamplingParams = sampling.SamplingParams
    return sampling.probabilities(np.asarray(logits), SamplingParams(temperature, top_k, top_p).validate())


def new_rng(seed: int):
    return np.random.default_rng(seed)


def run_stream(tokenizer, ids) -> list[str]:
    """Text pieces a streaming decoder prints for ``ids`` arriving one by one (then flushed)."""
    s = impl("generate").StreamDecoder(tokenizer)
    return [s.push(i) for i in ids] + [s.flush()]


def run_generate_ids(model_dir, prompt_ids, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, seed=None,
                     dtype="float32") -> list[tuple[int, str]]:
    """(token, text piece) pairs generated after ``prompt_ids`` (the stop token, if reached, included)."""
    generate = impl("generate")
    Generator, Prompt = generate.Generator, generate.Prompt
    SamplingParams = impl("sampling").SamplingParams
    gen = Generator.load(Path(model_dir), dtype)
    return list(gen.generate(Prompt(list(prompt_ids)), max_new_tokens,
                             SamplingParams(temperature, top_k, top_p, seed)))


def run_generate(model_dir, prompt=None, **kwargs) -> list[tuple[int, str]]:
    return list(impl("generate").generate(model_dir, prompt, **kwargs))


def run_cli(argv) -> int:
    from minig3n.cli import main
    return main(list(argv))
