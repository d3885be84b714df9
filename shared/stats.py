"""Confidence intervals for a median (plain Python and scipy; no torch, no ray)."""
from __future__ import annotations

import statistics
from typing import Optional, Sequence


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(lower, upper, coverage) of the distribution-free order-statistic interval for the median.

    With the values sorted, [x_(k), x_(n-k+1)] holds the true median with probability
    1 - 2 * P(Binomial(n, 1/2) <= k - 1); k is the largest rank whose coverage is still at least
    `confidence`. Assumes independent values. With fewer than 6 values no interval reaches 95%:
    the range (min, max) is returned with the coverage it does have.
    """
    from scipy.stats import binom
    x = sorted(float(v) for v in values)
    n = len(x)
    if n == 0:
        raise ValueError("no values")
    alpha = 1.0 - confidence
    k = int(binom.ppf(alpha / 2, n, 0.5))        # smallest k with P(B <= k) >= alpha/2
    while k >= 1 and 2 * binom.cdf(k - 1, n, 0.5) > alpha:
        k -= 1
    k = max(k, 1)
    coverage = 1.0 - 2 * float(binom.cdf(k - 1, n, 0.5))
    return x[k - 1], x[n - k], coverage


def p50_with_ci(window_p50s: Sequence[float], samples: Sequence[float],
                confidence: float = 0.95) -> tuple[float, Optional[float], Optional[float]]:
    """The reported p50 and its interval: over several windows, the median of the windows' p50s with
    the interval of that median; with one window, the p50 of its samples with theirs."""
    values = list(window_p50s) if len(window_p50s) > 1 else list(samples)
    if not values:
        raise ValueError("no values")
    low, high, _ = median_ci(values, confidence)
    return float(statistics.median(values)), low, high
