"""The seam between the nano-gemma3n tests and minig3n (swap these bodies to grade another implementation).

Only ``minig3n.decoder`` (forward pass) and ``minig3n.kv_cache`` are used: the greedy loop is written here
in full, so a student's decoder can be checked against the trained checkpoint without a generate command.
"""
from __future__ import annotations

import numpy as np

from minig3n import decoder
from minig3n.kv_cache import KVCache


def run_load(model_dir, dtype=np.float32):
    """The text model of a checkpoint directory (weights read lazily)."""
    return decoder.load_text_model(model_dir, dtype)


def run_config(model):
    """The TextConfig minig3n read from the checkpoint's config.json."""
    return model.cfg


def run_token_losses(model, windows) -> np.ndarray:
    """Next-token cross-entropy (nats, float64) of every predicted id of ``windows`` [W, T+1].  -> [W, T]"""
    wins = np.asarray(windows, dtype=np.int64)
    logits, _ = decoder.forward(model, wins[:, :-1])                                     # [W, T, V]
    z = logits.astype(np.float64)                                                        # [W, T, V]
    m = z.max(axis=-1, keepdims=True)                                                    # [W, T, 1]
    logsumexp = m[..., 0] + np.log(np.exp(z - m).sum(axis=-1))                           # [W, T]
    picked = np.take_along_axis(z, wins[:, 1:, None], axis=-1)[..., 0]                   # [W, T]
    return logsumexp - picked                                                            # [W, T]


def run_greedy(model, prompt_ids, n: int) -> list[int]:
    """Up to ``n`` greedy tokens after ``prompt_ids`` (a list, <bos> first), with the KV cache; stops after
    <eos> (``eos_token_id``), as the reference's ``generate`` does."""
    eos = model.cfg.eos_token_id
    eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    cache = KVCache.empty(model.cfg, 1, np.dtype(model.dtype))
    ids = np.asarray([prompt_ids], dtype=np.int64)                                        # [1, T]
    out = []
    for _ in range(n):
        logits, cache = decoder.forward(model, ids, cache=cache, logits_to_keep=1)       # [1, 1, V]
        nxt = int(np.argmax(logits[0, -1]))
        out.append(nxt)
        if nxt in eos:
            break
        ids = np.asarray([[nxt]], dtype=np.int64)                                         # [1, 1]
    return out


def run_encode(model_dir, text: str) -> list[int]:
    """Token ids of ``text`` with the checkpoint's tokenizer, <bos> first."""
    from minig3n.tokenizer import Tokenizer

    return Tokenizer.from_dir(model_dir).encode(text, add_bos=True)


def run_decode(model_dir, ids) -> str:
    from minig3n.tokenizer import Tokenizer

    return Tokenizer.from_dir(model_dir).decode(list(ids))


def run_generate(prompt: str, n: int, model_dir=None, **sampling) -> tuple[list[int], str]:
    """``minig3n generate`` through its Python API (model_dir None: the default model): (ids, text)."""
    from minig3n import generate

    ids, text = [], []
    for token, piece in generate.generate(model_dir, prompt, max_new_tokens=n, **sampling):
        ids.append(token)
        text.append(piece)
    return ids, "".join(text)


def run_default_model_dir():
    from minig3n import generate

    return generate.default_model_dir()
