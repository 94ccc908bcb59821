"""The benchmark's bootstrap statistics on made-up numbers with known answers."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from kd_lab.statistics import (
    Interval,
    bootstrap_counts,
    gap_closed_interval,
    mean_interval,
    paired_difference,
    resampled_means,
    teacher_lead_interval,
)


def test_constant_scores_give_a_zero_width_interval_at_that_value() -> None:
    interval = mean_interval(np.full((5, 24), 0.7))
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((0.7, 0.7, 0.7), abs=1e-12)
    assert interval.resamples == 10_000 and interval.confidence == 0.95


def test_bootstrap_counts_draw_n_with_replacement() -> None:
    counts = bootstrap_counts(4, 20_000, np.random.default_rng(0))
    assert counts.shape == (20_000, 4) and (counts.sum(axis=1) == 4).all()
    # each item is drawn Binomial(4, 1/4) times: mean 1, variance 3/4
    assert counts.mean() == pytest.approx(1.0, abs=0.02) and counts.var() == pytest.approx(0.75, abs=0.03)


def test_a_constant_shift_is_exact_when_paired_while_the_unpaired_intervals_overlap() -> None:
    rng = np.random.default_rng(3)
    # cases differ a lot (easy and hard phantoms), seeds a little
    base = rng.uniform(0.05, 0.85, size=(1, 24)) + rng.normal(0.0, 0.05, size=(5, 1))
    method = base + 0.1
    difference = paired_difference(method, base)
    assert difference.estimate == pytest.approx(0.1, abs=1e-12)
    assert difference.low == pytest.approx(0.1, abs=1e-12) and difference.high == pytest.approx(0.1, abs=1e-12)
    a, b = mean_interval(method), mean_interval(base)
    assert a.estimate - b.estimate == pytest.approx(0.1)
    assert a.low < b.high  # unpaired, the two intervals overlap: the spread of cases hides the shift
    assert b.width > 0.1


def test_a_single_seed_of_many_symmetric_cases_matches_the_normal_approximation() -> None:
    # 400 cases, half -1 and half +1: the resampled mean is approximately N(0, (1 / sqrt(400))^2) = N(0, 0.05^2),
    # so the 95 % interval is about +-1.96 * 0.05 = +-0.098 (by hand); the seed draw is trivial with one seed.
    scores = np.array([[-1.0, 1.0] * 200])
    interval = mean_interval(scores)
    assert interval.estimate == 0.0
    assert interval.low == pytest.approx(-0.098, abs=0.006) and interval.high == pytest.approx(0.098, abs=0.006)


def test_two_seeds_two_cases_by_hand() -> None:
    # cell (s, n) = 2 s + n: a resample's mean is 2 * (mean drawn seed) + (mean drawn case). Each of the 16 equally
    # likely draws has probability 1/16 > 2.5 %, so the 95 % interval runs from the smallest (0: seed 0 twice, case
    # 0 twice) to the largest (3) resampled mean; the estimate is 1.5.
    interval = mean_interval([[0.0, 1.0], [2.0, 3.0]])
    assert (interval.estimate, interval.low, interval.high) == (1.5, 0.0, 3.0)


def _exact_distribution(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every resample of seeds and cases, enumerated: (sorted resampled means, their probabilities)."""
    s, n = scores.shape
    values, weights = [], []
    for seeds in itertools.product(range(s), repeat=s):
        for cases in itertools.product(range(n), repeat=n):
            values.append(np.nanmean(scores[np.ix_(seeds, cases)]))
            weights.append(1.0)
    order = np.argsort(values, kind="stable")
    return np.asarray(values)[order], np.asarray(weights)[order] / len(values)


def test_interval_matches_brute_force_enumeration_of_every_resample() -> None:
    scores = np.array([[0.61, 0.35, 0.82], [0.55, 0.20, 0.90], [0.70, 0.41, 0.77]])
    values, probabilities = _exact_distribution(scores)  # 27 seed draws x 27 case draws
    interval = mean_interval(scores)
    assert interval.estimate == pytest.approx(scores.mean())

    def cdf(x: float, strict: bool = False) -> float:  # P(X < x) or P(X <= x), up to rounding in the last bit
        return float(probabilities[values < x - 1e-9].sum() if strict else probabilities[values <= x + 1e-9].sum())

    tolerance = 0.01  # Monte Carlo error of a 2.5 % quantile from 10 000 draws is about 0.0016
    for end, level in ((interval.low, 0.025), (interval.high, 0.975)):
        # ``end`` is a ``level`` quantile of the exact bootstrap distribution, within Monte Carlo error
        assert cdf(end, strict=True) <= level + tolerance and cdf(end) >= level - tolerance
    # and the whole Monte Carlo distribution agrees with the enumeration (Kolmogorov distance)
    rng = np.random.default_rng(0)
    drawn = np.sort(resampled_means(scores, bootstrap_counts(3, 10_000, rng), bootstrap_counts(3, 10_000, rng)))
    points = np.unique(values) + 1e-9  # just above each possible value (the two sums may differ in the last bit)
    exact_cdf = np.array([probabilities[values <= x].sum() for x in points])
    mc_cdf = np.searchsorted(drawn, points, side="right") / drawn.size
    assert np.abs(mc_cdf - exact_cdf).max() < 0.02


