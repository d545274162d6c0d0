"""MatFormer: cutting smaller Gemma 3n models out of E4B, and counting what they hold.

The idea
--------
Gemma 3n E4B is a *MatFormer* ("Matryoshka Transformer", Devvrit et al. 2023, arXiv:2310.07707): during
training, each step also ran sub-networks that use only a **prefix** of every FFN's hidden units, e.g.
the first 8192 of E4B's 16384. The loss of those narrower networks is optimised together with the full
one, so the first units are pushed to carry the most useful features and the later ones to refine them,
like nested dolls. A prefix of an FFN is therefore not an arbitrary cut of a trained matrix: it is a
network that was itself trained. In a layer's MLP ``down(gelu(gate x) * up x)`` hidden unit j lives in
row j of ``gate_proj`` and ``up_proj`` and column j of ``down_proj``; keeping units ``0..d-1`` means::

    gate_proj [I, D] -> gate_proj[:d]      up_proj [I, D] -> up_proj[:d]      down_proj [D, I] -> down_proj[:, :d]

E2B is E4B's nested sub-model, optimised jointly with it during training: 8192-wide FFNs everywhere and
E4B's layers 20..24 left out (the table's "official E2B" row). "Mix-n-match" goes further: choose a width per
layer (the published rows use the two trained widths, 8192 and 16384; any prefix can be cut, untested in
between) and skip whole layers, giving a range of models between E2B and E4B with no retraining.

Skipping layer l removes its tensors, renumbers the layers after it, and removes its slice of the
per-layer embeddings (PLE): the table ``embed_tokens_per_layer`` [U, L*P] and the projection
``per_layer_model_projection`` [L*P, D] are layer-major (layer l owns columns / rows ``P*l .. P*l+P-1``),
so the kept layers' blocks are gathered in order. Each kept layer keeps its attention type (its weights
were trained with that window and RoPE base), so ``layer_types`` is filtered, not recomputed; likewise
``activation_sparsity_pattern`` (Google's notebook rebuilds it as "0.95 for the first 10 - k, 0 after",
which is the same list for the published pattern). KV sharing constrains what may be skipped: the last
``num_kv_shared_layers`` layers compute no K/V of their own and reuse the K/V of the last earlier layer of
their type (E4B: layer 18 for sliding, 19 for full attention). Skipping a consumer is fine (the count of
shared layers drops by one); skipping a producer whose K/V a kept layer reuses is refused, since that
layer would silently read another layer's K/V (Google's notebook hard-codes this rule as "layers
``first_shared - 2`` and ``first_shared - 1`` are reserved"). So is skipping every layer of one attention
type, which would leave a model with no global (or no local) attention at all.

The published table
-------------------
Google evaluated a set of such configurations (``PUBLISHED_CSV`` below; dataset
``google/gemma3n-slicing-configs``, used by the Gemma 3n "MatFormer Lab" notebook of gemma-cookbook).
Each row gives the FFN width of every kept layer, the skipped layers, Google's effective parameter count
and the MMLU accuracy of the *pretrained* sliced model, measured without any retraining. What it shows:

* accuracy grows smoothly with size between the two trained end points, E2B (50.9 %) and E4B (62.3 %),
  so the nested training made the in-between models usable, not just the two it targeted;
* where the capacity goes matters more than how much: widening only layer 4's FFN (the first
  full-attention layer; "E1.96B", +50 M parameters) lifts E2B from 50.9 % to 53.4 %, and at about the
  same size the layer-level choices beat or tie the block-level ones (E2.54B layer-level 55.4 % vs E2.49B
  block-level 54.5 %, E3.79B 63.4 % vs the 3.74 B block-level row's 62.0 %);
* the full model is not the ceiling on this benchmark: the layer-level E3.39B..E3.79B rows score
  63.0-63.4 %, above E4B's 62.3 %, with 0.2-0.6 B fewer effective parameters.

One benchmark and one run each, so read the small differences with care. The table's parameter column is
Google's; ``count_config`` reproduces it within 0.8 % for every row.

Counting parameters
-------------------
Three numbers, as Google's notebook prints them:

* **text**: every tensor of the language model as the checkpoint stores it, *including* the k_proj,
  v_proj and k_norm of the KV-shared layers (present in the official files, never read by the model);
* **effective**: text without the token embedding ``embed_tokens`` [V, D] and the PLE table
  ``embed_tokens_per_layer`` [U, L*P]; both are look-up tables (one row read per token) that can stay
  in slow memory, which is what the "E" in E2B/E4B means;
* **total**: everything in the checkpoint (text, audio and vision towers, their embedders) *plus* the LM
  head counted once more, although it is tied to ``embed_tokens``.

For the E2B row applied to E4B this gives total 5,976,833,408, text 4,456,156,768 and effective
1,905,495,648, the notebook's numbers. (A sum over the reference's modules lands 64 higher: timm's
MobileNetV5 stem conv has a bias [64] that the official checkpoint does not carry.)

Usage
-----
::

    minig3n params --config "official E2B"          # the notebook's three numbers, from E4B's config
    minig3n params --config all                     # every published row: our count, the table's, MMLU
    minig3n params --model weights/gemma-3n-E4B-it  # counted from a checkpoint's stored tensors
    minig3n slice --model weights/gemma-3n-E4B-it --config "E2.98B block" --out weights/gemma-3n-E2.98B
    minig3n slice --model DIR --ffn-dims 8192 16384 ... --skip-layers 20 21 --out NEW_DIR

From Python: ``slice_checkpoint(src, out, SliceSpec(ffn_dims, skip_layers))``, ``count_config(cfg)``,
``count_checkpoint(dir)``, ``find_published(name)``.

Source: Google's gemma-cookbook "Gemma 3n MatFormer Lab" notebook (slicing recipe and the config update)
and its slicing-configs table; transformers 5.24 ``Gemma3nTextConfig.kv_sharing_modes``.
Left out: slicing the audio and vision towers (they are carried over untouched), widths that are not a
prefix (the training only nested prefixes), and quantisation.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import _STORAGE, Checkpoint, text_weight_shapes
from .config import PRESETS, Gemma3nConfig, TextConfig
from .errors import InputError

# --- The published table ----------------------------------------------------------------------------------
# Verbatim copy of configs.csv from the dataset google/gemma3n-slicing-configs (the table Google's
# MatFormer Lab notebook reads). Columns: name, layers kept, effective parameters (billions, Google's
# count), MMLU (pretrained) accuracy, FFN hidden size of each *kept* layer, E4B layers skipped.
PUBLISHED_CSV = """\
name,# Layers,# Effective Params (B),MMLU PT accuracy,FFN Hidden Dims,Layers Skipped
Main model,35,3.98,62.30%,"[2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8]",
Config for official E2B Model,30,1.91,50.90%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4]","[20, 21, 22, 23, 24]"
Config for E1.96B (layer-level),30,1.96,53.40%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4]","[20, 21, 22, 23, 24]"
Config for E2.54B (layer-level),35,2.54,55.40%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4]",
Config for E2.69B (layer-level),35,2.69,57.70%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4]",
Config for E2.98B (layer-level),35,2.98,59.50%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8]",
Config for E3.18B (layer-level),35,3.18,61.80%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8]",
Config for E3.39B (layer-level),35,3.39,63.00%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8]",
Config for E3.59B (layer-level),35,3.59,63.40%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8]",
Config for E3.79B (layer-level),35,3.79,63.40%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8]",
Config for E2.49B (block-level),35,2.49,54.50%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4]",
Config for E2.73B (block-level),35,2.73,57.10%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4]",
Config for E2.98B (block-level),35,2.98,59.50%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4]",
Config for E3.24B (block-level),35,3.24,60.70%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4]",
Config for E3.49B (block-level),35,3.49,61.40%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4]",
Config for E3.79B (block-level),35,3.74,62.00%,"[2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 4, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8, 2_048 * 8]",
"""


@dataclass(frozen=True)
class PublishedConfig:
    """One row of the published table."""

    name: str
    num_layers: int
    effective_params_b: float          # Google's effective count, billions (rounded to 2 decimals)
    mmlu: float                        # MMLU (pretrained model) accuracy, percent
    ffn_dims: tuple                    # hidden size of each kept layer
    skip_layers: tuple                 # E4B layers left out


def parse_int_list(text: str, what: str) -> list[int]:
    """``"[2_048 * 4, 8192]"``, ``"2048*4 8192"`` or ``"20,21"`` -> ints. Each item is an int (``_``
    separators allowed) or a product ``a * b`` of ints, as the table writes them. No eval."""
    items = [s for s in re.split(r"[,\s]+", re.sub(r"\s*\*\s*", "*", text.strip().strip("[]"))) if s]
    out = []
    for item in items:
        try:
            value = 1
            for factor in item.split("*"):
                value *= int(factor)
        except ValueError:
            raise InputError(f"{what}: cannot read {item!r} as an integer (or a product like 2048*4)") from None
        out.append(value)
    return out


def read_published(text: str = PUBLISHED_CSV) -> list[PublishedConfig]:
    """Parse the table (``PUBLISHED_CSV`` or another file's text with the same columns)."""
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        try:
            rows.append(PublishedConfig(
                name=r["name"].strip(), num_layers=int(r["# Layers"]),
                effective_params_b=float(r["# Effective Params (B)"]),
                mmlu=float(r["MMLU PT accuracy"].strip().rstrip("%")),
                ffn_dims=tuple(parse_int_list(r["FFN Hidden Dims"], "FFN Hidden Dims")),
                skip_layers=tuple(parse_int_list(r["Layers Skipped"] or "", "Layers Skipped"))))
        except (KeyError, ValueError, TypeError) as e:
            raise InputError(f"slicing table: cannot read row {r!r} ({e})") from None
    return rows


_STOPWORDS = {"config", "for", "model", "level"}


def _tokens(name: str) -> set[str]:
    """Lower-case words of a config name, minus filler: "Config for E2.98B (layer-level)" -> {e2.98b, layer}.
    A bare size is read as one: "2.98" and "e2.98" -> "e2.98b"."""
    words = set(re.findall(r"[a-z0-9.]+", name.lower().replace("_", " ").replace("-", " "))) - _STOPWORDS
    return {("e" + w.lstrip("e").rstrip("b") + "b") if re.fullmatch(r"e?\d+(\.\d+)?b?", w) else w for w in words}


def find_published(name: str, table: Sequence[PublishedConfig] | None = None) -> PublishedConfig:
    """The table row ``name`` refers to. Matching ignores case, punctuation and the words "config", "for",
    "model", "level"; any unique row whose words include all of the query's words is taken, so "E2B",
    "official e2b", "e3.18b", "E2.98B block" and "main" all work. "E4B" is the main model."""
    table = list(table) if table is not None else read_published()
    query = _tokens(name)
    names = "; ".join(repr(r.name) for r in table)
    if not query:
        raise InputError(f"--config: empty name; published configs are: {names}")
    for r in table:                       # an exact name wins
        if r.name.lower() == name.strip().lower():
            return r
    hits = [r for r in table if query <= _tokens(r.name) | ({"e4b"} if r.name.lower().startswith("main") else set())]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise InputError(f"--config {name!r} matches no published config; choose one of: {names}")
    raise InputError(f"--config {name!r} is ambiguous, it matches " + "; ".join(repr(r.name) for r in hits))


# --- The slicing spec and the plan ------------------------------------------------------------------------
@dataclass
class SliceSpec:
    """What to keep. ``ffn_dims``: one FFN width per *kept* layer (None: keep every layer's width);
    ``skip_layers``: indices of the source model's layers to leave out."""

    ffn_dims: list | None = None
    skip_layers: list = field(default_factory=list)

    @classmethod
    def from_published(cls, row: PublishedConfig) -> "SliceSpec":
        return cls(list(row.ffn_dims), list(row.skip_layers))


@dataclass
class TextSlice:
    """A validated spec: the kept source layers (in order), their new widths, and the new text config."""

    kept: list                         # source layer index of each new layer
    widths: list                       # new intermediate size of each new layer
    text: TextConfig                   # the sliced text config


def kv_producers(text: TextConfig) -> dict:
    """{layer type: index of the layer whose K/V the shared layers of that type reuse} (empty when no
    layer shares). Same rule as transformers' ``kv_sharing_modes``: the last layer of that type before
    the first shared layer."""
    first = text.first_kv_shared_layer
    if text.num_kv_shared_layers == 0:
        return {}
    return {t: max(i for i in range(first) if text.layer_types[i] == t) for t in set(text.layer_types[first:])}


def plan_text_slice(text: TextConfig, spec: SliceSpec) -> TextSlice:
    """Check ``spec`` against the source text config and derive the sliced config. Raises InputError naming
    the problem: an index out of range, a wrong number of widths, a width the layer does not have, no layer
    left of one attention type (no global, or no local, attention at all), or a skipped layer whose K/V a
    kept layer reuses."""
    L = text.num_hidden_layers
    skip = list(spec.skip_layers or [])
    bad = [i for i in skip if not 0 <= i < L]
    if bad:
        raise InputError(f"--skip-layers: {bad} out of range; the model has layers 0..{L - 1}")
    if len(set(skip)) != len(skip):
        raise InputError(f"--skip-layers: {sorted(i for i in set(skip) if skip.count(i) > 1)} listed twice")
    kept = [i for i in range(L) if i not in set(skip)]
    if not kept:
        raise InputError(f"--skip-layers: skipping all {L} layers leaves no model")
    for layer_type in sorted(set(text.layer_types)):
        if not any(text.layer_types[i] == layer_type for i in kept):
            layers = [i for i in range(L) if text.layer_types[i] == layer_type]
            raise InputError(f"--skip-layers: skipping {layers} removes every {layer_type} layer; the local/global "
                             f"pattern needs at least one of each type (keep one of {layers})")
    first = text.first_kv_shared_layer
    for layer_type, producer in sorted(kv_producers(text).items()):
        readers = [i for i in kept if i >= first and text.layer_types[i] == layer_type]
        if producer in skip and readers:
            raise InputError(
                f"--skip-layers: layer {producer} cannot be skipped: it computes the K/V that the KV-shared "
                f"{layer_type} layers {readers} reuse (layers {first}..{L - 1} share K/V, "
                f"num_kv_shared_layers={text.num_kv_shared_layers}); without it they would read another layer's K/V")
    widths = [text.intermediate_size[i] for i in kept] if spec.ffn_dims is None else [int(d) for d in spec.ffn_dims]
    if len(widths) != len(kept):
        raise InputError(f"--ffn-dims: {len(widths)} widths given, but {len(kept)} layers are kept ({L} layers "
                         f"minus {len(skip)} skipped); give one width per kept layer, in order")
    for new, (i, d) in enumerate(zip(kept, widths)):
        if not 1 <= d <= text.intermediate_size[i]:
            full = text.intermediate_size[i]
            raise InputError(f"--ffn-dims: width {d} for layer {i} (new layer {new}) is not in 1..{full}: a slice "
                             f"keeps a prefix of the layer's {full} hidden units")
    n_shared = sum(1 for i in kept if i >= first)
    new = TextConfig.from_dict({
        **text.to_dict(), "num_hidden_layers": len(kept), "intermediate_size": widths,
        "layer_types": [text.layer_types[i] for i in kept], "num_kv_shared_layers": n_shared,
        "activation_sparsity_pattern": [text.activation_sparsity_pattern[i] for i in kept]})
    return TextSlice(kept, widths, new)


def slice_config(cfg: Gemma3nConfig, spec: SliceSpec) -> Gemma3nConfig:
    """The config of the sliced model (towers unchanged)."""
    s = plan_text_slice(cfg.text, spec)
    return Gemma3nConfig.from_dict({**cfg.to_dict(), "text_config": s.text.to_dict()}) if cfg.is_multimodal \
        else Gemma3nConfig.from_dict(s.text.to_dict())


# --- Tensor-level plan ------------------------------------------------------------------------------------
@dataclass
class TensorPlan:
    """One output tensor: copied from ``src`` with ``rows`` / ``cols`` kept (None = all)."""

    name: str
    src: str
    shape: tuple
    rows: object = None                # None, or an int d (keep rows :d), or an index array
    cols: object = None


_LAYER = re.compile(r"layers\.(\d+)\.(.*)")


def _block_index(kept: list, P: int) -> np.ndarray:
    """Layer-major PLE positions of the kept layers: [P*l .. P*l+P-1 for l in kept]."""
    return np.concatenate([np.arange(P * l, P * l + P) for l in kept])  # [L'*P]


def plan_tensors(ckpt: Checkpoint, spec: SliceSpec) -> tuple[list[TensorPlan], TextSlice]:
    """Every tensor of the sliced checkpoint, in source order, and the validated slice."""
    text = ckpt.config.text
    ckpt.check_shapes(text_weight_shapes(text, ckpt.text_prefix))   # a tensor that disagrees with config.json
    s = plan_text_slice(text, spec)
    new_index = {old: new for new, old in enumerate(s.kept)}
    P, pre = text.hidden_size_per_layer_input, ckpt.text_prefix
    ple_cols = _block_index(s.kept, P)
    plan = []
    for name in ckpt.names:
        shape = tuple(ckpt.shape(name))
        rest = name[len(pre):] if name.startswith(pre) else None
        m = _LAYER.fullmatch(rest) if rest is not None else None
        if m:
            old, sub = int(m.group(1)), m.group(2)
            if old not in new_index:
                continue                                           # a skipped layer: dropped
            out = f"{pre}layers.{new_index[old]}.{sub}"
            d = s.widths[new_index[old]]
            if sub in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):   # [I, D] -> [d, D]
                plan.append(TensorPlan(out, name, (d, shape[1]), rows=d))
            elif sub == "mlp.down_proj.weight":                        # [D, I] -> [D, d]
                plan.append(TensorPlan(out, name, (shape[0], d), cols=d))
            else:
                plan.append(TensorPlan(out, name, shape))
        elif rest == "embed_tokens_per_layer.weight":                  # [U, L*P] -> [U, L'*P]
            plan.append(TensorPlan(name, name, (shape[0], len(ple_cols)), cols=ple_cols))
        elif rest == "per_layer_model_projection.weight":              # [L*P, D] -> [L'*P, D]
            plan.append(TensorPlan(name, name, (len(ple_cols), shape[1]), rows=ple_cols))
        else:
            plan.append(TensorPlan(name, name, shape))                 # audio, vision, embedders: as stored
    return plan, s


