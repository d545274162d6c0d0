"""The published MatFormer configurations (Google's mix-n-match table), and finding a row by name.

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
Google's; ``param_count.count_config`` reproduces it within 0.8 % for every row.

Source: dataset ``google/gemma3n-slicing-configs`` (configs.csv), read by gemma-cookbook's "Gemma 3n MatFormer
Lab" notebook. Left out: the notebook's other columns (none).
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

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
