"""Statistics over seeds, without scipy: mean and spread, and two paired tests of one setting
against another (the same seeds, so each seed's difference is one observation).

    paired_t_test(tita, base)   Student's t on the per-seed differences, two-sided p
    sign_flip_test(tita, base)  exact permutation test: every +/- assignment of the differences
                                (2^n of them), two-sided p; assumes only symmetry under no effect.
                                With n seeds its smallest p is 2 / 2^n (5 seeds: 0.0625).
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence


def _check_pairs(a: Sequence[float], b: Sequence[float]) -> list[float]:
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError(f"a paired test needs at least 2 pairs, got {len(a)}")
    return [float(x) - float(y) for x, y in zip(a, b)]


def describe(values: Sequence[float]) -> dict[str, float | list[float]]:
    """mean, sd (sample standard deviation, n - 1; 0 for one value), min, max and the values."""
    if not values:
        raise ValueError("no values to describe")
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": round(mean, 2), "sd": round(sd, 2), "min": round(min(values), 2), "max": round(max(values), 2),
            "values": [round(float(v), 2) for v in values]}


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Student's paired t-test of a against b: mean difference, t, df and the two-sided p.
    All differences equal: t is +-inf (p 0) unless they are all 0 (t 0, p 1)."""
    diffs = _check_pairs(a, b)
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    return {"mean_difference": round(mean, 3), "t": round(t, 3) if math.isfinite(t) else t, "df": n - 1,
            "p": t_two_sided_p(t, n - 1) if t != 0.0 else 1.0}


def sign_flip_test(a: Sequence[float], b: Sequence[float], max_exact: int = 16) -> dict[str, float]:
    """Exact two-sided sign-flip (permutation) test of the paired differences a - b: the share of
    the 2^n sign assignments whose |sum| is at least the observed |sum|; n at most max_exact."""
    diffs = _check_pairs(a, b)
    if len(diffs) > max_exact:
        raise ValueError(f"an exact sign-flip test over {len(diffs)} pairs is 2^{len(diffs)} sums: "
                         f"use at most {max_exact} pairs")
    observed = abs(sum(diffs)) - 1e-9  # float slack: a flip giving the same |sum| counts
    count = total = 0
    for signs in itertools.product((1.0, -1.0), repeat=len(diffs)):
        total += 1
        count += abs(sum(s * d for s, d in zip(signs, diffs))) >= observed
    return {"mean_difference": round(sum(diffs) / len(diffs), 3), "p": count / total, "n": len(diffs)}