def test_resampled_means_weight_cells_by_seed_times_case_counts() -> None:
    scores = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, 5.0]])
    seed_counts = np.array([[2.0, 0.0], [1.0, 1.0]])
    case_counts = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    # resample 0: seed 0 twice, cases 1, 2, 2 -> cells 2, nan, nan (twice each) -> 2.0
    # resample 1: seeds 0 and 1, case 0 three times -> 1, 1, 1, 3, 3, 3 -> 2.0
    np.testing.assert_allclose(resampled_means(scores, seed_counts, case_counts), [2.0, 2.0])
    only_nan = resampled_means(scores, np.array([[2.0, 0.0]]), np.array([[0.0, 0.0, 3.0]]))
    assert np.isnan(only_nan).all()


def test_nan_cells_are_skipped_and_resamples_without_a_value_are_left_out() -> None:
    scores = np.array([[0.5, np.nan]])  # one seed; the second case has no value (e.g. no ET in its ground truth)
    interval = mean_interval(scores)
    assert interval.estimate == interval.low == interval.high == 0.5
    # a resample draws the NaN case twice with probability 1/4: about 7 500 of 10 000 resamples have a value
    assert 7_300 < interval.resamples < 7_700
    empty = mean_interval(np.full((2, 3), np.nan))
    assert math.isnan(empty.estimate) and math.isnan(empty.low) and empty.resamples == 0
    # paired: a cell that is NaN in either method is left out of the difference
    method = np.array([[0.6, np.nan, 0.9], [0.7, 0.8, 0.9]])
    base = np.array([[0.5, 0.1, np.nan], [0.6, 0.7, 0.8]])
    assert paired_difference(method, base).estimate == pytest.approx(0.1)


def test_gap_closed_halfway_is_one_half() -> None:
    rng = np.random.default_rng(7)
    base = rng.uniform(0.3, 0.6, size=(5, 24))
    teacher_per_case = rng.uniform(0.7, 0.9, size=24)
    teacher = np.tile(teacher_per_case, (2, 1))  # two teacher seeds with the same scores
    halfway = (base + teacher_per_case) / 2  # halfway between base and teacher in every cell
    gap = gap_closed_interval(halfway, base, teacher)
    assert gap.estimate == pytest.approx(0.5)
    assert gap.low == pytest.approx(0.5) and gap.high == pytest.approx(0.5)
    constant = gap_closed_interval(np.full((5, 24), 0.6), np.full((5, 24), 0.4), np.full((2, 24), 0.8))
    assert (constant.estimate, constant.low, constant.high) == pytest.approx((0.5, 0.5, 0.5))


def test_gap_closed_resamples_the_teacher_seeds_on_their_own() -> None:
    base = np.full((5, 4), 0.4)
    method = np.full((5, 4), 0.6)
    teacher = np.array([[0.7] * 4, [0.9] * 4])  # teacher seeds disagree: the gap is 0.3 or 0.5 or in between
    gap = gap_closed_interval(method, base, teacher)
    assert gap.estimate == pytest.approx(0.2 / 0.4)
    # teacher seed draws (0, 0), (0, 1) / (1, 0), (1, 1) -> gap 0.2/0.3, 0.2/0.4, 0.2/0.5, each end with p = 1/4
    assert gap.low == pytest.approx(0.2 / 0.5) and gap.high == pytest.approx(0.2 / 0.3)
    no_gap = gap_closed_interval(method, base, np.full((2, 4), 0.4))
    assert math.isnan(no_gap.estimate) and no_gap.resamples == 0


def test_the_teachers_lead_shares_the_cases_and_resamples_each_side_s_seeds() -> None:
    base = np.array([[0.4, 0.5, 0.6, 0.7]] * 5)  # the cases differ, the seeds agree
    teacher = base[:2] + np.array([[0.1], [0.3]])  # two teacher seeds, leading by 0.1 and 0.3 on every case
    lead = teacher_lead_interval(teacher, base)
    assert lead.estimate == pytest.approx(0.2)
    # the cases are drawn once for both sides, so their spread cancels: only the teacher's seeds are left
    assert lead.low == pytest.approx(0.1) and lead.high == pytest.approx(0.3)
    unresolved = teacher_lead_interval(base[:2] + np.array([[-0.1], [0.1]]), base)
    assert unresolved.low < 0 < unresolved.high
    with pytest.raises(ValueError, match="same cases"):
        teacher_lead_interval(np.zeros((2, 3)), np.zeros((5, 4)))


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="same"):
        paired_difference(np.zeros((5, 24)), np.zeros((4, 24)))
    with pytest.raises(ValueError, match="do not match"):
        gap_closed_interval(np.zeros((5, 24)), np.zeros((5, 24)), np.zeros((2, 23)))
    with pytest.raises(ValueError, match="seeds, cases"):
        mean_interval(np.zeros(24))


def test_intervals_are_reproducible_and_round_trip_through_json() -> None:
    scores = np.random.default_rng(1).uniform(size=(5, 24))
    assert mean_interval(scores) == mean_interval(scores)
    assert mean_interval(scores, seed=1) != mean_interval(scores)
    interval = mean_interval(np.full((1, 2), np.nan))
    assert Interval.from_dict(json.loads(json.dumps(interval.as_dict()))).resamples == 0
    again = mean_interval(scores)
    assert Interval.from_dict(json.loads(json.dumps(again.as_dict()))) == again
