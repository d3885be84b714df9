"""The p50 interval on known distributions: its coverage is what it claims."""
import numpy as np
import pytest

from fleetbench.shared.stats import median_ci, p50_with_ci


@pytest.mark.parametrize("draw,true_median", [
    (lambda rng, n: rng.lognormal(0.0, 0.6, n), 1.0),            # skewed, like latencies
    (lambda rng, n: rng.exponential(2.0, n), 2.0 * np.log(2)),
    (lambda rng, n: rng.normal(5.0, 1.0, n), 5.0),
])
@pytest.mark.parametrize("n", [10, 50, 400])
def test_median_interval_covers_the_true_median_95_percent_of_the_time(draw, true_median, n):
    rng = np.random.default_rng(n)
    trials = 2000
    hits = 0
    for _ in range(trials):
        low, high, coverage = median_ci(draw(rng, n))
        hits += low <= true_median <= high
    assert 0.95 <= coverage < 0.99
    assert 0.93 <= hits / trials <= 0.995, hits / trials   # binomial noise of 2000 trials is ~0.5%


def test_median_interval_ranks_are_the_textbook_ones():
    low, high, coverage = median_ci(range(1, 11))      # n = 10: ranks 2 and 9, 97.85%
    assert (low, high) == (2, 9) and coverage == pytest.approx(1 - 2 * 11 / 1024)
    low, high, coverage = median_ci([3.0, 1.0, 2.0])   # too few for 95%: the range, with what it covers
    assert (low, high) == (1.0, 3.0) and coverage == pytest.approx(0.75)
    with pytest.raises(ValueError):
        median_ci([])


def test_p50_with_ci_uses_windows_when_there_are_several():
    p50, low, high = p50_with_ci([10.0, 12.0, 11.0], samples=[1.0] * 100)
    assert (p50, low, high) == (11.0, 10.0, 12.0)
    p50, low, high = p50_with_ci([5.0], samples=list(range(101)))
    assert p50 == 50 and low < 50 < high
