"""A module's weights as a prefix view: ``p["linear_left.weight"]`` is ``source["...laurel.linear_left.weight"]``.

The idea: every pure function in minig3n takes ``p``, the weights of its module keyed by the reference's
names relative to that module (``laurel(x, p)`` reads ``p["linear_left.weight"]``). ``ParamView(source,
prefix)`` gives that view over any mapping of full names to arrays: a ``Checkpoint`` (tensors loaded when
first read) or a plain dict (as the golden tests pass). Making one is free, nothing is copied or loaded;
a lookup goes straight to the source, only iterating lists the names under the prefix. ``sub_params(p,
"laurel")`` is the view one module down.

Left out: writing (views are read-only).
"""
from __future__ import annotations

from collections.abc import Mapping

from .errors import CheckpointError


class ParamView(Mapping):
    """``source[prefix + key]`` as ``view[key]``, read-only. A missing weight raises CheckpointError with its
    full name."""

    def __init__(self, source: Mapping, prefix: str = ""):
        self.source, self.prefix = source, prefix

    def __getitem__(self, key: str):
        try:
            return self.source[self.prefix + key]
        except KeyError:
            raise CheckpointError(f"weight '{self.prefix}{key}' is missing") from None

    def __contains__(self, key) -> bool:
        return (self.prefix + key) in self.source

    def __iter__(self):
        n = len(self.prefix)
        return iter([k[n:] for k in self.source if k.startswith(self.prefix)])

    def __len__(self):
        return sum(1 for _ in self)


def sub_params(p: Mapping, name: str) -> ParamView:
    """The weights of sub-module ``name`` of ``p``, keyed by the rest of their names:
    ``sub_params(p, "conformer.0")["norm.weight"]`` is ``p["conformer.0.norm.weight"]``."""
    prefix = name.rstrip(".") + "."
    if isinstance(p, ParamView):
        return ParamView(p.source, p.prefix + prefix)
    return ParamView(p, prefix)
