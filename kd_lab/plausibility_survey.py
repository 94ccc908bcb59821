"""How the plausibility checks (:mod:`kd_components.data.plausibility`) fare on a set of cases: how many pass as given
and, for each pair of modalities, on how many a swap of the pair is caught. The numbers behind the checks'
thresholds; ``scripts/measure_plausibility.py`` prints them for phantoms and real scans.

A case is checked as read and, with ``at_2mm``, as the demo bundles see it: resampled to 2 mm (linear) and
z-scored within the brain.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import combinations

import nibabel as nib
import numpy as np
from scipy import ndimage

from kd_components.constants import MODALITIES
from kd_components.data.brats import BratsCase
from kd_components.data.phantoms.dataset import generate_case
from kd_components.data.plausibility import plausibility_problems

__all__ = ["PAIRS", "Case", "SurveyRow", "at_2mm", "phantom_images", "real_images", "survey", "swapped"]

#: One case: its id, its image ``(4, X, Y, Z)`` float32 and its affine ``(4, 4)``.
Case = tuple[str, np.ndarray, np.ndarray]
#: Every pair of modalities a user could swap, in :data:`MODALITIES` order.
PAIRS: tuple[tuple[str, str], ...] = tuple(combinations(MODALITIES, 2))


@dataclass
class SurveyRow:
    """One set of cases: ``cases`` checked, ``passed`` as given (the ids of the others in ``refused``) and, per pair
    of :data:`PAIRS`, the number on which the swap is caught."""

    name: str
    cases: int = 0
    passed: int = 0
    refused: list[str] = field(default_factory=list)
    caught: dict[tuple[str, str], int] = field(default_factory=lambda: dict.fromkeys(PAIRS, 0))


def swapped(image: np.ndarray, first: str, second: str) -> np.ndarray:
    """A copy of ``image`` ``(4, X, Y, Z)`` with the channels of modalities ``first`` and ``second`` exchanged."""
    out = image.copy()
    i, j = MODALITIES.index(first), MODALITIES.index(second)
    out[[i, j]] = out[[j, i]]
    return out


def at_2mm(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` ``(4, X, Y, Z)`` resampled to 2 mm (linear; the brain mask nearest) and z-scored within the brain,
    with the affine of the new grid."""
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    zoom = spacing / 2.0
    brain = ndimage.zoom(np.all(image != 0, axis=0).astype(np.float32), zoom, order=0) > 0.5
    out = np.stack([ndimage.zoom(channel, zoom, order=1) for channel in image])
    for channel in out:
        values = channel[brain]
        channel[...] = np.where(brain, (channel - values.mean()) / max(float(values.std()), 1e-6), 0.0)
    scaled = np.array(affine, dtype=np.float64)
    scaled[:3, :3] = scaled[:3, :3] / zoom
    return out.astype(np.float32), scaled


def phantom_images(profile: str, seed: int, count: int) -> Iterator[Case]:
    """:data:`Case` s of phantoms ``0 .. count - 1`` of ``seed``; every eighth (index 7, 15, ...) is healthy (no
    tumour), more than the data sets' share (:func:`~kd_components.data.phantoms.is_healthy_case`), so that the checks
    are tried on tumour-free brains too."""
    for index in range(count):
        case = generate_case(index, seed, profile=profile, healthy=index % 8 == 7)
        image = np.stack([case.images[m].astype(np.float32) for m in MODALITIES])
        yield f"{case.case_id} ({case.kind})", image, case.affine


def real_images(cases: Iterable[BratsCase]) -> Iterator[Case]:
    """:data:`Case` s of BraTS cases on disk."""
    for case in cases:
        scans = [nib.load(str(case.images[m])) for m in MODALITIES]
        yield case.case_id, np.stack([np.asarray(s.dataobj, dtype=np.float32) for s in scans]), scans[0].affine


def survey(name: str, images: Iterable[Case]) -> SurveyRow:
    """The checks on every case of ``images`` as given and with each pair of :data:`PAIRS` swapped."""
    row = SurveyRow(name)
    for case_id, image, affine in images:
        row.cases += 1
        if plausibility_problems(image, affine):
            row.refused.append(case_id)
        else:
            row.passed += 1
        for pair in PAIRS:
            row.caught[pair] += bool(plausibility_problems(swapped(image, *pair), affine))
    return row
