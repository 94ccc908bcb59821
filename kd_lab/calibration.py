"""Tissue intensities and texture of real scans and of phantoms, measured the same way, to calibrate the generator.

For one case (four images ``(X, Y, Z)`` in ``[t1c, t1n, t2w, t2f]`` order, its BraTS label map and the voxel size):

1. **brain**: the voxels where all four images are > 0 (skull-stripped scans are 0 outside; the small negative
   values registration leaves at the border are not brain);
2. **normal tissue**: the brain without the tumour (any label) dilated by 3 voxels (a ball), split into CSF / GM / WM
   by a 3-class k-means of the t1n intensities (:func:`kmeans_1d`; darkest CSF, brightest WM, as on T1);
3. per modality and class (CSF, GM, WM, NETC = label 1, SNFH = 2, ET = 3): the median and the quartiles of the
   intensity, each divided by the median of the white matter (normal-appearing WM) of that modality, so that
   scanners' scales cancel;
4. **texture**: the local standard deviation in a 3 x 3 x 3 mm window (3 voxels at 1 mm; :func:`window_voxels`
   scales it for other voxel sizes), its median over each class's voxels, divided by the same WM median;
5. **t1c's enhancing normal structures** (vessels, dura; :func:`normal_enhancement`): the upper tail of t1c away from
   the tumour, against t1n's.

Phantoms (:func:`kd_components.data.phantoms.generate_case` with ``profile="brats"``, 1 mm) go through exactly the same
function, so the two columns of :func:`render_calibration_section` compare like with like. Each case also keeps an
evenly spaced sample of at most ``pool_sample`` WM-normalised voxels per class (intensity and local deviation), so
that cases can be pooled with equal weight (:func:`pool_cases`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data.utils import affine_to_spacing
from scipy import ndimage

from kd_components.constants import ET_LABEL, MODALITIES, NETC_LABEL, SNFH_LABEL
from kd_components.data.brats import BratsCase

__all__ = [
    "CALIBRATION_END",
    "CALIBRATION_HEADING",
    "CALIBRATION_START",
    "CLASSES",
    "LESION_CLASSES",
    "TISSUE_CLASSES",
    "CaseCalibration",
    "brain_mask",
    "calibrate",
    "class_masks",
    "kmeans_1d",
    "load_real_case",
    "local_std",
    "measure_case",
    "normal_enhancement",
    "phantom_case",
    "pool_cases",
    "render_calibration_section",
    "save_calibration",
    "window_voxels",
]

CALIBRATION_START = (
    "<!-- real-scan-calibration:start (scripts/measure_real_scans.py --calibration writes this part) -->"
)
CALIBRATION_END = "<!-- real-scan-calibration:end -->"
CALIBRATION_HEADING = "## 7. Tissue intensities and texture: real scans beside phantoms"
#: Normal tissue classes, darkest to brightest on t1n.
TISSUE_CLASSES: tuple[str, ...] = ("CSF", "GM", "WM")
#: Tumour classes and their BraTS-2023 labels.
LESION_CLASSES: dict[str, int] = {"NETC": NETC_LABEL, "SNFH": SNFH_LABEL, "ET": ET_LABEL}
CLASSES: tuple[str, ...] = (*TISSUE_CLASSES, *LESION_CLASSES)
#: The modality whose intensities separate CSF, GM and WM.
CLASSIFY_ON = "t1n"


@dataclass
class CaseCalibration:
    """The measurement of one case.

    Attributes:
        case_id: the case.
        stats: modality -> class -> ``{"median", "q25", "q75", "texture", "voxels"}``, intensities and texture
            divided by the modality's WM median (a class with no voxel is absent).
        wm_median: modality -> the raw WM median the values were divided by.
        centres: the k-means centres of t1n (raw intensities), CSF, GM, WM.
        samples: modality -> class -> ``(2, n)`` float32: the normalised intensity and local deviation of an
            evenly spaced sample of the class's voxels (for pooling; not written to JSON).
        enhancement: :func:`normal_enhancement`'s numbers.
    """

    case_id: str
    stats: dict[str, dict[str, dict[str, float]]]
    wm_median: dict[str, float]
    centres: list[float]
    samples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    enhancement: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """The case's numbers as plain JSON (no samples)."""
        return {
            "stats": self.stats,
            "wm_median": self.wm_median,
            "t1n_kmeans_centres": self.centres,
            "enhancement": self.enhancement,
        }


