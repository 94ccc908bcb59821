"""Bootstrap confidence intervals for the benchmark: means, paired differences and the gap closed.

The data of one method is an array of scores of shape ``(S, N)``: one row per training seed, one
column per held-out test case, NaN where a score is undefined (e.g. the Dice of a region a case does
not contain). Every method is scored on the same ``N`` test cases in the same column order, and every
student method is trained with the same ``S`` seeds in the same row order (the benchmark is *paired*);
the teacher has its own ``T`` seeds (an array ``(T, N)``).

**What is resampled.** One bootstrap resample draws, independently and with replacement,

- ``S`` of the ``S`` student seeds (rows), and
- ``N`` of the ``N`` test cases (columns),

and, for the gap closed only, ``T`` of the ``T`` teacher seeds. The statistic of a resample is the
mean over all drawn (seed, case) cells, each counted as often as its seed times its case was drawn,
skipping NaN cells (a resample whose cells are all NaN has no value and is left out). The interval is
the percentile interval of the resampled statistics (2.5th and 97.5th percentiles for 95 %), around
the statistic of the data itself (the mean of all finite cells). This is a two-way (crossed) bootstrap:
it lets both the training seed and the choice of test cases vary, so it is wider than resampling either
alone; it says nothing about variation between machines (see the results page on determinism).

- :func:`mean_interval`: the mean of one method.
- :func:`paired_difference`: ``method - base`` on the *same* resampled seeds and cases (the cell-wise
  difference is resampled, so what both methods share, a hard case or a lucky seed, cancels). Cells
  where either method is NaN are left out of both.
- :func:`teacher_lead_interval`: ``mean(teacher) - mean(base)``, the teacher's lead over a student trained on
  other seeds: the cases are shared, the student and the teacher seeds are resampled each on their own.
- :func:`gap_closed_interval`: ``(mean(method) - mean(base)) / (mean(teacher) - mean(base))``; the
  method and the base share the resampled student seeds, all three share the resampled cases, the
  teacher's seeds are resampled on their own. Resamples where the teacher - base difference is (almost)
  zero give no finite ratio and are left out (``Interval.resamples`` counts the ones kept).

The random draws come from ``numpy.random.default_rng(seed)`` in a fixed order (student seeds, cases,
then teacher seeds), so the same call gives the same interval, and the three functions called with the
same ``seed`` and shapes use the same resampled student seeds and cases.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CONFIDENCE",
    "RESAMPLES",
    "SEED",
    "Interval",
    "bootstrap_counts",
    "finite_mean",
    "format_interval",
    "gap_closed_interval",
    "mean_interval",
    "paired_difference",
    "percentile_interval",
    "resampled_means",
    "row_interval",
    "teacher_lead_interval",
]

#: Default number of bootstrap resamples.
RESAMPLES = 10_000
#: Default confidence level of the intervals.
CONFIDENCE = 0.95
#: Default seed of the random generator (fixed: the same data give the same interval).
SEED = 0
#: Teacher - base differences smaller than this make the gap closed undefined in a resample.
_MIN_GAP = 1e-9


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap percentile interval.

    Args:
        estimate: the statistic of the data itself (NaN if undefined).
        low: lower end of the interval.
        high: upper end of the interval.
        confidence: the interval's nominal coverage, e.g. 0.95.
        resamples: how many resamples had a value (the interval is their percentile interval).
    """

    estimate: float
    low: float
    high: float
    confidence: float = CONFIDENCE
    resamples: int = 0

    @property
    def width(self) -> float:
        return self.high - self.low

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interval:
        """Inverse of :meth:`as_dict` (None becomes NaN)."""
        values = {k: (float("nan") if data.get(k) is None else data[k]) for k in ("estimate", "low", "high")}
        return cls(**values, confidence=data.get("confidence", CONFIDENCE), resamples=data.get("resamples", 0))


def finite_mean(values: Sequence[float | None]) -> float:
    """The mean of the finite values (``None``, NaN and infinities left out); NaN when there is none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def row_interval(row: Mapping[str, Any], metric: str, which: str = "mean") -> Interval | None:
    """The interval ``which`` (``mean``, ``difference``, ``gap_closed``, ``postprocessing_effect``) of ``metric`` in
    a row of the benchmark's ``results.json`` (its ``statistics``), if computed."""
    value = row.get("statistics", {}).get(metric, {}).get(which)
    return None if value is None else Interval.from_dict(value)


def format_interval(
    interval: Interval | None, digits: int, scale: float = 1.0, unit: str = "", sign: bool = False
) -> str:
    """``estimate [low, high]`` (``n/a`` where undefined; the estimate alone where there is no interval); ``sign``
    writes ``+`` before positive numbers (for differences)."""
    if interval is None or not math.isfinite(interval.estimate):
        return "n/a"
    form = f"{'+' if sign else ''}.{digits}f"
    estimate = f"{scale * interval.estimate:{form}}{unit}"
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return estimate
    return f"{estimate} [{scale * interval.low:{form}}, {scale * interval.high:{form}}]"


def _scores(values: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name}: expected a non-empty (seeds, cases) array, got shape {array.shape}")
    return array


def bootstrap_counts(n: int, resamples: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """How often each of ``n`` items is drawn in each of ``resamples`` draws of ``n`` with replacement:
    an array ``(resamples, n)`` whose rows sum to ``n``."""
    indices = rng.integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], indices), 1.0)
    return counts


