"""The statistics of a race (docs/search.md): pure functions over sample arrays, no Ray, no DuckDB, no scipy.

- Quality, sequentially: an exact (Clopper-Pearson) bound on the disagreement rate with the fp32 reference
  (and, where labels exist, on the accuracy drop), checked after each chunk of a fixed seeded order, with
  the error rate split over the looks (Bonferroni), so stopping early keeps the stated level.
- Speed, by racing: per round one block per configuration; the paired test is a t-test over rounds on
  log(block median / the incumbent's block median of the same round), two-sided (the incumbent is chosen
  as the fastest in the sample, so a one-sided test would err twice as often), Holm-corrected over the
  configurations still racing, with the level split over the rounds at which it looks.
- The answer: the tie group (not shown slower than the winner) and the probability that each is the
  fastest (a seeded bootstrap over rounds).

The measuring process imports this module, so it needs numpy and the standard library only.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

WITHIN, OUTSIDE, UNDECIDED = "within", "outside", "undecided"


# -- distributions ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _log_factorials(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = np.arange(k + 1)
    log_fact = _log_factorials(n)
    logs = log_fact[n] - log_fact[: k + 1] - log_fact[n - i] + i * math.log(p) + (n - i) * math.log1p(-p)
    top = logs.max()
    return float(min(1.0, math.exp(top) * np.exp(logs - top).sum()))


def _bisect(f, lo: float, hi: float, iters: int = 48) -> float:
    """The root of an increasing function f on [lo, hi]."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def cp_upper(k: int, n: int, alpha: float) -> float:
    """One-sided exact upper bound on a binomial rate from k of n: P(rate <= bound) >= 1 - alpha
    (the Beta(k + 1, n - k) quantile 1 - alpha, found where P(X <= k | p) = alpha)."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    return _bisect(lambda p: alpha - binom_cdf(k, n, p), 0.0, 1.0)


def cp_lower(k: int, n: int, alpha: float) -> float:
    """One-sided exact lower bound: P(rate >= bound) >= 1 - alpha (where P(X >= k | p) = alpha)."""
    if n <= 0 or k <= 0:
        return 0.0
    return _bisect(lambda p: (1.0 - binom_cdf(k - 1, n, p)) - alpha, 0.0, 1.0)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 3e-16:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


@functools.lru_cache(maxsize=1024)
def t_ppf(q: float, df: float) -> float:
    """The q quantile of Student's t (q in (0, 1))."""
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    hi = 1.0
    while t_sf(hi, df) > 1.0 - q:
        hi *= 2.0
    return _bisect(lambda t: (1.0 - t_sf(t, df)) - q, 0.0, hi)


# -- quality, sequentially ----------------------------------------------------------------------

@dataclass(frozen=True)
class QualityVerdict:
    decision: str                 # within | outside | undecided
    n: int                        # predictions compared so far
    drop: float                   # the point estimate (disagreement rate, or accuracy drop with labels)
    low: float                    # the one-sided bounds at this look's level
    high: float

    def evidence(self, bound: float) -> str:
        where = {WITHIN: "within", OUTSIDE: "outside"}.get(self.decision, "not yet decided against")
        return (f"quality {where} the bound {bound:g}: drop {self.drop:.4f} [{self.low:.4f}, {self.high:.4f}] "
                f"after {self.n} images")


def looks(total: int, chunk: int) -> int:
    """How many times a sequential check of `total` items in chunks of `chunk` looks at its bound."""
    return max(1, math.ceil(total / max(1, chunk)))


