"""Is this a skull-stripped brain MRI with the four BraTS modalities in their places? Checks on a case's voxels that
catch what the file checks cannot: a volume too small or too large to be a brain (a slice, a crop, a head with its
skull, not a brain at all) and a modality given in another's place (``--t1c`` given the FLAIR, one file for two
modalities), which the network would segment silently and wrongly.

The contrast checks are rank statistics within the brain, so they hold for any intensity scale; the FLAIR check
compares the scans' local contrast, so that a bias field cannot outweigh it:

- t1c and t1n are T1-weighted: their voxels fall where t2w's rise (CSF and oedema bright on T2, dark on T1), a rank
  correlation with t2w below :data:`T1_MAX_CORRELATION`; and the brightest t2w voxels (mostly CSF) are among the
  darkest of the brain on t1n (their median's percentile rank below :data:`T1_CSF_MAX_RANK`). Not on t1c: where a
  large enhancing tumour is among the brightest t2w voxels, it is bright on t1c too (a BraTS-size glioma phantom
  was refused so, at a rank of 0.47).
- t1c and t1n swapped: a contrast agent raises enhancing tumour and vessels on t1c and lowers nothing, so the
  difference ``t1c - t1n`` (each scaled robustly within the brain) has a longer upper than lower tail; swapped, the
  lower tail is the longer (:data:`ENHANCEMENT_MIN_TAIL_RATIO`).
- t2w and t2f swapped: CSF (the darkest voxels of t1n) is bright on t2w and suppressed on FLAIR; swapped, it ranks
  higher on "t2f" than on "t2w" (:data:`CSF_MIN_T2_RANK_GAP`).
- t2f swapped with t1c or t1n: over the whole brain t2f's correlation with t2w ranges from -0.56 (a phantom) to
  +0.55 (a real scan), overlapping the T1 scans' (CSF, bright on t2w, is dark on FLAIR and T1 alike), so the check
  compares the scans with each other on the voxels that are not dark on t1n (white and grey matter, most of the
  tumour), where a FLAIR rises with t2w and a T1 scan falls: "t2f" must be more like t2w than either T1 scan is (a
  lead above :data:`FLAIR_MIN_T2_LEAD`). Swapped, the lead turns its sign. Each scan is compared less its local brain
  mean (:data:`LOCAL_MEAN_SIGMA_MM`): on the raw voxels, independent bias fields of up to 25 % per scan outweighed the
  contrast of grey and white matter on some phantoms (their FLAIR's lead fell to -0.30 as given, and 15 of 198
  phantoms' t1c/t2f swaps passed).

Measured, to set the thresholds, on the three real glioma scans of ``../shared/real_dev`` and on phantoms, as read and
as the bundle preprocesses them (the same to two decimals): T1 correlations -0.31 to -0.80, T1 CSF ranks 0.02 to 0.09;
the brains 1,018-1,602 mL (real, skull-stripped) and 1,576-2,094 mL (phantoms). 32 phantoms of the main job (tumour,
healthy and unseen-seed) and the three real scans pass. Over the whole brain the phantoms' t2f's rank correlation with
t2w is -0.57 to +0.26 (the real scans' +0.02 to +0.55).

The swap checks, on the three real scans, 8 BraTS-size glioma phantoms (as read and resampled to 2 mm) and the main
job's 40 glioma phantoms (2 mm): the tails' ratio is 3.1-4.2 on the real scans and 1.5-4.5 on the phantoms, and
0.22-0.67 with t1c and t1n swapped; the CSF rank gap is +0.44 to +0.94, and its negative when t2w and t2f are swapped.
The FLAIR's lead away from CSF, in local contrast, is +0.62 to +0.96 on the real scans (+0.60 to +1.05 at 2 mm) and
+0.21 to +1.24 on the 198 phantoms below; with a T1 scan swapped -0.21 to -1.29 (real: -0.60 to -1.16). ``python
scripts/measure_plausibility.py`` counts, per set, the cases that pass as given and those on which each swap is caught.
On 2026-12-07, with the phantoms' sharper tissue fractions: the three real scans (as read and at 2 mm) and 198 phantoms
(``small`` seeds 0, 1 and 7, 188 at 2 mm; ``brats`` seed 100, 10 at 1 mm and at 2 mm) all pass; t1c/t2w, t1n/t2w,
t2w/t2f, t1c/t2f and t1n/t2f swaps are caught on every real scan and every phantom; t1c/t1n on every real scan and 197
of the 198 phantoms since the phantoms' vessels and dura are as bright on t1c as on the real scans
(``contrast.VESSEL_GAIN``; on the raw voxels the FLAIR check had caught t1c/t2f on 183 and t1n/t2f on 189; before the
sharper fractions 129 and 138 of 150, and 36 and 85 before the FLAIR check). Before, with fainter vessels, 9 phantoms'
t1c/t1n swaps passed: their t1c showed little enhancement beside their t1n (their tails' ratio as given 0.85-1.33: a
healthy brain, non-enhancing, cystic, patchy and necrotic tumours alike; the real scans' is 3.0-4.2), and neither the
local contrast nor a count of rank jumps told them apart. On sharper phantoms a T1 scan's correlation with t2w reached
-0.07 to -0.10 (independent bias fields of up to 25 % per modality can outweigh the tissue contrast), hence
:data:`T1_MAX_CORRELATION` -0.05: a real FLAIR given as a T1 scan lies at +0.02 to +0.55. A scan without any contrast
enhancement (no enhancing tumour, no vessels) would give tails of about equal length, above the threshold. Each
threshold leaves a margin; a user whose scans are right but fail one (an unusual sequence, a brain after a large
resection) turns the checks off (``brats-kd segment --no-plausibility-check``, the bundle setting ``plausibility_check:
false``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import rankdata

from kd_components.constants import MODALITIES

__all__ = [
    "BRAIN_ML_RANGE",
    "CSF_MIN_T2_RANK_GAP",
    "ENHANCEMENT_MIN_TAIL_RATIO",
    "FLAIR_MIN_T2_LEAD",
    "T1_CSF_MAX_RANK",
    "T1_MAX_CORRELATION",
    "plausibility_problems",
]

#: The brain volume (voxels non-zero in every modality) a skull-stripped adult scan can have, in mL.
BRAIN_ML_RANGE: tuple[float, float] = (400.0, 2600.0)
#: T1-weighted scans: the largest rank correlation with t2w within the brain.
T1_MAX_CORRELATION = -0.05
#: t1n: the largest percentile rank (0-1, within the brain) of its median on the brightest t2w voxels (mostly CSF).
T1_CSF_MAX_RANK = 0.35
#: t1c and t1n: the least ratio of the upper to the lower tail of ``t1c - t1n`` (each z-scored robustly within the
#: brain; its 99.9th percentile over minus its 0.1th): contrast raises enhancing tumour and vessels on t1c and
#: lowers nothing, so the upper tail is the longer one; swapped, the lower.
ENHANCEMENT_MIN_TAIL_RATIO = 0.75
#: t2w and t2f: the least difference of the percentile ranks (0-1, within the brain) of the median of the darkest
#: t1n voxels (CSF) on t2w and on t2f: CSF is bright on t2w and suppressed on FLAIR; swapped, the difference turns.
CSF_MIN_T2_RANK_GAP = -0.2
#: t2f: the least lead of its rank correlation with t2w over each T1 scan's, on the voxels not dark on t1n (above
#: :data:`_TISSUE_FROM` of the way from its 1st to its 75th percentile: white and grey matter, most of the tumour; not
#: CSF), each scan less its local brain mean (:data:`LOCAL_MEAN_SIGMA_MM`). There a FLAIR rises with t2w and a T1
#: scan falls; a FLAIR given as t1c (or t1n) and the T1 scan as t2f turn the lead's sign.
FLAIR_MIN_T2_LEAD = 0.0
_TISSUE_FROM = 0.6
#: The FLAIR check compares the scans' local contrast: each less its mean over the brain around the voxel (a Gaussian of
#: this sigma in mm, on a grid of about :data:`_LOCAL_MEAN_GRID_MM`), so that a bias field, smooth and different in
#: every scan, cannot outweigh the contrast of grey and white matter.
LOCAL_MEAN_SIGMA_MM = 12.0
_LOCAL_MEAN_GRID_MM = 6.0
#: Voxels sampled for the rank statistics (deterministic), and the share of voxels taken as CSF: the brightest on
#: t2w, the darkest on t1n.
_SAMPLES = 50_000
_CSF_SHARE = 0.03


def plausibility_problems(
    image: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor | None, names: Sequence[str] = MODALITIES
) -> list[str]:
    """What makes ``image`` ``(4, H, W, D)`` (channels ``[t1c, t1n, t2w, t2f]``, as read or preprocessed) implausible
    as a skull-stripped brain with the BraTS modalities in their places: one line each, naming the files of
    ``names``; empty when it is plausible. ``affine`` ``(4, 4)`` gives the voxel volume (``None``: no volume check)."""
    data = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    named = dict(zip(MODALITIES, names, strict=True))
    problems = []
    for i, first in enumerate(MODALITIES):
        for second in MODALITIES[i + 1 :]:
            a, b = data[MODALITIES.index(first)], data[MODALITIES.index(second)]
            if _same_image(a, b):
                problems.append(
                    f"{named[first]} and {named[second]} hold the same image: one file given for two modalities?"
                )
    if problems:
        return problems
    brain = np.all(data != 0, axis=0)
    if affine is not None:
        voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000
        volume = float(brain.sum()) * voxel_ml
        low, high = BRAIN_ML_RANGE
        if volume < low:
            return [
                f"the brain (voxels non-zero in all four scans) is {volume:.0f} mL, less than the {low:.0f} mL of "
                "any adult brain: a slice, a crop or an empty scan, not a whole brain"
            ]
        if volume > high:
            return [
                f"the brain (voxels non-zero in all four scans) is {volume:.0f} mL, more than the {high:.0f} mL of "
                "any adult brain: is the scan skull-stripped (BraTS scans are), and a brain at all?"
            ]
    if brain.sum() < 1000:  # too few voxels to tell contrasts apart
        return problems
    spacing = (1.0, 1.0, 1.0) if affine is None else tuple(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    return _contrast_problems(data, brain, named, spacing)


def _same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal(a, b)``, deciding on every 5th voxel along each axis first (two different scans differ
    there); strided views, so no copy of a scan whatever its memory layout (nibabel's are Fortran-ordered)."""
    every_5th = (slice(None, None, 5),) * a.ndim
    if a.shape != b.shape or not np.array_equal(a[every_5th], b[every_5th]):
        return False
    return bool(np.array_equal(a, b))


