"""Choosing the next token from the logits: greedy, or sampling with temperature, top-k and top-p (nucleus).

The idea: the model gives one logit per vocabulary entry for the next position. Greedy decoding takes the
largest (``argmax``; the first one on ties, as torch does). Sampling turns the logits into probabilities and
draws from them, after reshaping the distribution, in this order (the order of transformers' logits warpers):

1. temperature T: ``logits / T`` (T < 1 sharpens, T > 1 flattens; T -> 0 approaches greedy);
2. top-k: keep the k largest logits, set the rest to -inf (k = 0: off);
3. top-p: sort by probability, keep the smallest set of tokens whose total probability reaches p (a token
   is kept while the probability *before* it is still < p; the most likely token is always kept), drop the rest
   (p = 1: off);
4. ``softmax`` (in float64) and one draw with a seeded ``numpy.random.Generator``.

``temperature = 0`` means greedy (no draw). The same seed gives the same tokens on every run. Draws are not
meant to equal torch's random stream: only greedy decoding is compared token for token with the reference.

Source: transformers 5.24 ``generation/logits_process.py`` (``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper``). Left out: repetition / presence penalties, min-p, typical, beam search, batched sampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError, NumericsError
from .ops import softmax


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0     # 0 = greedy
    top_k: int = 0               # 0 = no top-k filter
    top_p: float = 1.0           # 1 = no top-p filter
    seed: int | None = None      # None = fresh entropy

    def validate(self) -> "SamplingParams":
        """Raise InputError naming the first argument outside its range."""
        t, k, p = self.temperature, self.top_k, self.top_p
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0 or t > 100:
            raise InputError(f"temperature (--temperature) must be a number in [0, 100] (0 = greedy), got {t!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise InputError(f"top_k (--top-k) must be an integer >= 0 (0 = off), got {k!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p <= 1:
            raise InputError(f"top_p (--top-p) must lie in (0, 1] (1 = off), got {p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))
                                      or self.seed < 0):
            raise InputError(f"seed (--seed) must be an integer >= 0, got {self.seed!r}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_logits(logits) -> np.ndarray:
    """Logits must be a non-empty 1-D array with no NaN and no +inf (-inf is a masked token and fine): a NaN
    would make argmax pick the NaN's index and the cumulative sum of probabilities NaN, which points past the
    vocabulary. NumericsError otherwise."""
    x = np.asarray(logits)
    if x.ndim != 1 or x.size == 0:
        raise InputError(f"logits must be a non-empty 1-D array [V], got shape {list(x.shape)}")
    bad = np.isnan(x) | (x == np.inf)
    if bad.any() or not (x > -np.inf).any():
        what = f"NaN or +inf at token id {int(np.argmax(bad))}" if bad.any() else "-inf at every token id"
        raise NumericsError(f"logits: {what} ({int(bad.sum())} of {x.size} entries non-finite); "
                            "the forward pass produced garbage (corrupt weights?), no token can be chosen")
    return x


def greedy(logits) -> int:
    """Index of the largest logit (the first on ties).   [V] -> int"""
    return int(np.argmax(_check_logits(logits)))


def warp(logits, params: SamplingParams) -> np.ndarray:
    """Temperature, then top-k, then top-p: logits with dropped tokens at -inf (float64).   [V] -> [V]"""
    x = np.asarray(logits, dtype=np.float64) / params.temperature                 # [V]
    if params.top_k and params.top_k < x.size:
        kth = np.sort(x)[-params.top_k]                                              # k-th largest value
        x = np.where(x < kth, -np.inf, x)                                            # [V] (ties at the k-th kept)
    if params.top_p < 1.0:
        order = np.argsort(-x, kind="stable")                                        # [V] most likely first
        probs = softmax(x[order])                                                   # [V]
        before = np.cumsum(probs) - probs                                            # mass ranked above each
        drop = order[before >= params.top_p]
        x = x.copy()
        x[drop] = -np.inf
    return x


def probabilities(logits, params: SamplingParams) -> np.ndarray:
    """The distribution a token is drawn from (after temperature, top-k, top-p).   [V] -> [V]"""
    return softmax(warp(logits, params))


def sample_next(logits, params: SamplingParams, rng: np.random.Generator | None = None) -> int:
    """The next token id: ``greedy`` for temperature 0, else one draw from ``probabilities``.   [V] -> int"""
    if params.greedy:
        return greedy(logits)
    probs = probabilities(_check_logits(logits), params)                             # [V]
    rng = rng if rng is not None else np.random.default_rng(params.seed)
    # inverse CDF with one uniform draw: the same seed gives the same token on every platform
    # (u < 1, so the target lies below the last cumulative value; zero-probability tokens are never chosen)
    cdf = np.cumsum(probs)                                                           # [V]
    if not np.isfinite(cdf[-1]) or cdf[-1] <= 0:
        raise NumericsError(f"logits: the sampling distribution sums to {cdf[-1]}; no token can be chosen")
    # min(): a rounding at the top of the CDF can never point one past the last id
    return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), cdf.size - 1)
