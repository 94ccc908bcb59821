"""Tissue contrasts of the four BraTS modalities and the scanner effects (blur, bias, scale, noise)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kd_components.constants import MODALITIES
from kd_components.data.phantoms.anatomy import _Anatomy
from kd_components.data.phantoms.fields import _bias_field, _smooth_noise
from kd_components.data.phantoms.grid import PhantomProfile
from kd_components.data.phantoms.lesion import _LesionMaps

#: Mean signal per tissue relative to normal white matter, per modality (jittered per case).
TISSUE_CONTRAST: dict[str, dict[str, float]] = {
    "t1c": {"csf": 0.30, "gm": 0.74, "wm": 1.0, "netc": 0.40, "et": 1.60, "snfh": 0.72},
    "t1n": {"csf": 0.30, "gm": 0.72, "wm": 1.0, "netc": 0.42, "et": 0.70, "snfh": 0.70},
    "t2w": {"csf": 2.90, "gm": 1.35, "wm": 1.0, "netc": 2.40, "et": 1.60, "snfh": 2.00},
    "t2f": {"csf": 0.32, "gm": 1.20, "wm": 1.0, "netc": 1.10, "et": 1.45, "snfh": 1.80},
}
#: Weight of the MNI T1 texture residual per modality (T2-weighted contrasts invert it).
T1_TEXTURE_WEIGHT: dict[str, float] = {"t1c": 1.0, "t1n": 1.0, "t2w": -1.6, "t2f": -0.8}
#: Range of the white-matter level per modality, in stored (scanner-like) units.
WM_LEVEL_RANGE: dict[str, tuple[float, float]] = {
    "t1c": (400.0, 1000.0),
    "t1n": (400.0, 1000.0),
    "t2w": (300.0, 900.0),
    "t2f": (300.0, 900.0),
}


#: Per-case factors on the tissue levels: normal tissue (CSF, GM), tumour tissue.
NORMAL_JITTER, TUMOUR_JITTER = (0.9, 1.1), (0.92, 1.08)


def _sample_contrast(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-case tissue levels (scanner and protocol): the table above with +-10 % jitter for normal tissue (their
    order stays that of MRI physics) and +-8 % for tumour tissue; NETC in FLAIR varies from 0.6 to 1.6."""
    contrast = {}
    for modality in MODALITIES:
        levels = TISSUE_CONTRAST[modality]
        contrast[modality] = {
            tissue: value * float(rng.uniform(*(NORMAL_JITTER if tissue in ("csf", "gm") else TUMOUR_JITTER)))
            for tissue, value in levels.items()
        }
        contrast[modality]["wm"] = 1.0
    contrast["t2f"]["netc"] = float(rng.uniform(0.6, 1.6))
    contrast["t1c"]["et"] = float(rng.uniform(1.3, 1.9))
    return contrast


def _normal_enhancement(rng: np.random.Generator, anatomy: _Anatomy, spacing_mm: float) -> np.ndarray:
    """Enhancing normal structures of t1c (X, Y, Z) float32 in [0, 1]: vessels and dura.

    Vessels are small bright spots in sulci and near the cortex; dural remnants are bright
    patches along parts of the brain's edge, as skull stripping leaves them in real scans.
    """
    field = _smooth_noise(rng, anatomy.brain.shape, spacing_mm, 2.0)
    vessels = np.clip(field - 2.4, 0.0, None) * 1.5 * (anatomy.csf + 0.5 * anatomy.gm)
    edge = anatomy.brain & ~ndimage.binary_erosion(anatomy.brain, iterations=max(1, round(2.0 / spacing_mm)))
    patches = np.clip(_smooth_noise(rng, anatomy.brain.shape, spacing_mm, 15.0) - 0.8, 0.0, 1.0)
    return np.minimum(vessels + edge * patches, 1.0).astype(np.float32)


def _render_modality(
    rng: np.random.Generator,
    modality: str,
    levels: dict[str, float],
    anatomy: _Anatomy,
    maps: _LesionMaps,
    texture: np.ndarray,
    spacing_mm: float,
) -> np.ndarray:
    """Noise-free signal (X, Y, Z) float32 of one modality, relative to white matter = 1, before blur and bias."""
    image = levels["csf"] * anatomy.csf + levels["gm"] * anatomy.gm + levels["wm"] * anatomy.wm
    infra = anatomy.infratentorial
    image += T1_TEXTURE_WEIGHT[modality] * anatomy.t1_residual * (1.0 + (anatomy.infratentorial_texture - 1.0) * infra)
    image *= 1.0 + (anatomy.infratentorial_level - 1.0) * infra
    image *= 1.0 + float(rng.uniform(0.02, 0.05)) * texture
    heterogeneity = float(rng.uniform(0.08, 0.15))
    tumour_a = 1.0 + heterogeneity * maps.texture[0]
    tumour_b = 1.0 + float(rng.uniform(0.12, 0.22)) * maps.texture[1]
    region = image[maps.box]
    tumour = maps.netc + maps.et + maps.snfh
    region *= 1.0 - tumour
    region += maps.netc * levels["netc"] * tumour_a
    region += maps.et * levels["et"] * tumour_b
    region += maps.snfh * levels["snfh"] * (1.0 + 0.5 * heterogeneity * maps.texture[0])
    image *= anatomy.brain
    return np.clip(image, 0.0, None).astype(np.float32)


def _acquire(
    rng: np.random.Generator, signal: np.ndarray, brain: np.ndarray, modality: str, spacing: float
) -> np.ndarray:
    """Scanner effects on a signal (X, Y, Z): blur (in-plane 0.3-0.9 mm; in 40 % of the scans, slices 2-5 mm thick
    along one axis, mostly the axial one), bias field, global scale/offset, Rician noise; int16 output."""
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
    enhancement = _normal_enhancement(rng, anatomy, profile.spacing_mm)
    images = {}
    for modality in MODALITIES:
        signal = _render_modality(rng, modality, contrast[modality], anatomy, maps, texture, profile.spacing_mm)
        if modality == "t1c":
            signal += enhancement * float(rng.uniform(0.8, 1.3))
        images[modality] = _acquire(rng, signal, anatomy.brain, modality, profile.spacing_mm)
    return images