def _contrast_problems(
    data: np.ndarray, brain: np.ndarray, named: dict[str, str], spacing: Sequence[float]
) -> list[str]:
    """The contrast checks of the module docstring on the ``brain`` voxels of ``data`` (voxel ``spacing`` in mm)."""
    index = np.flatnonzero(brain)
    if index.size > _SAMPLES:
        index = np.random.default_rng(0).choice(index, _SAMPLES, replace=False)
    voxels = np.unravel_index(index, brain.shape)  # gathered per channel: no copy of a channel in any layout
    values = {m: data[c][voxels] for c, m in enumerate(MODALITIES)}
    t2_swap = _t2_swap_problem(values, named)
    t2w = values["t2w"]
    correlation = _rank_correlations(values, t2w, ("t1c", "t1n"))
    csf = t2w >= np.quantile(t2w, 1 - _CSF_SHARE)
    not_t1 = [t1 for t1 in ("t1c", "t1n") if correlation[t1] > T1_MAX_CORRELATION]  # rising with "t2w"
    if not_t1 and t2_swap:  # a T1 scan compared with a "t2w" that is the FLAIR: the swap is the cause
        return [t2_swap]
    if len(not_t1) == 2:
        return [
            f"neither {named['t1c']} nor {named['t1n']} falls where {named['t2w']} rises (rank correlations "
            f"{correlation['t1c']:+.2f}, {correlation['t1n']:+.2f}; T1 scans' are below {T1_MAX_CORRELATION:+.2f} "
            "against a T2 scan): is --t2w another modality, or are both T1 scans?"
        ]
    problems = [
        f"{named[t1]} does not look T1-weighted: its voxels rise with {named['t2w']}'s (rank correlation "
        f"{correlation[t1]:+.2f}, a T1 scan's is below {T1_MAX_CORRELATION:+.2f}): is --{t1}, or --t2w, another "
        f"modality?{_t2w_swap_hint(values, t1, named) if len(not_t1) == 1 else ''}"
        for t1 in not_t1
    ]
    rank = _rank(values["t1n"], np.median(values["t1n"][csf]))  # t1n: on t1c, enhancing tumour may be T2-bright
    if rank > T1_CSF_MAX_RANK and not problems:
        problems.append(
            f"{named['t2w']} does not look T2-weighted: its brightest voxels (CSF on a T2 scan) are not dark on "
            f"{named['t1n']} (their median is brighter than {rank:.0%} of the brain; CSF's than under "
            f"{T1_CSF_MAX_RANK:.0%}): is --t2w another modality?"
        )
    if problems:
        return problems
    flair = t2_swap or _flair_problem(_local_contrast(data, brain, voxels, spacing), named)
    return [p for p in (_t1_swap_problem(values, named), flair) if p]


