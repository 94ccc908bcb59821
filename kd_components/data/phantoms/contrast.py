"""Tissue contrasts of the four BraTS modalities and the scanner effects (blur, bias, scale, noise)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kd_components.constants import MODALITIES
from kd_components.data.phantoms.anatomy import _Anatomy
from kd_components.data.phantoms.fields import _bias_field, _smooth_noise
from kd_components.data.phantoms.grid import PhantomProfile
from kd_components.data.phantoms.lesion import LESION_CLASSES, _LesionMaps

#: Signal of each tissue relative to normal white matter, per modality: the range each case's level is drawn from
#: (uniformly, then :func:`_keep_orderings`). Fitted to real glioma scans (``scripts/measure_real_scans.py
#: --calibration``, docs/real_scans.md): tumour classes from their medians and spread, normal tissue from the same
#: measurement made on phantoms (CSF and GM are partial-volume mixtures in both). NETC is drawn as three tissues:
#: necrosis, solid non-enhancing tumour and cyst fluid. On t1c only GM and ET keep the level drawn from their range:
#: the tissues that do not enhance (CSF, necrosis, solid tumour, cyst, oedema) are drawn too, then replaced by their
#: t1n level times a factor in :data:`T1C_OVER_T1N`.
CONTRAST_PRIORS: dict[str, dict[str, tuple[float, float]]] = {
    "t1c": {
        "csf": (0.15, 0.40),
        "gm": (0.68, 0.95),
        "necrosis": (0.30, 0.65),
        "solid": (0.50, 0.90),
        "cyst": (0.20, 0.45),
        "et": (1.15, 1.65),
        "snfh": (0.50, 0.80),
    },
    "t1n": {
        "csf": (0.15, 0.35),
        "gm": (0.66, 0.86),
        "necrosis": (0.30, 0.58),
        "solid": (0.40, 0.80),
        "cyst": (0.20, 0.40),
        "et": (0.45, 0.70),
        "snfh": (0.50, 0.78),
    },
    "t2w": {
        "csf": (3.20, 4.50),
        "gm": (1.10, 1.45),
        "necrosis": (2.20, 3.60),
        "solid": (1.80, 2.90),
        "cyst": (2.80, 4.00),
        "et": (1.60, 3.00),
        "snfh": (1.70, 3.00),
    },
    "t2f": {
        "csf": (0.20, 0.50),
        "gm": (0.95, 1.22),
        "necrosis": (1.30, 2.40),
        "solid": (1.40, 2.40),
        "cyst": (0.40, 1.10),
        "et": (1.50, 2.50),
        "snfh": (1.45, 2.60),
    },
}
#: Tissues that do not enhance look alike before and after contrast: their t1c level is their t1n level times a
#: factor in this range (above 1 for a spin-echo-like t1c, or faint enhancement).
T1C_OVER_T1N = (0.9, 1.2)
#: Weight of the MNI T1 texture residual per modality (T2-weighted contrasts invert it).
T1_TEXTURE_WEIGHT: dict[str, float] = {"t1c": 1.0, "t1n": 1.0, "t2w": -1.6, "t2f": -0.8}
#: Range of the white-matter level per modality, in stored (scanner-like) units.
WM_LEVEL_RANGE: dict[str, tuple[float, float]] = {
    "t1c": (400.0, 1000.0),
    "t1n": (400.0, 1000.0),
    "t2w": (300.0, 900.0),
    "t2f": (300.0, 900.0),
}
#: Range of each case's gamma per modality (``signal ** gamma``: monotonic, so every ordering of tissues is kept).
GAMMA_RANGE = (0.8, 1.25)


def _sample_contrast(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-case tissue levels (scanner, protocol and tumour biology), in the spirit of SynthSeg: every class drawn
    from its range in :data:`CONTRAST_PRIORS`, then the orderings that define the classes restored."""
    contrast = {
        modality: {tissue: float(rng.uniform(*bounds)) for tissue, bounds in priors.items()} | {"wm": 1.0}
        for modality, priors in CONTRAST_PRIORS.items()
    }
    for tissue in ("csf", "necrosis", "solid", "cyst", "snfh"):
        contrast["t1c"][tissue] = contrast["t1n"][tissue] * float(rng.uniform(*T1C_OVER_T1N))
    return _keep_orderings(contrast)