def quality_verdict(disagree: int, n: int, total: int, bound: float = 0.01, alpha: float = 0.05,
                    chunk: int = 200, worse: Optional[int] = None, better: Optional[int] = None) -> QualityVerdict:
    """After `n` of `total` items (in a fixed seeded order): is the configuration's drop certain to be
    within `bound`, certain to be outside it, or not yet known?

    Without labels the drop is the disagreement rate with the fp32 reference (`disagree` of `n`). With
    labels, `worse` (the reference right, this wrong) and `better` (the reverse) give the accuracy drop
    (worse - better) / n, bounded by [lower(worse) - upper(better), upper(worse) - lower(better)].
    Each look uses alpha / looks (split again between the two counts with labels), so the chance of a
    wrong decision over the whole sequence stays below alpha. At n == total the figure is exact and the
    decision is the point estimate against the bound.
    """
    if n <= 0:
        return QualityVerdict(UNDECIDED, 0, 0.0, 0.0, 1.0)
    a = alpha / looks(total, chunk)
    if worse is None:
        drop, low, high = disagree / n, cp_lower(disagree, n, a), cp_upper(disagree, n, a)
    else:
        b, c = worse, better or 0
        drop = (b - c) / n
        low = cp_lower(b, n, a / 2) - cp_upper(c, n, a / 2)
        high = cp_upper(b, n, a / 2) - cp_lower(c, n, a / 2)
    if n >= total:
        return QualityVerdict(WITHIN if drop <= bound + 1e-12 else OUTSIDE, n, drop, drop, drop)
    decision = WITHIN if high <= bound else OUTSIDE if low > bound else UNDECIDED
    return QualityVerdict(decision, n, drop, low, high)


def verdict_of(counts: Mapping) -> QualityVerdict:
    """The rule applied to a sequential check's stored counts (agent/sequential.py writes them): the
    agent stops with it, the coordinator decides with it."""
    return quality_verdict(counts["disagree"], counts["n"], counts["total"], counts["bound"], counts["alpha"],
                           counts["chunk"], counts.get("worse"), counts.get("better"))


def seeded_order(total: int, seed: int) -> np.ndarray:
    """The fixed order in which a sequential check visits the evaluation set."""
    return np.random.default_rng(seed).permutation(total)


# -- speed, by racing ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """One configuration against the incumbent over the rounds both ran."""

    name: str
    ratio: float                 # geometric mean over rounds of (its block median / the incumbent's)
    low: float                   # confidence interval of that ratio
    high: float
    p: float                     # two-sided paired t-test p-value (1.0 with under two rounds)
    rounds: int
    slower: bool = False         # Holm-rejected: slower than the incumbent

    def evidence(self, incumbent: str) -> str:
        return (f"slower than {incumbent}: ratio {self.ratio:.2f} [{self.low:.2f}, {self.high:.2f}] "
                f"after {self.rounds} rounds")


@dataclass(frozen=True)
class RaceVerdict:
    incumbent: str
    comparisons: dict[str, Comparison] = field(default_factory=dict)

    @property
    def eliminated(self) -> list[str]:
        return sorted(n for n, c in self.comparisons.items() if c.slower)

    @property
    def tied(self) -> list[str]:
        """The incumbent and every configuration not shown slower than it."""
        return [self.incumbent] + sorted(n for n, c in self.comparisons.items() if not c.slower)


def _log_table(medians: Mapping[str, Sequence[Optional[float]]]) -> dict[str, np.ndarray]:
    """name -> log block median per round (nan where the configuration did not run that round)."""
    width = max((len(v) for v in medians.values()), default=0)
    out = {}
    for name, values in medians.items():
        row = np.full(width, np.nan)
        for i, v in enumerate(values):
            if v is not None and v > 0 and math.isfinite(v):
                row[i] = math.log(v)
        out[name] = row
    return out


def incumbent_of(logs: Mapping[str, np.ndarray]) -> str:
    """The configuration with the smallest mean log block median over the rounds every one of them ran
    (over each one's own rounds where none is shared); ties by name."""
    table = np.vstack(list(logs.values()))
    shared = ~np.isnan(table).any(axis=0)
    means = {n: float(np.nanmean(v[shared] if shared.any() else v)) for n, v in logs.items() if np.isfinite(v).any()}
    return min(sorted(means), key=lambda n: means[n])


