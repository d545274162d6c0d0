"""The ``minig3n`` command line: one subcommand per job, each defined in the module that does the job.

Every subcommand module has ``add_arguments(parser)`` and ``run(args) -> int``. A ``Minig3nError`` (bad
file, bad argument, bad input) is printed as one line, ``minig3n <command>: error: <message>``, with exit
code 2 and no traceback. Text arguments (``--prompt``, ``--chat``, ``--system``) must be valid UTF-8. When the
reader of standard output goes away (``minig3n generate ... | head -c 20``), minig3n stops quietly with exit
code 141 (128 + SIGPIPE), as a Unix tool killed by SIGPIPE does.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import InputError, Minig3nError

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
        check_text_arguments(args)
        import numpy as np
        # NaN / infinity is caught by name where it first appears (finite.py), so NumPy's own floating-point
        # warnings would only add lines to the one-line error
        with np.errstate(all="ignore"):
            return int(args._run(args) or 0)
    except Minig3nError as e:
        print(f"minig3n {args._name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minig3n {args._name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout is gone: say nothing more. Point stdout at /dev/null so that the interpreter's
        # final flush of the dead pipe does not print "Exception ignored ... BrokenPipeError" either.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 128 + 13


TEXT_ARGUMENTS = ("prompt", "chat", "system")


def check_text_arguments(args) -> None:
    """Text arguments must be valid UTF-8. Python hands undecodable argv bytes over as lone surrogates
    (U+DC80..U+DCFF, 'surrogateescape'); the tokenizer cannot encode those, so name the argument and byte."""
    for name in TEXT_ARGUMENTS:
        v = getattr(args, name, None)
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                bad = v[e.start]
                byte = f"0x{ord(bad) - 0xDC00:02X}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
                raise InputError(f"--{name}: not valid UTF-8 text (byte {byte} at character {e.start}); pass "
                                 "the text in UTF-8") from None


if __name__ == "__main__":
    sys.exit(main())