def _keep_orderings(contrast: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Restore the orderings that define the classes (in place, returned): ET clearly brighter than every other
    tissue on t1c; solid non-enhancing tumour darker than oedema on t1n and brighter on t2w (else NETC and SNFH
    would look alike); free water (CSF) the brightest tissue on t2w, as cyst fluid; cyst fluid darker than oedema on
    FLAIR; CSF darker than grey matter on T1 and FLAIR."""
    t1c, t1n, t2w, t2f = (contrast[m] for m in ("t1c", "t1n", "t2w", "t2f"))
    t1c["et"] = max(t1c["et"], 1.12 * max(1.0, t1c["gm"], t1c["snfh"], t1c["solid"], t1c["necrosis"]))
    t1n["solid"] = min(t1n["solid"], 0.85 * t1n["snfh"])
    t1c["solid"] = min(t1c["solid"], 0.95 * t1c["snfh"])
    t2w["solid"] = max(t2w["solid"], 1.15 * t2w["snfh"])
    t2w["csf"] = max(t2w["csf"], 1.15 * max(t2w["necrosis"], t2w["solid"], t2w["et"], t2w["snfh"]))
    t2f["cyst"] = min(t2f["cyst"], 0.9 * t2f["snfh"])
    for levels in (t1c, t1n, t2f):
        levels["csf"] = min(levels["csf"], 0.8 * levels["gm"])
    return contrast


#: Peak gains of t1c's enhancing normal structures over white matter (before the per-case factor 0.8-1.3 and the
#: scanner's blur): vessels in sulci and near the cortex, dural remnants along the brain's edge. Fitted to the three
#: real scans of ``../shared/real_dev`` with ``kd_lab.calibration.normal_enhancement`` (the upper tail of t1c away
#: from the tumour, against t1n's; docs/real_scans.md, sections 3.7 and 7, have the numbers): with gains of 1 the
#: phantoms' vessels and dura were fainter than the real scans' (the 99.9th percentile of ``t1c - t1n`` 1.10 on
#: average against 1.55-1.81) and t1c's brightest voxels inside the brain were below t1n's (real: above), so on the
#: phantoms little that is bright on t1c was not tumour.
VESSEL_GAIN = 2.0
DURA_GAIN = 1.6


def _normal_enhancement(rng: np.random.Generator, anatomy: _Anatomy, spacing_mm: float) -> np.ndarray:
    """Enhancing normal structures of t1c (X, Y, Z) float32 in [0, :data:`VESSEL_GAIN` + :data:`DURA_GAIN`]: vessels
    and dura, in units of white matter.

    Vessels are small bright spots in sulci and near the cortex; dural remnants are bright
    patches along parts of the brain's edge, as skull stripping leaves them in real scans.
    """
    field = _smooth_noise(rng, anatomy.brain.shape, spacing_mm, 2.0)
    vessels = np.minimum(np.clip(field - 2.4, 0.0, None) * 1.5 * (anatomy.csf + 0.5 * anatomy.gm), 1.0)
    edge = anatomy.brain & ~ndimage.binary_erosion(anatomy.brain, iterations=max(1, round(2.0 / spacing_mm)))
    patches = np.clip(_smooth_noise(rng, anatomy.brain.shape, spacing_mm, 15.0) - 0.8, 0.0, 1.0)
    return (VESSEL_GAIN * vessels + DURA_GAIN * edge * patches).astype(np.float32)


#: Amplitude range of a lesion class's texture where it differs from the default (0.04, 0.2).
_TEXTURE_AMPLITUDE = {"cyst": (0.01, 0.05), "et": (0.1, 0.35)}
#: Amplitude of the fine texture of normal tissue per modality (real T2-weighted scans are the grainiest).
NORMAL_TEXTURE: dict[str, tuple[float, float]] = {
    "t1c": (0.02, 0.05),
    "t1n": (0.02, 0.05),
    "t2w": (0.06, 0.12),
    "t2f": (0.04, 0.09),
}


def _lesion_texture(rng: np.random.Generator, maps: _LesionMaps, spacing_mm: float) -> dict[str, np.ndarray]:
    """Heterogeneity of each lesion class (box shape, float32, mean 1): its own random field, correlated over
    1-3 mm, with a per-case amplitude (4-20 % for tumour tissue and oedema, 10-35 % for enhancing tumour, whose
    signal varies most on real scans, 1-5 % for cyst fluid). Uses ``rng``
    only through a child generator drawn from it, so a healthy brain (an empty box) keeps the draws that follow."""
    rng = np.random.default_rng(int(rng.integers(2**63)))
    texture = {}
    if 0 in maps.box_shape:
        return {name: np.ones(maps.box_shape, np.float32) for name in LESION_CLASSES}
    for name in LESION_CLASSES:
        amplitude = float(rng.uniform(*_TEXTURE_AMPLITUDE.get(name, (0.04, 0.2))))
        field = _smooth_noise(rng, maps.box_shape, spacing_mm, float(rng.uniform(1.0, 3.0)))
        texture[name] = (1.0 + amplitude * field).astype(np.float32)
    return texture


def _render_modality(
    rng: np.random.Generator,
    modality: str,
    levels: dict[str, float],
    anatomy: _Anatomy,
    maps: _LesionMaps,
    texture: np.ndarray,
    lesion_texture: dict[str, np.ndarray],
) -> np.ndarray:
    """Noise-free signal (X, Y, Z) float32 of one modality, relative to white matter = 1, before blur and bias."""
    image = levels["csf"] * anatomy.csf + levels["gm"] * anatomy.gm + levels["wm"] * anatomy.wm
    infra = anatomy.infratentorial
    image += T1_TEXTURE_WEIGHT[modality] * anatomy.t1_residual * (1.0 + (anatomy.infratentorial_texture - 1.0) * infra)
    image *= 1.0 + (anatomy.infratentorial_level - 1.0) * infra
    image *= 1.0 + float(rng.uniform(*NORMAL_TEXTURE[modality])) * texture
    region = image[maps.box]
    region *= np.clip(1.0 - sum(maps.weights.values()), 0.0, 1.0)
    for name, weight in maps.weights.items():
        region += weight * levels[name] * lesion_texture[name]
    image *= anatomy.brain
    return np.clip(image, 0.0, None).astype(np.float32)


def _acquire(
    rng: np.random.Generator, signal: np.ndarray, brain: np.ndarray, modality: str, spacing: float
) -> np.ndarray:
    """Scanner effects on a signal (X, Y, Z): a gamma (:data:`GAMMA_RANGE`), blur (in-plane 0.3-0.9 mm; in 40 % of
    the scans, slices 2-5 mm thick along one axis, mostly the axial one), bias field, global scale/offset, Rician
    noise; int16 output."""
    signal = np.power(signal, float(rng.uniform(*GAMMA_RANGE)), dtype=np.float32)
    sigmas = np.full(3, rng.uniform(0.3, 0.9))
    if rng.uniform() < 0.4:
        axis = int(rng.choice(3, p=[0.15, 0.15, 0.7]))
        sigmas[axis] = max(sigmas[axis], rng.uniform(2.0, 5.0) / 2.355)  # slice thickness as a Gaussian's FWHM
    blurred = ndimage.gaussian_filter(signal, tuple(sigmas / spacing))
    biased = blurred * _bias_field(rng, signal.shape, float(rng.uniform(0.05, 0.25)))
    level = float(rng.uniform(*WM_LEVEL_RANGE[modality]))
    offset = float(rng.uniform(-0.03, 0.03))
    sigma = float(rng.uniform(0.015, 0.05))
    real = biased + offset + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary) * level
    values = np.clip(np.rint(magnitude), 1, np.iinfo(np.int16).max)
    return np.where(brain, values, 0).astype(np.int16)


def _synthesize_images(
    rng: np.random.Generator, anatomy: _Anatomy, maps: _LesionMaps, profile: PhantomProfile
) -> dict[str, np.ndarray]:
    """The four modalities (X, Y, Z) int16, in :data:`~kd_components.constants.MODALITIES` order."""
    contrast = _sample_contrast(rng)
    texture = _smooth_noise(rng, profile.shape, profile.spacing_mm, 1.5)
    lesion_texture = _lesion_texture(rng, maps, profile.spacing_mm)
    enhancement = _normal_enhancement(rng, anatomy, profile.spacing_mm)
    images = {}
    for modality in MODALITIES:
        signal = _render_modality(rng, modality, contrast[modality], anatomy, maps, texture, lesion_texture)
        if modality == "t1c":
            signal += enhancement * float(rng.uniform(0.8, 1.3))
        images[modality] = _acquire(rng, signal, anatomy.brain, modality, profile.spacing_mm)
    return images
