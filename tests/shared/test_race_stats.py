"""The race's statistical rules on synthetic data whose answer is known (shared/race_stats.py)."""
import math

import numpy as np
import pytest
from scipy import stats as sp

from fleetbench.shared import race_stats as rs

# The race's documented settings (docs/search.md): rounds 4..8, alpha 0.03, and the noise they are
# proven for: a block median's log scatter of 0.05 between rounds, with a drift that moves every
# configuration of a round alike (the paired test removes it).
MIN_ROUNDS, MAX_ROUNDS, SIGMA, DRIFT, TRIALS = 4, 8, 0.05, 0.10, 400


@pytest.mark.parametrize("k,n,alpha", [(0, 100, 0.05), (3, 200, 0.005), (10, 50, 0.01), (50, 2000, 0.001)])
def test_clopper_pearson_bounds_are_the_beta_quantiles(k, n, alpha):
    assert rs.cp_upper(k, n, alpha) == pytest.approx(sp.beta.ppf(1 - alpha, k + 1, n - k), rel=1e-9)
    low = sp.beta.ppf(alpha, k, n - k + 1) if k else 0.0
    assert rs.cp_lower(k, n, alpha) == pytest.approx(low, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("t,df", [(2.0, 3), (0.5, 10), (-1.2, 4), (8.0, 2)])
def test_student_t_matches_scipy(t, df):
    assert rs.t_sf(t, df) == pytest.approx(sp.t.sf(t, df), rel=1e-9)
    assert rs.t_ppf(0.975, df) == pytest.approx(sp.t.ppf(0.975, df), rel=1e-9)


def _race(true: dict, rng) -> set:
    """A race over `true` (name -> true latency) with the documented rules; the names left in."""
    medians: dict = {n: [] for n in true}
    alive = set(true)
    for r in range(MAX_ROUNDS):
        drift = rng.normal(0, DRIFT)
        for n in true:
            medians[n].append(math.exp(math.log(true[n]) + drift + rng.normal(0, SIGMA)) if n in alive else None)
        if r + 1 >= MIN_ROUNDS:
            verdict = rs.race_step({n: medians[n] for n in alive}, min_rounds=MIN_ROUNDS, max_rounds=MAX_ROUNDS)
            alive -= set(verdict.eliminated)
    return alive


def test_a_configuration_20_percent_slower_is_eliminated_in_95_percent_of_races():
    rng = np.random.default_rng(11)
    out = sum("slow" not in _race({"fast": 1.0, "slow": 1.2}, rng) for _ in range(TRIALS))
    assert out / TRIALS >= 0.95
    # among others racing too (Holm over four comparisons)
    out = sum("slow" not in _race({"fast": 1.0, "slow": 1.2, "b": 1.0, "c": 1.05, "d": 1.02}, rng)
              for _ in range(TRIALS))
    assert out / TRIALS >= 0.95


def test_two_identical_configurations_are_declared_tied_in_95_percent_of_races():
    rng = np.random.default_rng(12)
    tied = sum(_race({"a": 1.0, "b": 1.0}, rng) == {"a", "b"} for _ in range(TRIALS))
    assert tied / TRIALS >= 0.95


def test_nothing_is_eliminated_before_the_minimum_rounds():
    medians = {"a": [1.0, 1.0, 1.0], "b": [3.0, 3.0, 3.1]}
    assert rs.race_step(medians, min_rounds=4).eliminated == []
    verdict = rs.race_step({"a": [1.0, 1.01, 0.99, 1.0], "b": [3.0, 3.1, 2.9, 3.05]}, min_rounds=4)
    assert verdict.incumbent == "a" and verdict.eliminated == ["b"]
    line = verdict.comparisons["b"].evidence("a")
    assert line.startswith("slower than a: ratio 3.0") and line.endswith("after 4 rounds")


def test_holm_rejects_step_down():
    assert rs.holm({"a": 0.001, "b": 0.02, "c": 0.04}, 0.05) == {"a", "b", "c"}
    assert rs.holm({"a": 0.001, "b": 0.03, "c": 0.04}, 0.05) == {"a"}


def test_probability_fastest_favours_the_faster_and_splits_a_tie():
    rng = np.random.default_rng(3)
    drift = rng.normal(0, DRIFT, 8)
    a = np.exp(drift + rng.normal(0, SIGMA, 8))
    p = rs.prob_fastest({"a": list(a), "b": list(a * 1.3)}, seed=1)
    assert p["a"] > 0.99
    same = rs.prob_fastest({"a": [1.0, 1.1, 0.9, 1.0], "b": [1.1, 1.0, 1.0, 0.9]}, seed=1)
    assert abs(same["a"] - same["b"]) < 0.3 and sum(same.values()) == pytest.approx(1.0)


def _sequential(rate: float, total: int, rng, bound=0.01, chunk=200, alpha=0.05) -> tuple[str, int]:
    """A sequential check of a configuration whose true disagreement rate is `rate`: (decision, images)."""
    wrong = rng.random(total) < rate
    for n in range(chunk, total + chunk, chunk):
        n = min(n, total)
        verdict = rs.quality_verdict(int(wrong[:n].sum()), n, total, bound, alpha, chunk)
        if verdict.decision != rs.UNDECIDED:
            return verdict.decision, n
    raise AssertionError("undecided at the end of the set")


@pytest.mark.parametrize("rate", [0.0, 0.005, 0.009])
def test_quality_rule_never_eliminates_within_the_bound_beyond_its_error_rate(rate):
    rng = np.random.default_rng(5)
    trials, total = 120, 10_000
    # the stated level (alpha 0.05) bounds eliminations before the whole set is seen; the last look is
    # the whole set's own figure (what full evaluation would find), not an estimate
    early = [_sequential(rate, total, rng, chunk=1_000) for _ in range(trials)]
    wrong = sum(d == rs.OUTSIDE and n < total for d, n in early)
    assert wrong / trials <= 0.05


def test_quality_rule_stops_early_on_clear_cases_and_is_exact_at_the_end():
    rng = np.random.default_rng(6)
    assert _sequential(0.0, 2000, rng) == (rs.WITHIN, 600)
    assert _sequential(0.2, 2000, rng) == (rs.OUTSIDE, 200)
    assert rs.quality_verdict(0, 600, 2000).decision == rs.WITHIN        # 0 of 600: certain below 1%
    assert rs.quality_verdict(40, 200, 2000).decision == rs.OUTSIDE      # 20%: certain above 1%
    assert rs.quality_verdict(3, 200, 2000).decision == rs.UNDECIDED
    assert rs.quality_verdict(21, 2000, 2000).decision == rs.OUTSIDE     # the whole set: exact
    assert rs.quality_verdict(20, 2000, 2000).decision == rs.WITHIN


def test_quality_rule_with_labels_bounds_the_accuracy_drop():
    # reference right and this wrong on 30 of 300, the reverse on 25: a drop of 5/300, not certain
    assert rs.quality_verdict(55, 300, 2000, worse=30, better=25).decision == rs.UNDECIDED
    assert rs.quality_verdict(60, 300, 2000, worse=60, better=0).decision == rs.OUTSIDE
    assert rs.quality_verdict(0, 800, 2000, worse=0, better=0).decision == rs.WITHIN


def test_pareto_keep_keeps_the_smaller_slower_one_and_drops_the_dominated():
    points = {"fast": (1.0, 0.0, 10.0), "small": (2.0, 0.0, 3.0), "bad": (2.0, 0.0, 10.0),
              "near": (1.0, 0.0, 10.2)}
    assert rs.pareto_keep(points) == {"fast", "small", "near"}