# --- Writing ----------------------------------------------------------------------------------------------
BLOCK_BYTES = 64 << 20     # rows copied per step: about this many bytes (memory stays bounded)


def _read_rows(src, name: str, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of a stored tensor, read from the file (not the memory map, so pages already copied
    do not stay resident: memory stays at about one block however large the tensor)."""
    st, shape = src.info(name)
    storage = _STORAGE[st]
    row = int(np.prod(shape[1:], dtype=np.int64))
    begin = src.header[name]["data_offsets"][0]
    data = np.fromfile(src.path, dtype=storage, count=(r1 - r0) * row,
                       offset=src.data_start + begin + r0 * row * storage.itemsize)   # [n * W] stored bits
    return data.reshape((r1 - r0,) + tuple(shape[1:]))                                # [n, W...]


def _chunks(src, t: TensorPlan):
    """The selected part of tensor ``t.src`` (stored dtype, row-major), one block of about ``BLOCK_BYTES`` of
    output rows at a time."""
    shape = src.info(t.src)[1]
    if len(shape) == 0:
        yield np.ascontiguousarray(src.raw(t.src))
        return
    gather = t.rows is not None and not isinstance(t.rows, (int, np.integer))    # an index list, else a prefix
    n = t.shape[0]
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * _STORAGE[src.info(t.src)[0]].itemsize)
    step = max(1, BLOCK_BYTES // row_bytes)
    for r0 in range(0, n, step):
        if gather:                        # rows ascend: read the span they cover, then pick
            idx = np.asarray(t.rows[r0:r0 + step])                                     # [n]
            block = _read_rows(src, t.src, int(idx[0]), int(idx[-1]) + 1)[idx - idx[0]]  # [n, W]
        else:
            block = _read_rows(src, t.src, r0, min(n, r0 + step))                      # [n, W...]
        if t.cols is not None:
            block = block[:, :t.cols] if isinstance(t.cols, (int, np.integer)) else block[:, t.cols]  # [n, w]
        yield np.ascontiguousarray(block)


def _write_shard(path: Path, entries: list, ckpt: Checkpoint) -> int:
    """Write one safetensors file from plan entries, streaming each tensor; returns bytes of tensor data."""
    header, offset = {}, 0
    for t in sorted(entries, key=lambda t: t.name):
        st = ckpt.stored_dtype(t.src)
        n = int(np.prod(t.shape, dtype=np.int64)) * _STORAGE[st].itemsize
        header[t.name] = {"dtype": st, "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for t in sorted(entries, key=lambda t: t.name):
            src = ckpt.files[ckpt.where[t.src]]
            written = 0
            for chunk in _chunks(src, t):
                f.write(chunk.data)
                written += chunk.nbytes
            begin, end = header[t.name]["data_offsets"]
            assert written == end - begin, f"{t.name}: wrote {written} bytes, planned {end - begin}"
    return offset


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _tensor_bytes(ckpt: Checkpoint, t: TensorPlan) -> int:
    return int(np.prod(t.shape, dtype=np.int64)) * _STORAGE[ckpt.stored_dtype(t.src)].itemsize


def _shards(ckpt: Checkpoint, plan: list, max_bytes: int) -> list[list]:
    """Group tensors (layers in numeric order) into shards of at most ``max_bytes`` (a larger tensor gets a
    shard of its own)."""
    shards, size = [[]], 0
    for t in sorted(plan, key=lambda t: _natural(t.name)):
        n = _tensor_bytes(ckpt, t)
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += n
    return shards


_WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")


def _new_config_json(model_dir: Path, s: TextSlice) -> dict:
    """The source config.json with only the sliced text keys replaced (key order and other keys kept)."""
    d = json.loads((model_dir / "config.json").read_text())
    text = d["text_config"] if d.get("model_type", "gemma3n") == "gemma3n" else d
    text.update({"num_hidden_layers": s.text.num_hidden_layers, "intermediate_size": list(s.widths),
                 "layer_types": list(s.text.layer_types), "num_kv_shared_layers": s.text.num_kv_shared_layers,
                 "activation_sparsity_pattern": list(s.text.activation_sparsity_pattern)})
    Gemma3nConfig.from_dict(d)   # must parse: a ConfigError here is a bug in the plan, not the user's input
    return d


def slice_checkpoint(model_dir, out_dir, spec: SliceSpec, max_shard_bytes: int = 2 << 30) -> Path:
    """Write the sliced model to ``out_dir`` (which must not exist) in the Hugging Face layout.

    Tensors are copied in their stored dtype, byte for byte (BF16 stays BF16), streamed block by block
    from the memory-mapped source, into shards of at most ``max_shard_bytes``. Everything is written into a
    temporary sibling directory that is renamed to ``out_dir`` at the end; on any failure it is removed.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists():
        raise InputError(f"--out {out_dir}: already exists; choose a new directory (nothing is overwritten)")
    if not out_dir.parent.is_dir():
        raise InputError(f"--out {out_dir}: parent directory {out_dir.parent} does not exist")
    if max_shard_bytes < 1:
        raise InputError(f"--max-shard-size must be positive, got {max_shard_bytes} bytes")
    ckpt = Checkpoint(model_dir)
    plan, s = plan_tensors(ckpt, spec)
    config = _new_config_json(model_dir, s)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        shards = _shards(ckpt, plan, max_shard_bytes)
        if len(shards) == 1:
            _write_shard(tmp / "model.safetensors", shards[0], ckpt)
        else:
            weight_map, total = {}, 0
            for k, entries in enumerate(shards):
                fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
                total += _write_shard(tmp / fname, entries, ckpt)
                weight_map.update({t.name: fname for t in entries})
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for item in sorted(model_dir.iterdir()):                   # tokenizer, processor configs, ...
            if item.name == "config.json" or _WEIGHT_FILE.fullmatch(item.name):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# --- Parameter accounting ---------------------------------------------------------------------------------
@dataclass
class ParamCount:
    """Parameter counts by part. ``total``, ``text`` and ``effective`` are the three numbers of Google's
    notebook (see the module docstring)."""

    text: int                          # the language model, KV-shared layers' K/V included
    token_embedding: int               # embed_tokens [V, D]
    per_layer_embedding: int           # embed_tokens_per_layer [U, L*P]
    audio: int = 0                     # audio_tower
    vision: int = 0                    # vision_tower
    embedders: int = 0                 # embed_audio + embed_vision
    lm_head: int = 0                   # the LM head, counted on its own although tied to embed_tokens
    other: int = 0                     # anything else stored

    @property
    def effective(self) -> int:
        return self.text - self.token_embedding - self.per_layer_embedding

    @property
    def total(self) -> int:
        return self.text + self.audio + self.vision + self.embedders + self.lm_head + self.other


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def text_checkpoint_shapes(text: TextConfig, prefix: str) -> dict:
    """The text tensors an official checkpoint stores: what the model reads (``text_weight_shapes``) plus
    the k_proj, v_proj, k_norm that KV-shared layers carry although the model never reads them."""
    shapes = text_weight_shapes(text, prefix)
    G, E, D = text.num_key_value_heads, text.head_dim, text.hidden_size
    for li in range(text.first_kv_shared_layer, text.num_hidden_layers):
        p = f"{prefix}layers.{li}.self_attn."
        shapes.update({p + "k_proj.weight": (G * E, D), p + "v_proj.weight": (G * E, D), p + "k_norm.weight": (E,)})
    return shapes


def tower_checkpoint_shapes(cfg: Gemma3nConfig) -> dict:
    """Audio tower, vision tower and the two embedders of a multimodal config, from each chapter's own shape
    table (``usm.audio_weight_shapes``, ``mobilenetv5.vision_weight_shapes``; the embedders' four tensors
    each are written out here), as an official checkpoint stores them: without the vision stem's
    ``conv_stem.conv.bias`` [C], which timm's encoder has (zeros) and the official checkpoint does not."""
    from .mobilenetv5 import vision_weight_shapes
    from .usm import audio_weight_shapes
    s = dict(audio_weight_shapes(cfg.audio, "model.audio_tower."))
    s.update(vision_weight_shapes(cfg.vision, "model.vision_tower.timm_model."))
    s.pop(STEM_BIAS, None)
    for name, tower in (("embed_audio", cfg.audio), ("embed_vision", cfg.vision)):
        W, p = tower.hidden_size, f"model.{name}."
        s.update({p + "embedding.weight": (tower.vocab_size, W), p + "hard_embedding_norm.weight": (W,),
                  p + "soft_embedding_norm.weight": (W,), p + "embedding_projection.weight": (cfg.text.hidden_size, W)})
    return s


STEM_BIAS = "model.vision_tower.timm_model.conv_stem.conv.bias"


def count_names(shapes: dict, text_prefix: str, tied_lm_head: int = 0) -> ParamCount:
    """Sort ``{name: shape}`` into a ParamCount. ``tied_lm_head``: parameters of a tied LM head that is not
    stored (counted separately, as the notebook does)."""
    c = ParamCount(0, 0, 0, lm_head=tied_lm_head)
    for name, shape in shapes.items():
        n = _numel(shape)
        if name == "lm_head.weight":
            c.lm_head = n
        elif name.startswith("model.audio_tower."):
            c.audio += n
        elif name.startswith("model.vision_tower."):
            c.vision += n
        elif name.startswith(("model.embed_audio.", "model.embed_vision.")):
            c.embedders += n
        elif name.startswith(text_prefix):
            c.text += n
            if name == text_prefix + "embed_tokens.weight":
                c.token_embedding = n
            elif name == text_prefix + "embed_tokens_per_layer.weight":
                c.per_layer_embedding = n
        else:
            c.other += n
    return c


def config_shapes(cfg: Gemma3nConfig) -> dict:
    """Every tensor an official-layout checkpoint of this config stores (LM head not stored: tied)."""
    if not cfg.is_multimodal:
        return text_checkpoint_shapes(cfg.text, "model.")
    shapes = text_checkpoint_shapes(cfg.text, "model.language_model.")
    shapes.update(tower_checkpoint_shapes(cfg))
    return shapes


def count_config(cfg: Gemma3nConfig) -> ParamCount:
    """Counts of a config, from the shapes it implies (the LM head counted separately when tied)."""
    prefix = "model.language_model." if cfg.is_multimodal else "model."
    tied = cfg.text.vocab_size * cfg.text.hidden_size if cfg.text.tie_word_embeddings else 0
    return count_names(config_shapes(cfg), prefix, tied)


def count_checkpoint(model_dir, spec: SliceSpec | None = None) -> ParamCount:
    """Counts of a checkpoint directory from its stored tensors (or of the checkpoint ``spec`` would cut
    from it, from the planned shapes, without writing anything)."""
    ckpt = Checkpoint(model_dir)
    shapes = ({t.name: t.shape for t in plan_tensors(ckpt, spec)[0]} if spec is not None
              else {n: ckpt.shape(n) for n in ckpt.names})
    t = ckpt.config.text
    tied = t.vocab_size * t.hidden_size if t.tie_word_embeddings and "lm_head.weight" not in shapes else 0
    return count_names(shapes, ckpt.text_prefix, tied)


# --- Command line -----------------------------------------------------------------------------------------
def _names_help() -> str:
    return "; ".join(r.name for r in read_published())


def _spec_from_args(args) -> SliceSpec | None:
    if args.config is not None:
        if args.ffn_dims is not None or args.skip_layers is not None:
            raise InputError("give either --config or --ffn-dims/--skip-layers, not both")
        return SliceSpec.from_published(find_published(args.config, _table(args)))
    if args.ffn_dims is None and args.skip_layers is None:
        return None
    return SliceSpec(None if args.ffn_dims is None else parse_int_list(" ".join(args.ffn_dims), "--ffn-dims"),
                     [] if args.skip_layers is None else parse_int_list(" ".join(args.skip_layers), "--skip-layers"))


def _table(args):
    if getattr(args, "table", None) is None:
        return read_published()
    try:
        return read_published(Path(args.table).read_text())
    except OSError as e:
        raise InputError(f"--table {args.table}: cannot read ({e.strerror})") from None


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", text.upper())
    if not m:
        raise InputError(f"--max-shard-size: cannot read {text!r} (e.g. 2GB, 500MB, 1048576)")
    return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)])