def paired(name: str, mine: np.ndarray, theirs: np.ndarray, confidence: float = 0.95) -> Comparison:
    """The paired comparison over the rounds both ran: d = log(mine) - log(theirs) per round."""
    both = ~np.isnan(mine) & ~np.isnan(theirs)
    d = mine[both] - theirs[both]
    n = int(d.size)
    if n == 0:
        return Comparison(name, math.nan, math.nan, math.nan, 1.0, 0)
    mean = float(d.mean())
    if n < 2:
        return Comparison(name, math.exp(mean), 0.0, math.inf, 1.0, n)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
        return Comparison(name, math.exp(mean), math.exp(mean), math.exp(mean), p, n)
    t = mean / se
    p = min(1.0, 2.0 * t_sf(abs(t), n - 1))
    half = t_ppf(0.5 + confidence / 2.0, n - 1) * se
    return Comparison(name, math.exp(mean), math.exp(mean - half), math.exp(mean + half), p, n)


def holm(pvalues: Mapping[str, float], alpha: float) -> set[str]:
    """The names whose hypotheses Holm's step-down procedure rejects at family level alpha."""
    order = sorted(pvalues, key=lambda n: (pvalues[n], n))
    m, rejected = len(order), set()
    for i, name in enumerate(order):
        if pvalues[name] > alpha / (m - i):
            break
        rejected.add(name)
    return rejected


def race_step(medians: Mapping[str, Sequence[Optional[float]]], alpha: float = 0.05, min_rounds: int = 4,
              max_rounds: int = 8, confidence: float = 0.95) -> RaceVerdict:
    """One look at a race: each configuration's block medians per round (None where it did not run).

    The incumbent is the fastest so far; a configuration with at least `min_rounds` rounds paired with it
    is eliminated when the two-sided paired test, Holm-corrected over those still racing, rejects at
    alpha / (max_rounds - min_rounds + 1) (the race looks once per round from min_rounds to max_rounds)
    and it is the slower one.
    """
    logs = _log_table(medians)
    inc = incumbent_of(logs)
    comps = {n: paired(n, v, logs[inc], confidence) for n, v in logs.items() if n != inc}
    ready = {n: c.p for n, c in comps.items() if c.rounds >= min_rounds and c.ratio > 1.0}
    per_look = alpha / max(1, max_rounds - min_rounds + 1)
    out = holm({**ready, **{n: 1.0 for n in comps if n not in ready}}, per_look)
    return RaceVerdict(inc, {n: Comparison(**{**c.__dict__, "slower": n in out}) for n, c in comps.items()})


def prob_fastest(medians: Mapping[str, Sequence[Optional[float]]], draws: int = 2000,
                 seed: int = 0) -> dict[str, float]:
    """The share of bootstrap resamples of the rounds (rounds every configuration ran) in which each
    configuration has the smallest mean log block median."""
    logs = _log_table(medians)
    names = sorted(logs)
    table = np.vstack([logs[n] for n in names])
    table = table[:, ~np.isnan(table).any(axis=0)]
    if table.shape[1] == 0:
        return {n: 1.0 / len(names) for n in names} if names else {}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, table.shape[1], size=(draws, table.shape[1]))
    means = table[:, idx].mean(axis=2)          # (configs, draws)
    wins = np.bincount(means.argmin(axis=0), minlength=len(names))
    return {n: float(w) / draws for n, w in zip(names, wins)}


def pareto_keep(points: Mapping[str, tuple[float, float, float]], quality_tol: float = 0.0,
                size_tol: float = 0.05) -> set[str]:
    """Names on the front of (latency, quality drop, size): lower is better in all three. A point is
    dominated only by one no worse in all three and better in one beyond the noise: quality drops
    within `quality_tol` of each other and sizes within `size_tol` (relative) count as equal, and the
    latency is compared by its value (the race's test decides what is beyond its noise)."""
    def no_worse(a, b) -> bool:
        return (a[0] <= b[0] and a[1] <= b[1] + quality_tol and a[2] <= b[2] * (1 + size_tol))

    def better(a, b) -> bool:
        return a[0] < b[0] or a[1] < b[1] - quality_tol or a[2] < b[2] * (1 - size_tol)

    return {n for n, p in points.items()
            if not any(no_worse(q, p) and better(q, p) for m, q in points.items() if m != n)}
