"""Reading config files by type: every key checked against the type its field expects, sizes bounded.

The idea: a config.json is user input. ``read_json`` turns any unreadable file (missing, a directory, not
UTF-8, not JSON, or JSON with the NaN / Infinity tokens Python's parser would accept) into one ConfigError
naming the file; ``check_types`` checks each key of a dict against the dataclass field it fills (the type of
the field's default, or a rule in the class's ``_TYPES``), so ``"sliding_window": "64"`` is refused as
"must be an integer, got a string", not a traceback later; ``LIMITS`` bounds every size the text config sets,
so ``num_hidden_layers: 10000000`` is refused before any list, table or cache of that size exists.

Source: minig3n's own rules (transformers accepts any JSON and fails later, or never).
Left out: JSON Schema (the rules are a few lines each, next to the fields they guard).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from .errors import ConfigError


def require(ok: bool, key: str, rule: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {rule}")


def read_json(path, what: str = "JSON file"):
    """Parse a JSON file; a missing file, a directory, bytes that are not UTF-8, or bad JSON (including the
    non-standard NaN / Infinity tokens Python would accept) -> ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a {what}") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied (cannot read the {what})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); expected a {what}") from None
    if text.startswith("\ufeff"):
        text = text[1:]            # a byte-order mark, as some editors write; harmless
    try:
        return json.loads(text, parse_constant=lambda c: _reject_constant(c))
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON (nested too deeply); expected a {what}") from None
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); expected a {what}") from None


def _reject_constant(token):
    raise ValueError(f"{token} is not a JSON value")


# Upper bounds on sizes: far above every Gemma 3n checkpoint (the E4B value is in the comment), low enough
# that a typo (or a hostile file) is refused before a list, table or cache of that size is allocated.
LIMITS = {
    "num_hidden_layers": 1024,                 # 35
    "vocab_size": 1 << 24,                     # 262,400
    "vocab_size_per_layer_input": 1 << 24,     # 262,144
    "hidden_size": 1 << 16,                    # 2048
    "hidden_size_per_layer_input": 1 << 16,    # 256
    "intermediate_size": 1 << 20,              # 16,384
    "num_attention_heads": 1024,               # 8
    "num_key_value_heads": 1024,               # 2
    "head_dim": 1 << 14,                       # 256
    "laurel_rank": 1 << 16,                    # 64
    "altup_num_inputs": 64,                    # 4
    "sliding_window": 1 << 24,                 # 512
    "max_position_embeddings": 1 << 24,        # 32,768
}


def type_name(v) -> str:
    return "null" if v is None else {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                                     list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_types(cls, d: dict, where: str = "") -> None:
    """Every key of ``d`` that is a field of dataclass ``cls`` must have the type of the field's default
    (int, finite number, bool, str, list); fields listed in ``cls._TYPES`` use that rule instead."""
    special = getattr(cls, "_TYPES", {})
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, key = d[f.name], where + f.name
        if f.name in special:
            ok, want = special[f.name](v)
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if isinstance(default, bool):
                ok, want = isinstance(v, bool), "true or false"
            elif isinstance(default, int):
                ok, want = is_int(v), "an integer"
            elif isinstance(default, float):
                ok, want = is_number(v), "a finite number"
            elif isinstance(default, str):
                ok, want = isinstance(v, str), "a string"
            elif isinstance(default, list):
                ok, want = isinstance(v, list), "a list"
            else:
                continue
        if not ok:
            raise ConfigError(f"config key '{key}': must be {want}, got {type_name(v)} {json.dumps(v)[:60]}")
        if f.name in LIMITS and cls.__name__ == "TextConfig":
            values = v if isinstance(v, list) else [v]
            big = [x for x in values if is_int(x) and x > LIMITS[f.name]]
            require(not big, key, f"{big[:1][0] if big else 0:,} is beyond minig3n's limit of "
                                   f"{LIMITS[f.name]:,} (refused before allocating anything)")


def int_or_int_list(v):
    return (is_int(v) or (isinstance(v, list) and all(is_int(x) for x in v)),
            "an integer or a list of integers (one per layer)")


def optional_int_or_list(v):
    return v is None or int_or_int_list(v)[0], "an integer, a list of integers, or null"


def optional_positive(v):
    return v is None or (is_number(v) and v > 0), "a positive finite number or null"


def optional_str_list(v):
    return v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v)), "a list of strings or null"


def sparsity(v):
    return (v is None or is_number(v) or (isinstance(v, list) and all(is_number(x) for x in v)),
            "a number, a list of numbers (one per layer), or null")