def _add_spec_arguments(parser) -> None:
    parser.add_argument("--config", metavar="NAME",
                        help="a published mix-n-match configuration (case and punctuation ignored, e.g. 'E2B', "
                             "'E2.98B block'): " + _names_help())
    parser.add_argument("--ffn-dims", nargs="+", metavar="D",
                        help="FFN width of each kept layer, in order (ints or products: 8192 2048*8 ...)")
    parser.add_argument("--skip-layers", nargs="*", metavar="L", help="source layer indices to leave out")
    parser.add_argument("--table", metavar="CSV", help="read the published configurations from this CSV "
                        "(same columns as Google's configs.csv) instead of the built-in copy")


def add_slice_arguments(parser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="source checkpoint directory (E4B)")
    parser.add_argument("--out", required=True, metavar="DIR", help="new checkpoint directory (must not exist)")
    _add_spec_arguments(parser)
    parser.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default 2GB)")


def run_slice(args) -> int:
    spec = _spec_from_args(args)
    if spec is None:
        raise InputError("say what to keep: --config NAME, or --ffn-dims and/or --skip-layers")
    out = slice_checkpoint(args.model, args.out, spec, _size(args.max_shard_size))
    c = count_checkpoint(out)
    cfg = Checkpoint(out).config.text
    print(f"wrote {out}: {cfg.num_hidden_layers} layers, FFN widths {sorted(set(cfg.intermediate_size))}, "
          f"{c.effective:,} effective / {c.text:,} text / {c.total:,} total parameters")
    return 0


