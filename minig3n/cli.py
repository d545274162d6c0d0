"""The ``minig3n`` command line: one subcommand per job, each defined in the module that does the job.

Every subcommand module has ``add_arguments(parser)`` and ``run(args) -> int``. A ``Minig3nError`` (bad
file, bad argument, bad input) is printed as one line, ``minig3n <command>: error: <message>``, with exit
code 2 and no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import Minig3nError

# subcommand -> (module, one-line help)
COMMANDS = {
    "generate": ("minig3n.generate", "generate text from a prompt (text, images, audio in; streamed text out)"),
    "trace": ("minig3n.trace", "run one prompt and write every named activation to a .safetensors file"),
    "compare": ("minig3n.compare", "compare two trace files tensor by tensor, in forward order"),
    "slice": ("minig3n.matformer_cli", "cut a MatFormer sub-model (narrower FFNs, skipped layers) out of E4B"),
    "params": ("minig3n.matformer_cli", "count total, text and effective parameters of a config or checkpoint"),
    "inspect": ("minig3n.inspect_checkpoint", "list a checkpoint's config and tensors, checking every shape"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen command's module is imported (so ``--help`` stays fast)."""
    parser = argparse.ArgumentParser(
        prog="minig3n",
        description="minig3n: a NumPy-only reference implementation of Gemma 3n (E2B/E4B): text, images and "
                    "audio in, text out, no PyTorch. Run 'minig3n COMMAND --help' for each command.",
    )
    parser.add_argument("--version", action="version", version=f"minig3n {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            mod = importlib.import_module(module)
            getattr(mod, f"add_{name}_arguments", getattr(mod, "add_arguments", None))(p)
            p.set_defaults(_run=getattr(mod, f"run_{name}", getattr(mod, "run", None)), _name=name)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except Minig3nError as e:
        print(f"minig3n {args._name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minig3n {args._name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