def brain_mask(images: Mapping[str, np.ndarray]) -> np.ndarray:
    """Voxels ``(X, Y, Z)`` where every image of ``images`` (modality -> ``(X, Y, Z)``) is > 0."""
    arrays = [np.asarray(images[m]) for m in MODALITIES]
    mask = arrays[0] > 0
    for array in arrays[1:]:
        mask &= array > 0
    return mask


def kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 100) -> np.ndarray:
    """Lloyd's k-means of 1-D ``values`` ``(N,)``: the ``k`` centres in ascending order.

    Starts from the ``(2i + 1) / 2k`` quantiles (deterministic); in 1-D each class is an interval, so assignment is
    a threshold at the midpoints between centres. A centre whose class empties keeps its place.

    Raises:
        ValueError: fewer than ``k`` distinct values.
    """
    ordered = np.sort(np.asarray(values, dtype=np.float64).ravel())
    distinct = int(np.count_nonzero(np.diff(ordered))) + 1 if ordered.size else 0
    if distinct < k:
        raise ValueError(f"k-means needs at least {k} distinct values, got {distinct}")
    centres = np.quantile(ordered, (2 * np.arange(k) + 1) / (2 * k))
    cumulative = np.concatenate([[0.0], np.cumsum(ordered)])
    for _ in range(iterations):
        cuts = np.searchsorted(ordered, (centres[:-1] + centres[1:]) / 2, side="right")
        edges = np.concatenate([[0], cuts, [ordered.size]])
        counts = np.diff(edges)
        sums = cumulative[edges[1:]] - cumulative[edges[:-1]]
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
        if np.allclose(updated, centres, rtol=0, atol=1e-9 * max(1.0, float(np.abs(centres).max()))):
            centres = updated
            break
        centres = updated
    return np.sort(centres)


def _ball(radius: int) -> np.ndarray:
    """A ball of ``radius`` voxels (``(2r+1,) * 3`` bool)."""
    r = np.arange(-radius, radius + 1)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius**2


