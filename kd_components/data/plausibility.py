"""Is this a skull-stripped brain MRI with the four BraTS modalities in their places? Checks on a case's voxels that
catch what the file checks cannot: a volume too small or too large to be a brain (a slice, a crop, a head with its
skull, not a brain at all) and a modality given in another's place (``--t1c`` given the FLAIR, one file for two
modalities), which the network would segment silently and wrongly.

The contrast checks are rank correlations within the brain, so they hold for any intensity scale or bias field:

- t1c and t1n are T1-weighted: their voxels fall where t2w's rise (CSF and oedema bright on T2, dark on T1), a rank
  correlation with t2w below :data:`T1_MAX_CORRELATION`; and the brightest t2w voxels (mostly CSF) are among the
  darkest of the brain on both T1 scans (their median's percentile rank below :data:`T1_CSF_MAX_RANK`).

A FLAIR signature was tried and left out: t2f's correlation with t2w ranges from -0.56 (a phantom) to +0.55 (a real
scan), overlapping the T1 scans', so no threshold separates them without refusing right scans. A FLAIR given as t1c
is still caught on the real scans (its correlation with t2w, +0.02 to +0.55, is above the T1 threshold); t1c and t1n
swapped with each other, or t2w with t2f, are not caught.

Measured, to set the thresholds, on the three real glioma scans of ``../shared/real_dev`` and on phantoms, as read
and as the bundle preprocesses them (the same to two decimals): T1 correlations -0.31 to -0.80, T1 CSF ranks 0.02 to
0.09; the brains 1,018-1,602 mL (real, skull-stripped) and 1,576-2,094 mL (phantoms). 32 phantoms of the main job
(tumour, healthy and unseen-seed) and the three real scans pass; t1c and t2f swapped are caught on the three real
scans and on 12 of the 32 phantoms, whose FLAIR (unlike a real one) can fall where t2w rises. The glioma phantoms
(randomised contrasts, large enhancing and cystic tumours): the 40 of the main job pass, and a t1c/t2f swap is
caught on 7 of them (their t2f's rank correlation with t2w is -0.57 to +0.26). Each threshold leaves a margin; a
user whose scans are right but fail one (an unusual sequence, a brain after a large resection) turns the checks off
(``brats-kd segment --no-plausibility-check``, the bundle setting ``plausibility_check: false``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr

from kd_components.constants import MODALITIES

__all__ = [
    "BRAIN_ML_RANGE",
    "T1_CSF_MAX_RANK",
    "T1_MAX_CORRELATION",
    "plausibility_problems",
]

#: The brain volume (voxels non-zero in every modality) a skull-stripped adult scan can have, in mL.
BRAIN_ML_RANGE: tuple[float, float] = (400.0, 2600.0)
#: T1-weighted scans: the largest rank correlation with t2w within the brain.
T1_MAX_CORRELATION = -0.1
#: T1-weighted scans: the largest percentile rank (0-1, within the brain) of their median on the brightest t2w voxels.
T1_CSF_MAX_RANK = 0.35
#: Voxels sampled for the rank correlations (deterministic), and the share of brightest t2w voxels taken as CSF.
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
    return _contrast_problems(data, brain, named)


def _same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal(a, b)``, deciding on every 101st voxel first (two different scans differ there)."""
    if a.shape != b.shape or not np.array_equal(a.reshape(-1)[::101], b.reshape(-1)[::101]):
        return False
    return bool(np.array_equal(a, b))


def _contrast_problems(data: np.ndarray, brain: np.ndarray, named: dict[str, str]) -> list[str]:
    """The contrast checks of the module docstring on the ``brain`` voxels of ``data``."""
    index = np.flatnonzero(brain)
    if index.size > _SAMPLES:
        index = np.random.default_rng(0).choice(index, _SAMPLES, replace=False)
    values = {m: data[c].reshape(-1)[index] for c, m in enumerate(MODALITIES)}
    t2w = values["t2w"]
    correlation = {m: float(spearmanr(values[m], t2w)[0]) for m in ("t1c", "t1n")}
    csf = t2w >= np.quantile(t2w, 1 - _CSF_SHARE)
    problems = []
    if min(correlation["t1c"], correlation["t1n"]) > T1_MAX_CORRELATION:  # neither T1 scan falls with "t2w"
        return [
            f"neither {named['t1c']} nor {named['t1n']} falls where {named['t2w']} rises (rank correlations "
            f"{correlation['t1c']:+.2f}, {correlation['t1n']:+.2f}; T1 scans' are below {T1_MAX_CORRELATION:+.2f} "
            "against a T2 scan): is --t2w another modality, or are both T1 scans?"
        ]
    for t1 in ("t1c", "t1n"):
        if correlation[t1] > T1_MAX_CORRELATION:
            problems.append(
                f"{named[t1]} does not look T1-weighted: its voxels rise with {named['t2w']}'s (rank correlation "
                f"{correlation[t1]:+.2f}, a T1 scan's is below {T1_MAX_CORRELATION:+.2f}): is --{t1}, or --t2w, "
                "another modality?"
            )
    for t1 in ("t1c", "t1n"):
        rank = float((values[t1] < np.median(values[t1][csf])).mean())
        if rank > T1_CSF_MAX_RANK and not problems:
            problems.append(
                f"{named['t2w']} does not look T2-weighted: its brightest voxels (CSF on a T2 scan) are not dark on "
                f"{named[t1]} (their median is brighter than {rank:.0%} of the brain; CSF's than under "
                f"{T1_CSF_MAX_RANK:.0%}): is --t2w another modality?"
            )
            break
    return problems
