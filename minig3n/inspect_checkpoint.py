"""``minig3n inspect``: what a checkpoint directory holds, checked against its config.

Prints the config summary, then each tensor the decoder reads with its stored dtype and shape, and fails
(exit 2) naming the first tensor that is missing or has the wrong shape, or a ``tokenizer.model`` that is
not a sentencepiece model or does not fit the config (more pieces than ``vocab_size``, ``<bos>`` elsewhere).
Tensors present but never read (the k/v projections of KV-shared layers, ``lm_head.weight``) are listed as
unused, not rejected.
"""
from __future__ import annotations

import numpy as np

from .checkpoint import Checkpoint
from .weight_shapes import model_weight_shapes


def expected_shapes(ckpt: Checkpoint) -> dict:
    """Every tensor the model reads, for the towers this checkpoint has."""
    return model_weight_shapes(ckpt.config, ckpt.text_prefix)


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory (HF layout)")
    parser.add_argument("--all", action="store_true", help="list every tensor, not only a summary")


def run(args) -> int:
    ckpt = Checkpoint(args.model)
    cfg = ckpt.config
    t = cfg.text
    print(f"{ckpt.dir}: {cfg.model_type}, {len(ckpt.files)} file(s), {len(ckpt.names)} tensors")
    print(f"  text: {t.num_hidden_layers} layers, hidden {t.hidden_size}, heads {t.num_attention_heads}/"
          f"{t.num_key_value_heads}x{t.head_dim}, vocab {t.vocab_size}, kv-shared {t.num_kv_shared_layers}, "
          f"sliding window {t.sliding_window}")
    expected = expected_shapes(ckpt)
    ckpt.check_shapes(expected)
    unused = [n for n in ckpt.names if n not in expected]
    n_params = sum(int(np.prod(ckpt.shape(n))) for n in ckpt.names)
    print(f"  {len(expected)} tensors checked against the config, all present with the right shape; "
          f"{n_params:,} parameters stored")
    tok_file = ckpt.dir / "tokenizer.model"
    if tok_file.exists():
        from .tokenizer import Tokenizer, check_tokenizer
        tok = Tokenizer(tok_file)                    # CheckpointError if it is not a sentencepiece model
        check_tokenizer(tok, t)
        print(f"  tokenizer.model: {tok.vocab_size} pieces, fits vocab_size {t.vocab_size}")
    else:
        print("  tokenizer.model: absent (generate and trace --prompt need one)")
    if args.all:
        for n in ckpt.names:
            print(f"  {ckpt.stored_dtype(n):5s} {str(list(ckpt.shape(n))):20s} {n}"
                  + ("   (unused)" if n in unused else ""))
    elif unused:
        print(f"  {len(unused)} stored tensors are never read (e.g. {unused[0]})")
    return 0
