"""Per-Layer Embeddings (PLE): every decoder layer gets its own small embedding of each token.

The idea: besides the usual token embedding (width D), Gemma 3n looks every token up in a second, huge
table whose row holds one P-wide vector per layer (L*P columns, layer-major: layer l uses columns
l*P .. l*P+P-1). Each layer also gets a P-wide linear projection of the (final) input embedding, RMS-normed.
The two are summed and scaled by 1/sqrt(2); layer l receives ``ple[:, :, l, :]`` and mixes it into the AltUp
streams after its MLP (``decoder.per_layer_input_branch``). The table is the bulk of the parameters of
E2B/E4B ("2B effective" counts exclude it) and lives on disk: only the rows of the ids at hand are read.

Source: transformers 5.24 ``Gemma3nTextModel.get_per_layer_inputs`` / ``project_per_layer_inputs``;
docs/NUMERICS.md §1.3. Token ids outside ``[0, vocab_size_per_layer_input)`` (the vision/audio ids) are
mapped to row 0, not clamped; row 0 is used as stored.
Left out: the reference's path with inputs_embeds but no ids (projection only, no token part, no 1/sqrt 2).

Constants (float32 values, cast to the working dtype): table scale sqrt(P) (16.0 for P=256), projection
scale D**-0.5 (0.022097086 for D=2048, applied before the norm so it acts only through eps), combine
scale rsqrt(2) = 0.70710677.
"""
from __future__ import annotations

import numpy as np

from .ops import constant, linear, rms_norm


def ple_ids(input_ids, vocab_size_per_layer_input: int):
    """Ids the PLE table can look up: ids outside ``[0, U)`` become 0.   [B, T] -> [B, T]"""
    input_ids = np.asarray(input_ids)                                         # [B, T]
    in_table = (input_ids >= 0) & (input_ids < vocab_size_per_layer_input)   # [B, T]
    return np.where(in_table, input_ids, 0)                                   # [B, T]


def per_layer_token_inputs(table_rows, num_layers: int, per_layer_width: int, exact: bool = False):
    """Rows of ``embed_tokens_per_layer`` -> the token part.   [B, T, L*P] -> [B, T, L, P]

    ``table_rows`` = ``table[ple_ids(input_ids)]``; scaled by sqrt(P) (a float32 constant, as the reference's
    ``Gemma3nTextScaledWordEmbedding``)."""
    scale = constant(per_layer_width ** 0.5, table_rows.dtype, exact)       # exact: see ops.constant
    x = table_rows * scale                                                    # [B, T, L*P]
    return x.reshape(*x.shape[:-1], num_layers, per_layer_width)              # [B, T, L, P]


def project_per_layer_inputs(inputs_embeds, token_inputs, p, cfg, rec=None):
    """Combine the projection of the input embedding with the token part.   [B, T, D], [B, T, L, P] -> [B, T, L, P]

    ``p`` holds ``per_layer_model_projection.weight`` [L*P, D] and ``per_layer_projection_norm.weight`` [P]
    (names relative to the text model). ``rec(name, array)``, if given, receives the projection and its norm
    under the reference's module names (for ``trace``)."""
    rec = rec or _no_rec
    t = inputs_embeds.dtype.type
    L, P, D = cfg.num_hidden_layers, cfg.hidden_size_per_layer_input, cfg.hidden_size
    proj = linear(inputs_embeds, p["per_layer_model_projection.weight"])      # [B, T, L*P]
    rec("per_layer_model_projection", proj)
    exact = getattr(cfg, "exact_constants", False)
    proj = proj * constant(D ** -0.5, proj.dtype, exact)                      # [B, T, L*P] scale before the norm
    proj = proj.reshape(*proj.shape[:-1], L, P)                               # [B, T, L, P]
    proj = rms_norm(proj, p["per_layer_projection_norm.weight"], cfg.rms_norm_eps)  # [B, T, L, P] shared weight
    rec("per_layer_projection_norm", proj)
    rsqrt2 = t(2.0 ** -0.5) if exact else t(np.float32(1.0) / np.sqrt(np.float32(2.0)))  # torch.rsqrt(2.0)
    return (proj + token_inputs.astype(proj.dtype, copy=False)) * rsqrt2      # [B, T, L, P]


def per_layer_inputs(input_ids, inputs_embeds, lookup_rows, p, cfg, rec=None):
    """The whole PLE for layer inputs.   [B, T] ids, [B, T, D] -> [B, T, L, P]

    ``lookup_rows(ids)`` returns ``embed_tokens_per_layer.weight[ids]`` ([B, T] -> [B, T, L*P]); minig3n
    passes ``Checkpoint.rows`` so the table is never loaded whole; a test can pass ``table.__getitem__``.
    ``rec(name, array)``, if given, receives the token part (as ``embed_tokens_per_layer`` [B, T, L*P]) and
    the projection's intermediates."""
    rows = lookup_rows(ple_ids(input_ids, cfg.vocab_size_per_layer_input))    # [B, T, L*P]
    rows = np.asarray(rows).astype(inputs_embeds.dtype, copy=False)           # [B, T, L*P]
    tok = per_layer_token_inputs(rows, cfg.num_hidden_layers, cfg.hidden_size_per_layer_input,
                                 getattr(cfg, "exact_constants", False))  # [B, T, L, P]
    if rec is not None:
        rec("embed_tokens_per_layer", tok.reshape(*tok.shape[:-2], -1))       # [B, T, L*P]
    return project_per_layer_inputs(inputs_embeds, tok, p, cfg, rec)          # [B, T, L, P]


def _no_rec(name, x):
    pass