def class_masks(
    images: Mapping[str, np.ndarray], seg: np.ndarray, tumour_margin: int = 3
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Boolean masks ``(X, Y, Z)`` of CSF, GM, WM, NETC, SNFH and ET, and the t1n k-means centres.

    CSF / GM / WM: brain (:func:`brain_mask`) voxels farther than ``tumour_margin`` voxels from any tumour label,
    classified on t1n by :func:`kmeans_1d` (intervals between the centres' midpoints). The tumour classes are the
    label map's voxels inside the brain.
    """
    brain = brain_mask(images)
    tumour = np.asarray(seg) > 0
    if tumour.any() and tumour_margin > 0:
        near = ndimage.binary_dilation(tumour, structure=_ball(tumour_margin))
    else:
        near = tumour
    normal = brain & ~near
    t1n = np.asarray(images[CLASSIFY_ON], dtype=np.float64)
    centres = kmeans_1d(t1n[normal], len(TISSUE_CLASSES))
    cuts = (centres[:-1] + centres[1:]) / 2
    tissue = np.digitize(t1n, cuts, right=True)  # 0: CSF, 1: GM, 2: WM
    masks = {name: normal & (tissue == i) for i, name in enumerate(TISSUE_CLASSES)}
    masks |= {name: brain & (np.asarray(seg) == label) for name, label in LESION_CLASSES.items()}
    return masks, centres


def window_voxels(spacing: Sequence[float], window_mm: float = 3.0) -> tuple[int, ...]:
    """The odd number of voxels nearest to ``window_mm`` along each axis (at least 1): 3 at 1 mm, 1 at 2 mm
    (1.5 voxels round down to one), 5 at 0.6 mm."""
    return tuple(max(1, 2 * round((window_mm / float(s) - 1.0) / 2.0) + 1) for s in spacing)


def local_std(image: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), window_mm: float = 3.0) -> np.ndarray:
    """The standard deviation of ``image`` ``(X, Y, Z)`` in a box of :func:`window_voxels` around each voxel
    (borders: the nearest voxel repeated), float32 ``(X, Y, Z)``."""
    size = window_voxels(spacing, window_mm)
    values = np.asarray(image, dtype=np.float64)
    mean = ndimage.uniform_filter(values, size=size, mode="nearest")
    mean_sq = ndimage.uniform_filter(values * values, size=size, mode="nearest")
    return np.sqrt(np.clip(mean_sq - mean * mean, 0.0, None)).astype(np.float32)


#: :func:`normal_enhancement`: the margin around the tumour (mm) and the depth of the brain's edge (mm).
ENHANCEMENT_TUMOUR_MARGIN_MM = 5.0
ENHANCEMENT_EDGE_MM = 3.0


def normal_enhancement(
    images: Mapping[str, np.ndarray], seg: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> dict[str, float]:
    """How bright t1c's enhancing normal structures (vessels, dural remnants at the brain's edge) are: on the brain's
    voxels farther than :data:`ENHANCEMENT_TUMOUR_MARGIN_MM` from any tumour label, t1c and t1n each divided by
    their median there, and

    - ``upper`` / ``lower``: the 99.9th percentile of ``t1c - t1n`` and minus its 0.1th (contrast raises vessels
      and dura on t1c, so the upper tail is the longer one);
    - ``edge``: t1c's 99.9th percentile within :data:`ENHANCEMENT_EDGE_MM` of the brain's edge (the dura);
    - ``inner_lead``: t1c's 99.9th percentile deeper than that, minus t1n's (vessels in sulci).

    ``images``: modality -> ``(X, Y, Z)``; ``seg``: the BraTS label map ``(X, Y, Z)``; ``spacing``: voxel size (mm),
    which turns the distances into voxels (by the finest axis).
    """
    step = float(min(spacing))
    brain = brain_mask(images)
    tumour = np.asarray(seg) > 0
    if tumour.any():
        tumour = ndimage.binary_dilation(tumour, structure=_ball(max(1, round(ENHANCEMENT_TUMOUR_MARGIN_MM / step))))
    normal = brain & ~tumour
    edge = brain & ~ndimage.binary_erosion(brain, iterations=max(1, round(ENHANCEMENT_EDGE_MM / step)))
    t1c, t1n = (np.asarray(images[m], dtype=np.float32) for m in ("t1c", "t1n"))
    t1c, t1n = t1c / np.median(t1c[normal]), t1n / np.median(t1n[normal])
    difference = (t1c - t1n)[normal]
    inner = normal & ~edge
    return {
        "upper": float(np.percentile(difference, 99.9)),
        "lower": float(-np.percentile(difference, 0.1)),
        "edge": float(np.percentile(t1c[normal & edge], 99.9)),
        "inner_lead": float(np.percentile(t1c[inner], 99.9) - np.percentile(t1n[inner], 99.9)),
    }


def _sample(values: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` evenly spaced entries of ``values`` ``(N,)`` (all of them when fewer)."""
    if values.size <= count:
        return values
    return values[np.linspace(0, values.size - 1, count).round().astype(np.int64)]


def measure_case(
    case_id: str,
    images: Mapping[str, np.ndarray],
    seg: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    tumour_margin: int = 3,
    window_mm: float = 3.0,
    pool_sample: int = 50_000,
) -> CaseCalibration:
    """The calibration numbers of one case (see the module's docstring): ``images`` modality -> ``(X, Y, Z)``,
    ``seg`` the BraTS label map ``(X, Y, Z)``, ``spacing`` the voxel size (mm).

    Raises:
        ValueError: the case has no white matter to normalise by (or too few distinct t1n values to classify).
    """
    masks, centres = class_masks(images, seg, tumour_margin)
    if not masks["WM"].any():
        raise ValueError(f"{case_id}: no white matter found to normalise by")
    stats: dict[str, dict[str, dict[str, float]]] = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    wm_median: dict[str, float] = {}
    for modality in MODALITIES:
        image = np.asarray(images[modality], dtype=np.float32)
        wm = float(np.median(image[masks["WM"]]))
        if wm <= 0:
            raise ValueError(f"{case_id}: the white-matter median of {modality} is {wm}, not positive")
        wm_median[modality] = wm
        texture = local_std(image, spacing, window_mm)
        stats[modality], samples[modality] = {}, {}
        for name in CLASSES:
            mask = masks[name]
            if not mask.any():
                continue
            values = image[mask] / wm
            deviation = texture[mask] / wm
            q25, median, q75 = (float(v) for v in np.quantile(values, (0.25, 0.5, 0.75)))
            stats[modality][name] = {
                "median": median,
                "q25": q25,
                "q75": q75,
                "texture": float(np.median(deviation)),
                "voxels": int(mask.sum()),
            }
            samples[modality][name] = np.stack([_sample(values, pool_sample), _sample(deviation, pool_sample)])
    enhancement = normal_enhancement(images, seg, spacing)
    return CaseCalibration(case_id, stats, wm_median, [float(c) for c in centres], samples, enhancement)


def pool_cases(cases: Sequence[CaseCalibration]) -> dict[str, dict[str, dict[str, float]]]:
    """Per modality and class, the median, quartiles and texture (median local deviation) of the cases' samples
    together (each case weighs at most its ``pool_sample`` voxels), and how many cases have the class."""
    pooled: dict[str, dict[str, dict[str, float]]] = {}
    for modality in MODALITIES:
        pooled[modality] = {}
        for name in CLASSES:
            parts = [c.samples[modality][name] for c in cases if name in c.samples.get(modality, {})]
            if not parts:
                continue
            joined = np.concatenate(parts, axis=1)
            q25, median, q75 = (float(v) for v in np.quantile(joined[0], (0.25, 0.5, 0.75)))
            pooled[modality][name] = {
                "median": median,
                "q25": q25,
                "q75": q75,
                "texture": float(np.median(joined[1])),
                "cases": len(parts),
            }
    return pooled


def _spacing(affine: np.ndarray) -> tuple[float, ...]:
    """The voxel size (mm) along each axis of a ``(4, 4)`` affine (MONAI's ``affine_to_spacing``)."""
    return tuple(float(v) for v in affine_to_spacing(np.asarray(affine, dtype=np.float64), r=3))


def load_real_case(case: BratsCase) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[float, ...]]:
    """The four images (modality -> float32 ``(X, Y, Z)``), the label map (uint8 ``(X, Y, Z)``) and the voxel size
    (mm) of a labelled case folder, on the files' own grid."""
    if case.label is None:
        raise ValueError(f"{case.case_id}: no segmentation")
    images = {}
    for modality in MODALITIES:
        image = nib.load(str(case.images[modality]))
        images[modality] = np.asarray(image.get_fdata(dtype=np.float32))
    label = nib.load(str(case.label))
    return images, np.asarray(label.dataobj).astype(np.uint8), _spacing(label.affine)