def _local_contrast(
    data: np.ndarray, brain: np.ndarray, voxels: tuple[np.ndarray, ...], spacing: Sequence[float]
) -> dict[str, np.ndarray]:
    """Each modality of ``data`` ``(4, H, W, D)`` at ``voxels`` less its local brain mean: the mean over the brain
    weighted by a Gaussian of :data:`LOCAL_MEAN_SIGMA_MM`, computed on every k-th voxel (about
    :data:`_LOCAL_MEAN_GRID_MM` apart) and taken at the nearest of them. A bias field multiplies a scan by a smooth
    factor; less its local mean, a scan keeps the sign of its contrast between neighbouring tissues whatever that
    factor (and whatever its scale or offset: as read or z-scored)."""
    step = [max(1, round(_LOCAL_MEAN_GRID_MM / max(float(s), 1e-6))) for s in spacing]
    coarse = tuple(slice(None, None, k) for k in step)
    sigma = [LOCAL_MEAN_SIGMA_MM / (float(s) * k) for s, k in zip(spacing, step, strict=True)]
    inside = brain[coarse]
    weight = np.maximum(ndimage.gaussian_filter(inside.astype(np.float32), sigma), 1e-6)
    nearest = tuple(np.minimum((v + k // 2) // k, n - 1) for v, k, n in zip(voxels, step, inside.shape, strict=True))
    local = {}
    for c, m in enumerate(MODALITIES):
        mean = ndimage.gaussian_filter(np.where(inside, data[c][coarse], 0).astype(np.float32), sigma) / weight
        local[m] = data[c][voxels] - mean[nearest]
    return local


def _rank_correlations(values: dict[str, np.ndarray], reference: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Spearman's rank correlation of each of ``values[names]`` with ``reference`` (1-D, the same voxels), ranking
    ``reference`` once (Pearson's correlation of average ranks, as ``scipy.stats.spearmanr``)."""
    ranked = rankdata(reference)
    return {m: float(np.corrcoef(rankdata(values[m]), ranked)[0, 1]) for m in names}


def _rank(values: np.ndarray, value: float) -> float:
    """The percentile rank (0-1) of ``value`` among ``values``."""
    return float((values < value).mean())


def _robust_z(values: np.ndarray) -> np.ndarray:
    """``values`` centred on their median and scaled by their interquartile range."""
    low, median, high = np.percentile(values, (25, 50, 75))
    return (values - median) / max(float(high - low), 1e-12)


def _t2w_swap_hint(values: dict[str, np.ndarray], t1: str, named: dict[str, str]) -> str:
    """Where "t2w" rises with the T1 scan ``t1`` and the other T1 scan falls where both rise, "t2w" may be a T1 scan
    and the other the T2 scan: the swap to suggest beside ``t1`` being another modality (on the three real scans of
    ``../shared/real_dev`` and phantoms, a t1c/t2w swap is flagged as "t1n rises with t2w"); else ``""``."""
    other = "t1n" if t1 == "t1c" else "t1c"
    correlation = _rank_correlations(values, values[t1], (other,))[other]
    if correlation > T1_MAX_CORRELATION:
        return ""
    return (
        f" ({named[other]} falls where both rise, rank correlation {correlation:+.2f} with {named[t1]}: if "
        f"{named['t2w']} is a T1 scan, are --{other} and --t2w swapped?)"
    )


def _t1_swap_problem(values: dict[str, np.ndarray], named: dict[str, str]) -> str | None:
    """t1c and t1n swapped: enhancement below, not above (:data:`ENHANCEMENT_MIN_TAIL_RATIO`), on sampled voxels."""
    difference = _robust_z(values["t1c"]) - _robust_z(values["t1n"])
    upper, lower = float(np.quantile(difference, 0.999)), -float(np.quantile(difference, 0.001))
    if upper >= ENHANCEMENT_MIN_TAIL_RATIO * lower:
        return None
    return (
        f"{named['t1c']} and {named['t1n']} look swapped: {named['t1c']} falls below {named['t1n']} where a "
        f"contrast agent raises it (the tails of their difference: {upper:.1f} above, {lower:.1f} below; a "
        "post-contrast T1 has the longer one above): are --t1c and --t1n swapped?"
    )


def _t2_swap_problem(values: dict[str, np.ndarray], named: dict[str, str]) -> str | None:
    """t2w and t2f swapped: CSF suppressed on "t2w", bright on "t2f" (:data:`CSF_MIN_T2_RANK_GAP`), on sampled
    voxels."""
    csf = values["t1n"] <= np.quantile(values["t1n"], _CSF_SHARE)
    on_t2w, on_t2f = (_rank(values[m], np.median(values[m][csf])) for m in ("t2w", "t2f"))
    if on_t2w - on_t2f >= CSF_MIN_T2_RANK_GAP:
        return None
    return (
        f"{named['t2w']} and {named['t2f']} look swapped: CSF (the darkest voxels of {named['t1n']}) is dark on "
        f"{named['t2w']} (brighter than {on_t2w:.0%} of the brain) and bright on {named['t2f']} ({on_t2f:.0%}); "
        "T2 shows CSF bright and FLAIR suppresses it: are --t2w and --t2f swapped?"
    )


def _flair_problem(values: dict[str, np.ndarray], named: dict[str, str]) -> str | None:
    """t2f and a T1 scan swapped: on tissue, "t2f" less like t2w than that T1 scan by more than
    :data:`FLAIR_MIN_T2_LEAD` allows, on sampled voxels less their local brain mean (:func:`_local_contrast`)."""
    t1n = values["t1n"]
    low, high = np.percentile(t1n, (1, 75))
    tissue = t1n >= low + _TISSUE_FROM * (high - low)
    if tissue.sum() < 100:
        return None
    names = ("t1c", "t1n", "t2f")
    correlation = _rank_correlations({m: values[m][tissue] for m in names}, values["t2w"][tissue], names)
    t1 = min(("t1c", "t1n"), key=lambda m: correlation["t2f"] - correlation[m])
    if correlation["t2f"] - correlation[t1] >= FLAIR_MIN_T2_LEAD:
        return None
    return (
        f"{named['t2f']} and {named[t1]} look swapped: away from CSF, in local contrast, {named['t2f']} is less like "
        f"{named['t2w']} than {named[t1]} is (rank correlations {correlation['t2f']:+.2f} and {correlation[t1]:+.2f}); "
        f"a FLAIR rises with a T2 scan there, a T1 scan falls: are --{t1} and --t2f swapped?"
    )
