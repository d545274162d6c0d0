"""Golden fixtures for the generation chapter (tokenizer, chat template, greedy decoding), from the reference.

    python -m tests.make_goldens generation

Writes
* ``generation_tokenizer``: for each string of ``generation_cases.TOKENIZER_STRINGS`` the reference tokenizer's
  ids (``AutoTokenizer`` on weights/tiny-random-gemma3n, bos added) and its decode of them (with and without
  skip_special_tokens); decodes of byte-piece runs (valid, incomplete, invalid UTF-8). All in ``meta``.
* ``generation_chat``: for each conversation of ``CONVERSATIONS`` the reference processor's
  ``apply_chat_template(..., add_generation_prompt=True)`` string and ids.
* ``generation_greedy``: greedy tokens of the reference's ``generate(do_sample=False)`` (float32): 64 new
  tokens for ``GENERATION_PROMPTS`` on the tiny checkpoint, and for a second, text-only config
  (``second_model()``: 8 layers, sliding window 6, irregular layer types, KV sharing with consumers of both
  types) whose weights are stored in the fixture (``w.*``, float32) with a prompt longer than its window.
"""
from __future__ import annotations

import json

import numpy as np

from tests.golden_io import save_golden
from tests.reference.generation_cases import (CONVERSATIONS, DECODE_BYTE_RUNS, GENERATION_PROMPTS,
                                              TOKENIZER_STRINGS)
from tests.reference.make_tiny_checkpoint import OUT as TINY, randomize_with_margins
from tests.reference.versions import stamp

MAX_NEW = 64
SECOND_SEED = 424242
SECOND_PROMPT_LEN = 24          # > sliding window 6
SECOND_TEXT = dict(
    vocab_size=1280, vocab_size_per_layer_input=1024, hidden_size=32, hidden_size_per_layer_input=8,
    intermediate_size=[64, 48, 96, 64, 80, 48, 64, 72], num_hidden_layers=8, num_attention_heads=2,
    num_key_value_heads=1, head_dim=16, sliding_window=6,
    layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                 "full_attention", "sliding_attention", "full_attention", "sliding_attention"],
    num_kv_shared_layers=3, activation_sparsity_pattern=[0.95, 0.95] + [0.0] * 6, laurel_rank=4,
    altup_num_inputs=4, final_logit_softcapping=30.0, max_position_embeddings=128,
    pad_token_id=0, eos_token_id=[1, 7], bos_token_id=2,
)


def reference_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(TINY)


def reference_processor():
    from transformers import AutoProcessor
    return AutoProcessor.from_pretrained(TINY)


def tiny_model():
    import torch
    from tests.reference.timm_custom import register
    register()
    from transformers import Gemma3nForConditionalGeneration
    return Gemma3nForConditionalGeneration.from_pretrained(TINY, dtype=torch.float32).eval()


def second_model():
    """A text-only Gemma3nForCausalLM, seeded; every 1-D weight uniform(0.5, 1.5), AltUp coefs normal(0, 0.2),
    embeddings normal(0, 0.25), so greedy choices have clear margins."""
    import torch
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig
    torch.manual_seed(SECOND_SEED)
    model = Gemma3nForCausalLM(Gemma3nTextConfig(**SECOND_TEXT)).eval()
    randomize_with_margins(model, SECOND_SEED + 1)
    return model


def second_prompt() -> list[int]:
    """bos + 23 fixed ordinary text ids (no stop ids)."""
    rng = np.random.RandomState(SECOND_SEED)
    return [2] + [int(i) for i in rng.randint(300, 1000, size=SECOND_PROMPT_LEN - 1)]


def greedy(model, ids: list[int], max_new: int = MAX_NEW) -> list[int]:
    import torch
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new, do_sample=False, eos_token_id=[1, 7], pad_token_id=0)
    return out[0, len(ids):].tolist()


def byte_run_ids(tok, run):
    return [tok.convert_tokens_to_ids("<0x%02X>" % b) for b in run]


def make():
    import torch
    torch.set_num_threads(1)
    versions = stamp("transformers", "torch")

    tok = reference_tokenizer()
    ids = [tok(s)["input_ids"] for s in TOKENIZER_STRINGS]
    runs = []
    for run in DECODE_BYTE_RUNS:
        base = byte_run_ids(tok, run)
        for seq in (base, [300] + base, base + [300], [6] + base + [2, 300]):
            runs.append({"ids": seq, "text": tok.decode(seq), "text_skip": tok.decode(seq, skip_special_tokens=True)})
    save_golden("generation_tokenizer", {}, {}, {}, {}, {
        "strings": TOKENIZER_STRINGS, "ids": ids,
        "decoded": [tok.decode(i) for i in ids],
        "decoded_skip": [tok.decode(i, skip_special_tokens=True) for i in ids],
        "byte_runs": runs, "checkpoint": "weights/tiny-random-gemma3n", **versions})

    proc = reference_processor()
    prompts = [proc.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in CONVERSATIONS]
    chat_ids = [proc.apply_chat_template(c, add_generation_prompt=True, tokenize=True)[0] for c in CONVERSATIONS]
    save_golden("generation_chat", {}, {}, {}, {}, {
        "conversations": CONVERSATIONS, "prompts": prompts, "ids": [list(map(int, i)) for i in chat_ids],
        "checkpoint": "weights/tiny-random-gemma3n", **versions})

    model = tiny_model()
    tiny_prompts = [tok(p)["input_ids"] for p in GENERATION_PROMPTS]
    tiny_tokens = [greedy(model, p) for p in tiny_prompts]
    second = second_model()
    prompt2 = second_prompt()
    tokens2 = greedy(second, prompt2)
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in second.state_dict().items()
               if k != "lm_head.weight"}
    save_golden("generation_greedy", {"second_prompt": np.array(prompt2)}, weights,
                {"second_tokens": np.array(tokens2)}, {}, {
                    "tiny_prompts": GENERATION_PROMPTS, "tiny_prompt_ids": tiny_prompts, "tiny_tokens": tiny_tokens,
                    "second_config": json.loads(second.config.to_json_string()),
                    "second_prompt": prompt2, "second_tokens": tokens2, "max_new_tokens": MAX_NEW, **versions})