def add_params_arguments(parser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="DIR", help="count a checkpoint directory's stored tensors")
    src.add_argument("--preset", choices=sorted(PRESETS), help="count a preset config from its shapes")
    _add_spec_arguments(parser)
    parser.epilog = ("--config alone applies the published configuration to the E4B preset; '--config all' "
                     "prints every row next to the table's effective count and MMLU score.")


def _print_count(title: str, c: ParamCount) -> None:
    print(title)
    for label, n in (("total", c.total), ("text", c.text), ("effective", c.effective),
                     ("  token embedding", c.token_embedding), ("  per-layer embedding", c.per_layer_embedding),
                     ("audio tower", c.audio), ("vision tower", c.vision), ("embedders", c.embedders),
                     ("LM head (tied, counted separately)", c.lm_head), ("other", c.other)):
        print(f"  {label:36s} {n:>15,}")


def run_params(args) -> int:
    if args.config is not None and args.config.strip().lower() == "all":
        base = (Gemma3nConfig.from_file(Path(args.model) / "config.json") if args.model
                else PRESETS[args.preset or "E4B"]())
        print(f"{'name':34s} {'layers':>6s} {'effective':>15s} {'table (B)':>9s} {'MMLU':>6s}")
        for row in _table(args):
            c = (count_checkpoint(args.model, SliceSpec.from_published(row)) if args.model
                 else count_config(slice_config(base, SliceSpec.from_published(row))))
            print(f"{row.name:34s} {row.num_layers:6d} {c.effective:15,} {row.effective_params_b:9.2f} "
                  f"{row.mmlu:5.1f}%")
        return 0
    spec = _spec_from_args(args)
    if args.model:
        c = count_checkpoint(args.model, spec)
        title = f"{args.model}: " + ("as sliced, from the planned tensor shapes" if spec else "from its stored tensors")
    else:
        base = PRESETS[args.preset or "E4B"]()
        c = count_config(base if spec is None else slice_config(base, spec))
        title = f"{args.preset or 'E4B'} preset" + (f", sliced ({args.config or 'custom spec'})" if spec else "") \
            + ": from the shapes its config implies"
    _print_count(title, c)
    return 0
