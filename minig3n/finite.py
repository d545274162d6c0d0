"""Catching NaN and infinity where they first appear, not as ``<pad><pad>`` at the end.

The idea: a corrupt weight (a NaN in one row, an overflow in a hand-edited checkpoint) turns every value it
touches into NaN, and the model then "generates" token 0 forever with exit code 0. ``decoder.forward`` checks
the few tensors that everything flows through (the embeddings, each layer's output streams and new K/V, the
logits): one ``np.isfinite`` pass over [K, B, T, D] per layer, nothing next to the layer's matrix products.
Only when a check fails does it pay for a diagnosis: it runs the same forward again with every traced tensor
recorded (the names ``minig3n trace`` writes) and stops at the first one holding a non-finite value.
``NumericsError`` then names that tensor, e.g. ``model.language_model.layers.3.laurel: 7 of 512 values are NaN
or infinite (first non-finite tensor of the forward pass; corrupt weights?)``.
"""
from __future__ import annotations

import numpy as np

from .errors import NumericsError


def all_finite(*arrays) -> bool:
    """True if every array holds only finite values (float arrays only; integer arrays always are)."""
    return all(not np.issubdtype(np.asarray(a).dtype, np.floating) or bool(np.isfinite(a).all()) for a in arrays)


class NonFinite(Exception):
    """Raised by a forward's cheap check: ``where`` names the module whose output went non-finite."""

    def __init__(self, where: str):
        self.where = where


class _Found(Exception):
    def __init__(self, name: str, array: np.ndarray):
        self.name, self.array = name, array


class StopAtNonFinite(dict):
    """A ``trace`` dict that raises ``_Found`` at the first non-finite tensor stored in it."""

    def __setitem__(self, name, array):
        if not all_finite(array):
            raise _Found(name, np.asarray(array))
        super().__setitem__(name, array)


def locate(rerun, fallback: str) -> NumericsError:
    """Run ``rerun(trace)`` (the failed forward again, recording into ``trace``) and return the NumericsError
    naming the first non-finite traced tensor; ``fallback`` names the module where the cheap check failed,
    used if no traced tensor shows it (traces keep batch row 0 only; the value may be in another row)."""
    try:
        rerun(StopAtNonFinite())
    except _Found as f:
        a = f.array
        bad = int(np.size(a) - np.isfinite(a).sum())
        kinds = ("NaN" if not np.isinf(a).any() else "infinite" if not np.isnan(a).any() else "NaN or infinite")
        return NumericsError(f"{f.name}: {bad} of {np.size(a)} values are {kinds} (the first non-finite tensor of "
                             "the forward pass; corrupt weights, or a config the numbers cannot take?)")
    return NumericsError(f"{fallback}: produced NaN or infinite values (corrupt weights, or a config the numbers "
                         "cannot take?)")
