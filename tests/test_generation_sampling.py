"""Sampling: greedy, temperature, top-k, top-p, seeds, argument checks."""
import numpy as np
import pytest

from minig3n.errors import InputError
from tests.adapters import generation as A

pytestmark = pytest.mark.generation

LOGITS = np.random.default_rng(0).normal(size=200) * 3.0


def test_greedy_is_argmax_first_on_ties():
    assert A.run_sample_next(LOGITS) == int(np.argmax(LOGITS))
    assert A.run_sample_next([1.0, 3.0, 3.0, 0.0]) == 1


def test_seeded_sampling_is_reproducible():
    a = [A.run_sample_next(LOGITS, 1.0, 0, 1.0, rng=A.new_rng(7)) for _ in range(5)]
    b = [A.run_sample_next(LOGITS, 1.0, 0, 1.0, rng=A.new_rng(7)) for _ in range(5)]
    assert a == b
    r1, r2 = A.new_rng(123), A.new_rng(123)
    s1 = [A.run_sample_next(LOGITS, 1.3, 50, 0.9, rng=r1) for _ in range(50)]
    s2 = [A.run_sample_next(LOGITS, 1.3, 50, 0.9, rng=r2) for _ in range(50)]
    assert s1 == s2 and len(set(s1)) > 5          # reproducible, and really sampling


def test_low_temperature_and_top_k_1_equal_greedy():
    g = int(np.argmax(LOGITS))
    rng = A.new_rng(1)
    assert all(A.run_sample_next(LOGITS, 1e-4, rng=rng) == g for _ in range(20))
    assert all(A.run_sample_next(LOGITS, 5.0, 1, rng=rng) == g for _ in range(20))
    assert all(A.run_sample_next(LOGITS, 2.0, 0, 1e-6, rng=rng) == g for _ in range(20))


def test_hand_derived_filters():
    """logits log([0.5, 0.3, 0.15, 0.05]), temperature 1:
    top-k 2 keeps 0.5 and 0.3 -> renormalised [0.625, 0.375, 0, 0];
    top-p 0.75: the mass ranked above each token is [0, 0.5, 0.8, 0.95]; tokens with mass-above < 0.75 are kept
    (the first two) -> again [0.625, 0.375, 0, 0]; top-p 0.85 also keeps the third -> [0.5, 0.3, 0.15] / 0.95.
    (A boundary exactly at 0.8 would depend on rounding, here as in the reference.)"""
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(A.run_probabilities(logits, 1.0, 2), [0.625, 0.375, 0, 0], atol=1e-12)
    np.testing.assert_allclose(A.run_probabilities(logits, 1.0, 0, 0.75), [0.625, 0.375, 0, 0], atol=1e-12)
    np.testing.assert_allclose(A.run_probabilities(logits, 1.0, 0, 0.85), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0],
                               atol=1e-12)
    # temperature 2 halves the logits: p ~ sqrt(p)
    want = np.sqrt([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(A.run_probabilities(logits, 2.0), want / want.sum(), atol=1e-12)


def test_sampling_frequencies_follow_probabilities():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    rng = A.new_rng(2024)
    counts = np.bincount([A.run_sample_next(logits, 1.0, rng=rng) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)   # ~4 standard errors at n=4000


@pytest.mark.parametrize("kw,name", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=1e6), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(top_p=-0.2), "top_p"), (dict(seed=-3), "seed"),
])
def test_bad_sampling_values(kw, name):
    with pytest.raises(InputError, match=name):
        A.run_sample_next(LOGITS, **kw)
