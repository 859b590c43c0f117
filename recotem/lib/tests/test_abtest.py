"""Always-valid A/B statistics: simulations of continuous monitoring, SRM, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recotem.lib.abtest import (
    DEFAULT_MIXING_SD,
    SRM_WARN_BELOW,
    always_valid,
    results,
    srm_p_value,
    tuned_mixing_sd,
)

ALPHA = 0.05
PEEK_EVERY, MAX_USERS = 50, 5000


def simulate(
    rate_control: float, rate_variant: float, runs: int, seed: int
) -> tuple[np.ndarray, ...]:
    """Cumulative counts at every peek: arrays of shape (runs, peeks)."""
    rng = np.random.default_rng(seed)
    peeks = MAX_USERS // PEEK_EVERY
    users = np.broadcast_to(PEEK_EVERY * np.arange(1, peeks + 1), (runs, peeks))
    control = rng.binomial(PEEK_EVERY, rate_control, size=(runs, peeks)).cumsum(axis=1)
    variant = rng.binomial(PEEK_EVERY, rate_variant, size=(runs, peeks)).cumsum(axis=1)
    return users, control, variant


def naive_z_significant(users: np.ndarray, control: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """The fixed-horizon pooled two-proportion z-test at 5 %, as a dashboard would show it."""
    pooled = (control + variant) / (2 * users)
    se = np.sqrt(np.maximum(pooled * (1 - pooled), 1e-12) * 2 / users)
    significant: np.ndarray = np.abs((variant - control) / users / se) >= 1.959964
    return significant


def test_it_keeps_false_winners_below_alpha_however_often_one_peeks() -> None:
    users, control, variant = simulate(0.10, 0.10, runs=2000, seed=11)
    _, low, high, p = always_valid(users, control, users, variant, alpha=ALPHA)
    ever_declared = ((low > 0) | (high < 0)).any(axis=1)
    assert ever_declared.mean() <= ALPHA, ever_declared.mean()
    assert np.array_equal((p <= ALPHA), (low > 0) | (high < 0))

    # The contrast that shows this simulation can fail: the naive z-test peeked the same way.
    naive_ever = naive_z_significant(users, control, variant).any(axis=1)
    assert naive_ever.mean() > 2 * ALPHA, naive_ever.mean()
    # ...while each single look of the naive test is about right, which is what misleads.
    assert naive_z_significant(users, control, variant)[:, -1].mean() < 1.5 * ALPHA


def test_it_finds_a_three_point_lift_within_five_thousand_users_per_arm() -> None:
    users, control, variant = simulate(0.10, 0.13, runs=2000, seed=12)
    _, low, high, _ = always_valid(users, control, users, variant, alpha=ALPHA)
    detected = (low > 0).any(axis=1)
    assert detected.mean() >= 0.8, detected.mean()

    # The scalar front end decides exactly as the vectorised core at sampled looks.
    rng = np.random.default_rng(0)
    for run, peek in zip(rng.integers(0, 2000, 40), rng.integers(0, 100, 40), strict=True):
        n, c, v = int(users[run, peek]), int(control[run, peek]), int(variant[run, peek])
        expected = (
            "variant_better"
            if low[run, peek] > 0
            else "control_better"
            if high[run, peek] < 0
            else "continue"
        )
        assert results(n, c, n, v, alpha=ALPHA).decision == expected


def test_it_declares_no_difference_only_when_the_interval_is_inside_min_effect() -> None:
    close = results(40_000, 4_000, 40_000, 4_020, min_effect=0.01)
    assert close.decision == "no_difference"
    assert -0.01 < close.ci_low < 0 < close.ci_high < 0.01
    assert results(40_000, 4_000, 40_000, 4_020).decision == "continue"  # no min_effect given
    assert results(400, 40, 400, 42, min_effect=0.01).decision == "continue"  # too few users


def test_it_reports_lift_and_control_better() -> None:
    res = results(5000, 650, 5000, 500)
    assert res.decision == "control_better"
    assert res.lift == pytest.approx(500 / 650 - 1)
    assert res.difference == pytest.approx(0.1 - 0.13)
    assert res.ci_high < 0 and res.p_value <= ALPHA
    assert set(res.as_dict()) >= {"lift", "ci_low", "ci_high", "p_value", "decision"}


@pytest.mark.parametrize(
    "counts",
    [(0, 0, 0, 0), (0, 0, 10, 3), (10, 0, 10, 0), (10, 10, 10, 10), (1, 1, 1, 0), (3, 0, 5, 5)],
)
def test_it_guards_small_and_degenerate_counts(counts: tuple[int, int, int, int]) -> None:
    res = results(*counts, min_effect=0.05)
    values = [res.ci_low, res.ci_high, res.p_value]
    assert all(math.isfinite(v) for v in values)
    assert -1.0 <= res.ci_low <= res.ci_high <= 1.0 and 0.0 <= res.p_value <= 1.0
    assert res.decision == "continue"  # nothing can be concluded from a handful of users
    if counts[0] == 0 or counts[1] == 0:
        assert res.lift is None


def test_it_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        results(10, 11, 10, 1)
    with pytest.raises(ValueError):
        results(-1, 0, 10, 1)
    with pytest.raises(ValueError):
        results(10, 1, 10, 1, alpha=0)


@settings(max_examples=300, deadline=None, database=None)
@given(
    n_c=st.integers(0, 10**6),
    n_v=st.integers(0, 10**6),
    f_c=st.floats(0, 1),
    f_v=st.floats(0, 1),
    alpha=st.sampled_from([0.01, 0.05, 0.1]),
)
def test_it_keeps_interval_and_p_value_consistent(
    n_c: int, n_v: int, f_c: float, f_v: float, alpha: float
) -> None:
    x_c, x_v = int(n_c * f_c), int(n_v * f_v)
    res = results(n_c, x_c, n_v, x_v, alpha=alpha)
    assert all(math.isfinite(v) for v in (res.ci_low, res.ci_high, res.p_value))
    assert -1.0 <= res.ci_low <= res.ci_high <= 1.0
    if res.difference is not None:
        assert res.ci_low <= res.difference <= res.ci_high
    excludes_zero = res.ci_low > 0 or res.ci_high < 0
    if res.p_value < alpha * (1 - 1e-9):
        assert excludes_zero and res.decision in ("variant_better", "control_better")
    elif res.p_value > alpha * (1 + 1e-9):
        assert not excludes_zero and res.decision == "continue"


def test_it_tunes_the_mixing_sd_to_the_planned_sample() -> None:
    # Narrowest interval at the planned size: a larger or smaller tau widens it there.
    n, rate = 2000, 0.10
    tau = tuned_mixing_sd(n, rate)
    assert tau == pytest.approx(DEFAULT_MIXING_SD)
    widths = [
        results(n, int(n * rate), n, int(n * rate), mixing_sd=t).ci_high
        for t in (tau / 2, tau, tau * 2)
    ]
    assert widths[1] < widths[0] and widths[1] < widths[2]
    assert tuned_mixing_sd(20_000, rate) < tau


def test_it_flags_a_sample_ratio_mismatch() -> None:
    assert SRM_WARN_BELOW == 0.001
    assert srm_p_value([5000, 5400], [0.5, 0.5]) < SRM_WARN_BELOW
    assert srm_p_value([5000, 5050], [50, 50]) > 0.5
    # 5,000 vs 5,300 is suspicious (p ~ 0.003) but not below the 0.001 alarm: chi-square with
    # one degree of freedom equals the two-sided normal test of the share, checked here.
    z = (5300 - 10300 / 2) / math.sqrt(10300 * 0.25)
    assert srm_p_value([5000, 5300], [1, 1]) == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
    assert SRM_WARN_BELOW < srm_p_value([5000, 5300], [1, 1]) < 0.005
    # Unequal designs are tested against their weights, not against 50/50.
    assert srm_p_value([9000, 1000], [90, 10]) == pytest.approx(1.0)
    assert srm_p_value([5000, 5000], [90, 10]) < 1e-12


def test_it_handles_empty_and_impossible_srm_inputs() -> None:
    assert srm_p_value([0, 0], [0.5, 0.5]) == 1.0
    assert srm_p_value([10, 0], [1, 0]) == 1.0  # one live arm: nothing to compare
    assert srm_p_value([10, 1], [1, 0]) == 0.0  # a user in a switched-off arm
    with pytest.raises(ValueError):
        srm_p_value([1, 2, 3], [1, 1])
    with pytest.raises(ValueError):
        srm_p_value([1, 2], [-1, 1])
