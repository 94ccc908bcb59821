"""Normal anatomy in the output grid: the template under a random pose, changed per case (ventricles, cerebellum,
sulci, cortex, a smooth warp) and pushed by the lesion's mass effect."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from kd_components.data.phantoms.atlas import _Atlas
from kd_components.data.phantoms.fields import _smooth_noise
from kd_components.data.phantoms.grid import PhantomProfile

if TYPE_CHECKING:
    from kd_components.data.phantoms.lesion import _LesionSpec


@dataclass(frozen=True)
class _Pose:
    """Placement of the MNI brain in the output world: ``mni = anchor_mni + matrix @ (p - anchor_out)``.

    ``matrix`` (3, 3) is ``rotation @ diag(1 / scale)``; the anchors (3,) are in mm.
    """

    matrix: np.ndarray
    anchor_mni: np.ndarray
    anchor_out: np.ndarray

    def to_output(self, mni_mm: np.ndarray) -> np.ndarray:
        """Map MNI positions (..., 3) to output-world positions (..., 3)."""
        return self.anchor_out + (mni_mm - self.anchor_mni) @ np.linalg.inv(self.matrix).T


def _sample_pose(rng: np.random.Generator, profile: PhantomProfile, atlas: _Atlas) -> _Pose:
    """Random rotation (+-4 degrees per axis), scale (+-5 %, slightly anisotropic) and shift of the brain."""
    rotation = Rotation.from_euler("xyz", rng.uniform(-4.0, 4.0, size=3), degrees=True).as_matrix()
    scale = rng.uniform(0.95, 1.05) * rng.uniform(0.98, 1.02, size=3)
    lo, hi = profile.world_bounds_mm()
    top_margin = rng.uniform(2.0, 6.0)
    shift_xy = rng.uniform(-3.0, 3.0, size=2)
    anchor_out = np.array([(lo[0] + hi[0]) / 2 + shift_xy[0], (lo[1] + hi[1]) / 2 + shift_xy[1], hi[2] - top_margin])
    return _Pose(matrix=rotation @ np.diag(1.0 / scale), anchor_mni=atlas.top_anchor_mm, anchor_out=anchor_out)


#: MNI152 landmarks of the per-case changes of normal anatomy: centre (mm) and extent (Gaussian sigma per axis,
#: mm) of the lateral ventricles and of the cerebellum.
VENTRICLES_MNI: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0, -8.0, 16.0), (22.0, 32.0, 16.0))
CEREBELLUM_MNI: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0, -62.0, -30.0), (34.0, 22.0, 16.0))
#: Below these MNI coordinates (mm) lie the cerebellum and brainstem (infratentorial), with a soft edge.
INFRATENTORIAL_MNI_Z, INFRATENTORIAL_MNI_Y = -18.0, -20.0


@dataclass(frozen=True)
class _Variation:
    """How one case's normal brain differs from the average MNI brain.

    Attributes:
        ventricles: radial push of the lateral ventricles: below 0 small (young brains), 0.2-0.45 enlarged
            (atrophy), up to 0.7 hydrocephalic.
        cerebellum: radial push of the cerebellum (below 0: atrophic).
        sulci: fraction of the grey matter beside CSF turned into CSF (sulcal widening).
        cortex: above 0 a thicker cortex (white matter beside grey matter turned grey), below 0 a thinner one.
        warp: (3, X, Y, Z) float32 smooth random displacement (mm) of the whole template.
        infratentorial_level: signal factor of the cerebellum and brainstem.
        infratentorial_texture: factor of their texture (the template's folia and nuclei).
    """

    ventricles: float
    cerebellum: float
    sulci: float
    cortex: float
    warp: np.ndarray
    infratentorial_level: float
    infratentorial_texture: float


def _sample_variation(rng: np.random.Generator, profile: PhantomProfile) -> _Variation:
    """Per-case anatomy: ventricles from small to hydrocephalic (55 % normal, 35 % enlarged, 10 % strongly),
    sulcal widening, cortical thickness, cerebellum and brainstem, and a smooth warp of 1-4 mm."""
    kind = rng.uniform()
    if kind < 0.55:
        ventricles = rng.uniform(-0.3, 0.2)
    elif kind < 0.9:
        ventricles = rng.uniform(0.2, 0.45)
    else:
        ventricles = rng.uniform(0.45, 0.7)
    warp_mm = rng.uniform(1.0, 4.0)
    warp = np.stack([_smooth_noise(rng, profile.shape, profile.spacing_mm, 25.0) for _ in range(3)]) * warp_mm
    return _Variation(
        ventricles=float(ventricles),
        cerebellum=float(rng.uniform(-0.25, 0.1)),
        sulci=float(rng.uniform(0.0, 0.6) ** 1.5),
        cortex=float(rng.uniform(-0.4, 0.4)),
        warp=warp.astype(np.float32),
        infratentorial_level=float(rng.uniform(0.94, 1.06)),
        infratentorial_texture=float(rng.uniform(0.8, 1.3)),
    )


def _radial_push(points: np.ndarray, centre: tuple[float, ...], sigmas: tuple[float, ...], k: float) -> np.ndarray:
    """The source (..., 3) of what ends up at ``points`` (..., 3) when the region around ``centre`` grows (``k > 0``)
    or shrinks (``k < 0``): ``src = c + d (1 - k exp(-|d / sigma|^2))``, monotonic along each ray for ``k < 1``."""
    offset = points - np.asarray(centre)
    scaled = offset / np.asarray(sigmas)
    return np.asarray(centre) + offset * (1.0 - k * np.exp(-np.einsum("...i,...i->...", scaled, scaled)))[..., None]


def _infratentorial(mni: np.ndarray) -> np.ndarray:
    """Soft weight (...) in [0, 1] of the cerebellum and brainstem at MNI positions (..., 3)."""
    below = 1.0 / (1.0 + np.exp((mni[..., 2] - INFRATENTORIAL_MNI_Z) / 3.0))
    behind = 1.0 / (1.0 + np.exp((mni[..., 1] - INFRATENTORIAL_MNI_Y) / 3.0))
    return (below * behind).astype(np.float32)


#: Exponent that sharpens the template's tissue fractions (each raised to it, then renormalised to the voxel's
#: brain share). The MNI152 probabilities average many brains, so their tissues overlap far more than one brain's
#: do at 1 mm (half of the brain's voxels hold 2 % CSF or more); docs/real_scans.md, section 3.5.
TISSUE_SHARPNESS = 4.0


def _sharpen(
    csf: np.ndarray, gm: np.ndarray, wm: np.ndarray, power: float = TISSUE_SHARPNESS
) -> tuple[np.ndarray, ...]:
    """Sharper partial-volume fractions (each (X, Y, Z) float32): ``f_i^power / sum_j f_j^power`` times the voxel's
    brain share ``sum_j f_j``, so a voxel's brain share is kept and its largest tissue gains."""
    share = csf + gm + wm
    powered = [np.power(f, power, dtype=np.float32) for f in (csf, gm, wm)]
    total = powered[0] + powered[1] + powered[2]
    scale = np.divide(share, total, out=np.zeros_like(share), where=total > 0)
    return tuple((f * scale).astype(np.float32) for f in powered)


@dataclass(frozen=True)
class _Anatomy:
    """Resampled anatomy, all (X, Y, Z) float32 except ``brain`` (bool).

    ``csf``, ``gm``, ``wm`` are partial-volume fractions (0 outside the brain); ``t1_residual``
    is the MNI T1 texture the fractions do not explain (relative to white matter); ``infratentorial`` the soft
    weight of the cerebellum and brainstem, with their signal and texture factors.
    """

    brain: np.ndarray
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    t1_residual: np.ndarray
    infratentorial: np.ndarray
    infratentorial_level: float = 1.0
    infratentorial_texture: float = 1.0


def _voxel_world(profile: PhantomProfile, z_range: tuple[int, int]) -> np.ndarray:
    """World positions (X, Y, nz, 3) in mm of the voxel centres of slices ``z_range[0]:z_range[1]``."""
    nx, ny, _ = profile.shape
    index = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(*z_range), indexing="ij"), axis=-1).astype(
        np.float64
    )
    affine = profile.affine
    return index @ affine[:3, :3].T + affine[:3, 3]


