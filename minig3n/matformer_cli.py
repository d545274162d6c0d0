"""``minig3n slice`` and ``minig3n params``: the command line of the MatFormer chapter.

::

    minig3n params --config "official E2B"          # the notebook's three numbers, from E4B's config
    minig3n params --config all                     # every published row: our count, the table's, MMLU
    minig3n params --model weights/gemma-3n-E4B-it  # counted from a checkpoint's stored tensors
    minig3n slice --model weights/gemma-3n-E4B-it --config "E2.98B block" --out weights/gemma-3n-E2.98B
    minig3n slice --model DIR --ffn-dims 8192 16384 ... --skip-layers 20 21 --out NEW_DIR

From Python: ``slice_checkpoint(src, out, SliceSpec(ffn_dims, skip_layers))``, ``count_config(cfg)``,
``count_checkpoint(dir)``, ``find_published(name)``.

See ``matformer`` (the slicing), ``matformer_table`` (the published rows), ``param_count`` (the counts).
"""
from __future__ import annotations

import re
from pathlib import Path

from .config import PRESETS, Gemma3nConfig
from .errors import InputError
from .matformer import SliceSpec, count_checkpoint, slice_checkpoint, slice_config
from .matformer_table import find_published, parse_int_list, read_published
from .param_count import ParamCount, count_config


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
    cfg = Gemma3nConfig.from_file(Path(out) / "config.json").text
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