def resampled_means(
    scores: ArrayLike, seed_counts: NDArray[np.float64], case_counts: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The weighted NaN-skipping mean of ``scores`` ``(S, N)`` in each resample: cell ``(s, n)`` weighs
    ``seed_counts[b, s] * case_counts[b, n]``. Returns ``(B,)``; NaN where every drawn cell is NaN."""
    array = _scores(scores, "scores")
    finite = np.isfinite(array)
    values = np.where(finite, array, 0.0)
    total = np.einsum("bs,sn,bn->b", seed_counts, values, case_counts)
    weight = np.einsum("bs,sn,bn->b", seed_counts, finite.astype(np.float64), case_counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), np.nan)


def percentile_interval(estimate: float, samples: ArrayLike, confidence: float = CONFIDENCE) -> Interval:
    """The percentile interval of the finite ``samples`` (NaN ends if there are none)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    values = np.asarray(samples, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Interval(float(estimate), math.nan, math.nan, confidence, 0)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), confidence, int(values.size))


def _nanmean(array: NDArray[np.float64]) -> float:
    finite = array[np.isfinite(array)]
    return float(finite.mean()) if finite.size else math.nan


def _draws(
    n_seeds: int, n_cases: int, resamples: int, seed: int
) -> tuple[np.random.Generator, NDArray[np.float64], NDArray[np.float64]]:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    seed_counts = bootstrap_counts(n_seeds, resamples, rng)
    case_counts = bootstrap_counts(n_cases, resamples, rng)
    return rng, seed_counts, case_counts


def _draws_with_teacher(
    n_seeds: int, n_cases: int, n_teacher_seeds: int, resamples: int, seed: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The draws of a comparison with the teacher: (student seed, case, teacher seed) counts per resample, the
    teacher's drawn after the others from the same generator."""
    rng, seed_counts, case_counts = _draws(n_seeds, n_cases, resamples, seed)
    return seed_counts, case_counts, bootstrap_counts(n_teacher_seeds, resamples, rng)


def mean_interval(
    scores: ArrayLike, *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED
) -> Interval:
    """Mean of one method's ``(S, N)`` scores (NaN skipped) with its bootstrap interval over seeds and cases."""
    array = _scores(scores, "scores")
    _, seed_counts, case_counts = _draws(*array.shape, resamples, seed)
    return percentile_interval(_nanmean(array), resampled_means(array, seed_counts, case_counts), confidence)


def paired_difference(
    scores: ArrayLike,
    base: ArrayLike,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """Mean of ``scores - base`` over (seed, case) cells, both ``(S, N)`` on the same seeds and cases, with its
    bootstrap interval (both methods see the same resampled seeds and cases). Cells where either is NaN are
    left out."""
    a, b = _scores(scores, "scores"), _scores(base, "base")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same (seeds, cases) shape, got {a.shape} and {b.shape}")
    return mean_interval(a - b, resamples=resamples, confidence=confidence, seed=seed)


def gap_closed_interval(
    scores: ArrayLike,
    base: ArrayLike,
    teacher: ArrayLike,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """``(mean(scores) - mean(base)) / (mean(teacher) - mean(base))`` with its bootstrap interval.

    ``scores`` and ``base`` are ``(S, N)`` on the same student seeds and cases, ``teacher`` is ``(T, N)``
    on the same cases. Per resample: the student seeds are drawn once for ``scores`` and ``base``, the
    cases once for all three, the teacher seeds on their own; each mean skips its own NaN cells.
    """
    a, b, t = _scores(scores, "scores"), _scores(base, "base"), _scores(teacher, "teacher")
    if a.shape != b.shape or t.shape[1] != a.shape[1]:
        raise ValueError(f"shapes do not match: scores {a.shape}, base {b.shape}, teacher {t.shape}")
    seed_counts, case_counts, teacher_counts = _draws_with_teacher(*a.shape, t.shape[0], resamples, seed)

    def ratio(method: NDArray[np.float64] | float, low: NDArray[np.float64] | float, high: Any) -> Any:
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.asarray(high - low, dtype=np.float64)
            return np.where(np.abs(gap) > _MIN_GAP, (method - low) / np.where(gap == 0, 1.0, gap), np.nan)

    estimate = float(ratio(_nanmean(a), _nanmean(b), _nanmean(t)))
    samples = ratio(
        resampled_means(a, seed_counts, case_counts),
        resampled_means(b, seed_counts, case_counts),
        resampled_means(t, teacher_counts, case_counts),
    )
    return percentile_interval(estimate, samples, confidence)


def teacher_lead_interval(
    teacher: ArrayLike,
    base: ArrayLike,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """``mean(teacher) - mean(base)`` with its bootstrap interval: ``teacher`` ``(T, N)`` and ``base`` ``(S, N)`` on
    the same cases and their own seeds. Per resample the cases are drawn once for both (what a hard case costs both
    cancels), the student seeds and the teacher seeds each on their own (the draws of :func:`gap_closed_interval`
    with the same ``seed``); each mean skips its own NaN cells."""
    t, b = _scores(teacher, "teacher"), _scores(base, "base")
    if t.shape[1] != b.shape[1]:
        raise ValueError(f"the teacher and the base need the same cases, got shapes {t.shape} and {b.shape}")
    seed_counts, case_counts, teacher_counts = _draws_with_teacher(*b.shape, t.shape[0], resamples, seed)
    samples = resampled_means(t, teacher_counts, case_counts) - resampled_means(b, seed_counts, case_counts)
    return percentile_interval(_nanmean(t) - _nanmean(b), samples, confidence)