def phantom_case(index: int, seed: int) -> tuple[str, dict[str, np.ndarray], np.ndarray, tuple[float, ...]]:
    """Phantom ``index`` of generator seed ``seed`` on the BraTS grid (1 mm): its id, images, label map, spacing."""
    from kd_components.data.phantoms import generate_case

    phantom = generate_case(index, seed, profile="brats")
    images = {m: np.asarray(phantom.images[m], dtype=np.float32) for m in MODALITIES}
    return phantom.case_id, images, np.asarray(phantom.seg).astype(np.uint8), _spacing(phantom.affine)


def calibrate(
    real_cases: Sequence[BratsCase],
    phantoms: int = 8,
    phantom_seed: int = 100,
    log: Callable[[str], None] = print,
    pool_sample: int = 50_000,
) -> dict[str, object]:
    """Measure every real case and ``phantoms`` phantoms of ``phantom_seed``; the numbers as plain JSON:
    ``{"real": {"cases": {id: ...}, "pooled": ...}, "phantoms": {"seed", "cases", "pooled"}, "settings"}``."""
    real = []
    for case in real_cases:
        log(f"[calibration] {case.case_id}")
        images, seg, spacing = load_real_case(case)
        real.append(measure_case(case.case_id, images, seg, spacing, pool_sample=pool_sample))
    synthetic = []
    for index in range(phantoms):
        case_id, images, seg, spacing = phantom_case(index, phantom_seed)
        log(f"[calibration] phantom {case_id} (seed {phantom_seed})")
        synthetic.append(measure_case(case_id, images, seg, spacing, pool_sample=pool_sample))
    return {
        "settings": {
            "brain": "all four images > 0",
            "tissue": f"3-class k-means of {CLASSIFY_ON} outside the tumour dilated by 3 voxels",
            "normalised_by": "the median of WM of each modality",
            "texture": "median over the class of the local standard deviation in a 3 mm box",
            "pool_sample": pool_sample,
        },
        "real": {"cases": {c.case_id: c.as_dict() for c in real}, "pooled": pool_cases(real)},
        "phantoms": {
            "seed": phantom_seed,
            "count": phantoms,
            "cases": {c.case_id: c.as_dict() for c in synthetic},
            "pooled": pool_cases(synthetic) if synthetic else {},
        },
    }


def _median_iqr(entry: Mapping[str, float] | None) -> str:
    if not entry:
        return "—"
    return f"{entry['median']:.2f} [{entry['q25']:.2f}, {entry['q75']:.2f}]"


def _texture(entry: Mapping[str, float] | None) -> str:
    return "—" if not entry else f"{entry['texture']:.3f}"