def _push_from_lesion(points_mm: np.ndarray, lesion: _LesionSpec) -> np.ndarray:
    """Mass effect: the source position (..., 3) of the anatomy that ends up at ``points_mm`` (..., 3).

    A radial map ``r_src = r * (1 - k exp(-r^2 / sigma^2))`` with ``k < 1`` is monotonic, so the
    anatomy is pushed smoothly away from the lesion centre, by at most ``0.43 k sigma`` mm.
    """
    offset = points_mm - lesion.centre_mm
    r2 = np.einsum("...i,...i->...", offset, offset)
    shrink = 1.0 - lesion.mass_effect * np.exp(-r2 / lesion.mass_effect_scale_mm**2)
    return lesion.centre_mm + offset * shrink[..., None]


def _resample_anatomy(
    atlas: _Atlas, profile: PhantomProfile, pose: _Pose, lesion: _LesionSpec, variation: _Variation
) -> _Anatomy:
    """Resample the atlas into the profile's grid (trilinear), slab by slab to bound memory: each output voxel's
    source is pushed by the lesion (mass effect), warped, placed by the pose, and pushed by the case's ventricles
    and cerebellum."""
    out = {name: np.zeros(profile.shape, dtype=np.float32) for name in atlas.volumes}
    infratentorial = np.zeros(profile.shape, dtype=np.float32)
    slab = max(1, 2_000_000 // (profile.shape[0] * profile.shape[1]))
    for z0 in range(0, profile.shape[2], slab):
        z1 = min(z0 + slab, profile.shape[2])
        source = _push_from_lesion(_voxel_world(profile, (z0, z1)), lesion)
        source = source + np.moveaxis(variation.warp[:, :, :, z0:z1], 0, -1)
        mni = pose.anchor_mni + (source - pose.anchor_out) @ pose.matrix.T
        mni = _radial_push(mni, *VENTRICLES_MNI, variation.ventricles)
        mni = _radial_push(mni, *CEREBELLUM_MNI, variation.cerebellum)
        infratentorial[:, :, z0:z1] = _infratentorial(mni)
        voxel = mni @ atlas.world_to_voxel[:3, :3].T + atlas.world_to_voxel[:3, 3]
        coordinates = np.moveaxis(voxel, -1, 0)
        for name, volume in atlas.volumes.items():
            out[name][:, :, z0:z1] = ndimage.map_coordinates(volume, coordinates, order=1, mode="constant", cval=0.0)
    anatomy = _tissues_from_samples(out, atlas, infratentorial, variation)
    return _vary_tissues(anatomy, variation, profile.spacing_mm)


def _tissues_from_samples(
    sampled: dict[str, np.ndarray], atlas: _Atlas, infratentorial: np.ndarray, variation: _Variation
) -> _Anatomy:
    """Binarise the brain, derive CSF and the T1 texture residual from resampled atlas volumes (X, Y, Z), then
    sharpen the fractions (:func:`_sharpen`; after the residual, which stays the template's texture)."""
    brain = sampled["brain"] > 0.5
    gm = np.where(brain, sampled["gm"], 0.0).astype(np.float32)
    wm = np.where(brain, sampled["wm"], 0.0).astype(np.float32)
    csf = np.where(brain, np.clip(sampled["brain"] - gm - wm, 0.0, 1.0), 0.0).astype(np.float32)
    c_csf, c_gm, c_wm = atlas.t1_tissue_means
    t1 = sampled["t1"] / atlas.t1_wm_level
    residual = np.where(brain, t1 - (c_csf * csf + c_gm * gm + c_wm * wm), 0.0).astype(np.float32)
    csf, gm, wm = _sharpen(csf, gm, wm)
    return _Anatomy(
        brain=brain,
        csf=csf,
        gm=gm,
        wm=wm,
        t1_residual=residual,
        infratentorial=np.where(brain, infratentorial, 0.0).astype(np.float32),
        infratentorial_level=variation.infratentorial_level,
        infratentorial_texture=variation.infratentorial_texture,
    )


def _vary_tissues(anatomy: _Anatomy, variation: _Variation, spacing_mm: float) -> _Anatomy:
    """Sulcal widening (grey matter beside CSF into CSF) and cortical thickness (the grey/white border moved)."""
    csf, gm, wm = anatomy.csf.copy(), anatomy.gm.copy(), anatomy.wm.copy()
    sigma = 1.0 / spacing_mm
    beside_csf = np.clip(ndimage.gaussian_filter(csf, sigma) * 3.0, 0.0, 1.0)
    moved = variation.sulci * gm * beside_csf
    gm -= moved
    csf += moved
    if variation.cortex >= 0:
        moved = variation.cortex * wm * np.clip(ndimage.gaussian_filter(gm, sigma) * 2.0, 0.0, 1.0)
        wm -= moved
        gm += moved
    else:
        moved = -variation.cortex * gm * np.clip(ndimage.gaussian_filter(wm, sigma) * 2.0, 0.0, 1.0)
        gm -= moved
        wm += moved
    return replace(anatomy, csf=csf, gm=gm, wm=wm)
