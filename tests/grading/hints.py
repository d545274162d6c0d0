"""Known mistakes: an error signature -> a hint in the feedback.

Each entry: the graded function and output, the dtype (None = either), and the band ``[lo, hi]`` of the
relative error a golden case shows when the mistake is made. The bands are not guesses: each mistake is
implemented in ``tests/grading/fixtures/mistakes/<key>/`` and ``tests/test_grader_hints.py`` grades it, asserts
the measured error lies inside the band (the measured value is in the comment) and that the feedback shows
the hint. Only golden cases are matched (fixed inputs, so the signature is stable); the random cases of the
same check fail with a different error and point at the same hint through the golden one.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hint:
    key: str                # fixtures/mistakes/<key>/ holds the mistaken implementation
    function: str
    output: str
    dtype: str | None       # "float32", "float64", or None (either)
    lo: float
    hi: float
    text: str


HINTS = [
    Hint("laurel_one_plus_w", "laurel", "out", None, 0.4, 0.7,          # measured 0.53 (both dtypes)
         "LAuReL's post_laurel_norm multiplies by w, not 1 + w (Gemma3nRMSNorm with_scale: x * w; chapter 04)."),
    Hint("laurel_eps_outside_sqrt", "laurel", "out", "float64", 3e-7, 1e-5,   # measured 1.6e-6 in float64
         "The eps belongs inside the square root: x / sqrt(mean(x^2) + eps), not x / (sqrt(mean(x^2)) + eps) "
         "(float32 hides it; chapter 04)."),
    Hint("topk_std_ddof1", "gaussian_topk", "out", None, 1e-3, 0.2,       # measured 0.016
         "gaussian_topk uses the population std (divide by n, torch.std(unbiased=False)), not n - 1 (chapter 06)."),
    Hint("rotate_half_interleaved", "apply_rope", "out", None, 0.3, 3.0,  # measured 1.4
         "rotate_half splits the last axis into two contiguous halves [x1, x2] -> [-x2, x1], not interleaved "
         "pairs (chapter 05)."),
    Hint("hann_symmetric", "hann_window", "out", None, 0.0, 2.0,
         "The window is the periodic Hann 0.5 (1 - cos(2 pi n / 512)), not the symmetric one (np.hanning(512) "
         "divides by 511; chapter 09)."),
    Hint("attention_scaled", "self_attention", "out", None, 0.05, 2.0,     # measured 0.39
         "Gemma 3n attention uses scaling 1.0 (q and k are RMS-normed): do not divide the scores by "
         "sqrt(head_dim) (chapter 05)."),
]


def match(function: str, output: str, dtype: str | None, case_label: str, err) -> str | None:
    """The hint whose signature the error of a failing golden case matches, or None."""
    if err is None or not case_label.startswith("golden"):
        return None
    for h in HINTS:
        if h.function == function and h.output in (output, "*") and (h.dtype is None or h.dtype == dtype) \
                and h.lo <= err <= h.hi:
            return h.text
    return None