def render_calibration_section(
    result: Mapping[str, object], command: str, machine: str = "", json_file: str = "real_scans_calibration.json"
) -> str:
    """The Markdown of :func:`calibrate`'s result (without markers): a table per modality, a row per class, the
    real cases' and pooled median [quartiles] beside the phantoms', and the texture of both. ``machine`` (the CPU)
    and ``json_file`` (where the numbers were written) are named in its first paragraph."""
    real = result["real"]
    synthetic = result["phantoms"]
    assert isinstance(real, dict) and isinstance(synthetic, dict)
    settings = result["settings"]
    assert isinstance(settings, dict)
    case_ids = list(real["cases"])
    date = datetime.date.today().isoformat() + (f" ({machine})" if machine else "")
    parts = [
        f"Generated by `{command}` on {date}: the {len(case_ids)} real cases against "
        f"{synthetic['count']} phantoms of seed {synthetic['seed']} (`generate_case(i, {synthetic['seed']}, "
        "profile='brats')`, 1 mm, the generator as it was at that moment), measured by the same function "
        f"(`kd_lab/calibration.py`). The numbers are also in `{json_file}`.",
        "How: brain = all four images > 0; CSF / GM / WM = 3-class k-means of t1n in the brain outside the tumour "
        "dilated by 3 voxels; NETC / SNFH / ET = the reference labels 1 / 2 / 3. Each value is divided by the "
        "median of that modality's white matter (so WM is 1.00): the median [first, third quartile] of the class's "
        "voxels. Texture: the median over the class of the local standard deviation in a 3 x 3 x 3 mm box, divided "
        "by the same WM median. Pooled: the cases' voxels together, each case weighing at most "
        f"{settings['pool_sample']:,} voxels per class (a case without a class, e.g. no ET, adds none).",
    ]
    for modality in MODALITIES:
        header = [
            "class",
            *case_ids,
            "real, pooled",
            "phantoms, pooled",
            "texture real",
            "texture phantoms",
        ]
        lines = [f"**{modality}**", "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        for name in CLASSES:
            cells = [name]
            cells += [_median_iqr(real["cases"][c]["stats"][modality].get(name)) for c in case_ids]
            real_pooled = real["pooled"].get(modality, {}).get(name)
            phantom_pooled = synthetic["pooled"].get(modality, {}).get(name)
            cells += [_median_iqr(real_pooled), _median_iqr(phantom_pooled)]
            cells += [_texture(real_pooled), _texture(phantom_pooled)]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    parts.append(_render_enhancement(real["cases"], synthetic["cases"]))
    return "\n\n".join(parts)


def _render_enhancement(real: Mapping[str, Mapping], phantoms: Mapping[str, Mapping]) -> str:
    """The table of :func:`normal_enhancement`: a row per real case, then the phantoms' mean [lowest, highest]."""
    keys = ("upper", "lower", "edge", "inner_lead")
    lines = [
        "**t1c's enhancing normal structures** (vessels, dura; `normal_enhancement`): on the brain more than "
        f"{ENHANCEMENT_TUMOUR_MARGIN_MM:g} mm from the tumour, t1c and t1n each over their median there. *t1c - t1n "
        "upper / lower*: its 99.9th percentile and minus its 0.1th; *edge*: t1c's 99.9th percentile within "
        f"{ENHANCEMENT_EDGE_MM:g} mm of the brain's edge; *inner lead*: t1c's 99.9th percentile deeper than that "
        "minus t1n's.",
        "",
        "| case | t1c - t1n upper | lower | edge | inner lead |",
        "|---|---:|---:|---:|---:|",
    ]
    for case_id, case in real.items():
        values = case.get("enhancement") or {}
        lines.append(f"| {case_id} | " + " | ".join(f"{values[k]:.2f}" if k in values else "—" for k in keys) + " |")
    measured = [case["enhancement"] for case in phantoms.values() if case.get("enhancement")]
    if measured:
        cells = []
        for k in keys:
            column = np.array([m[k] for m in measured])
            cells.append(f"{column.mean():.2f} [{column.min():.2f}, {column.max():.2f}]")
        lines.append(f"| phantoms, mean [lowest, highest] of {len(measured)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_calibration(result: Mapping[str, object], path: str | os.PathLike[str]) -> Path:
    """Write :func:`calibrate`'s result as JSON (atomically); its path."""
    from kd_components.io import save_json_atomic

    save_json_atomic(result, path)
    return Path(path)
