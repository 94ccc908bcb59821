"""BraTS-2023-format brain-tumour phantoms built from the MNI152 template shipped with nilearn.

Real BraTS data cannot be downloaded here, so the project's default data set is synthetic:
each case is the MNI152 brain (T1 template and grey/white-matter/brain probability maps,
loaded offline from nilearn) resampled into a BraTS grid with a small random pose, pushed
aside by a simulated glioma (mass effect), and rendered in the four BraTS contrasts.

Anatomy
    The MNI brain is placed in the profile's grid with a random rotation (a few degrees per
    axis), a random scale (about +-5 %) and a shift of a few millimetres; its x/y extent is
    centred in the field of view and the top of the brain sits a few millimetres below the
    top of the grid (the MNI brain is 155 mm tall, so the lower brainstem may be cropped,
    as in real BraTS scans). Tissue fractions are partial-volume maps: CSF is the brain mask
    minus grey and white matter, ventricles included. Every modality is exactly 0 outside
    the brain mask (skull-stripped) and at least 1 inside it, so all four channels share
    one support.

Tumour
    An irregular core (an ellipsoidal distance field whose radius is modulated by smoothed
    random noise) is split into a necrotic centre NETC (label 1) and an enhancing rim ET
    (label 3); around it lies oedema SNFH (label 2) that reaches further along white matter
    than into grey matter and stays out of CSF. About 18 % of cases have no ET (low-grade
    like: NETC and oedema only) and about 15 % have little oedema. The core is placed in
    supratentorial white matter, deep enough that the lesion stays inside the brain.

Contrasts (relative to normal white matter = 1, jittered per case)
    =====  =====  =====  ====  =======  =======  =====
           CSF    GM     WM    NETC     ET       SNFH
    t1c    0.30   0.74   1     0.40     1.3-1.9  0.72
    t1n    0.30   0.72   1     0.42     0.70     0.70
    t2w    2.9    1.35   1     2.4      1.6      2.0
    t2f    0.32   1.20   1     0.6-1.6  1.45     1.8
    =====  =====  =====  ====  =======  =======  =====

    T1-weighted images borrow the MNI T1 template's texture (deep grey nuclei, cortex)
    beyond what the tissue fractions explain; T2-weighted ones get the inverse of it.
    Oedema fades by up to 25 % towards its outer edge; tumour tissue is heterogeneous
    (8-22 % texture). t1c also has enhancing normal structures (vessels in sulci, dural
    remnants along parts of the brain's edge), so ET is not simply "the bright voxels of
    t1c". Each modality then gets per-tissue texture, a mild blur, a smooth multiplicative
    bias field, a random global scale (white matter at about 300-1000) and Rician noise.

Storage
    Images are ``int16`` scanner-like values (0 outside the brain, about 1..3500 inside);
    the segmentation is ``uint8`` with the BraTS-2023 labels from :mod:`kd_components.constants`.

Grid and affine
    ``brats``: 240 x 240 x 155 voxels of 1 mm, the BraTS grid. ``small``: 120 x 120 x 78
    voxels of 2 mm, the same field of view. The affine has BraTS' form: direction
    ``diag(-1, -1, 1)`` times the spacing (voxel axes point to patient Left, Posterior,
    Superior: LPS), with the origin of real BraTS-2023 files, ``(0, 239, 0)`` mm, moved by
    half a voxel minus half a millimetre so coarser grids cover the same field of view:
    ``affine = [[-s, 0, 0, -(s-1)/2], [0, -s, 0, 239-(s-1)/2], [0, 0, s, (s-1)/2], [0, 0, 0, 1]]``.

Determinism
    Case ``i`` of seed ``s`` depends only on ``(s, i)`` and the profile: its random numbers
    come from ``np.random.default_rng([s, i])``, independent of how many cases are made and
    of the number of worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from kd_components.constants import (
    BACKGROUND_LABEL,
    ET_LABEL,
    MODALITIES,
    NETC_LABEL,
    PHANTOM_TASK,
    SEG_SUFFIX,
    SNFH_LABEL,
    case_file_name,
    case_id,
)
from kd_components.io import save_nifti_atomic

__all__ = [
    "PROFILES",
    "PhantomCase",
    "PhantomProfile",
    "generate_case",
    "make_phantom_dataset",
    "resolve_profile",
    "write_case",
]

# ----------------------------------------------------------------------------------------------
# Grids
# ----------------------------------------------------------------------------------------------

#: World position (mm) of voxel (0, 0, 0) in BraTS-2023 files (1 mm grid).
BRATS_ORIGIN_MM: tuple[float, float, float] = (0.0, 239.0, 0.0)
#: Direction of the voxel axes in BraTS files: i to the Left, j to Posterior, k to Superior.
BRATS_DIRECTION: tuple[float, float, float] = (-1.0, -1.0, 1.0)


@dataclass(frozen=True)
class PhantomProfile:
    """An output grid for phantoms.

    Attributes:
        name: profile name, e.g. ``"small"``.
        shape: voxels per axis ``(X, Y, Z)``.
        spacing_mm: isotropic voxel size in millimetres.
    """

    name: str
    shape: tuple[int, int, int]
    spacing_mm: float

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(n) < 1 for n in self.shape):
            raise ValueError(f"profile {self.name!r}: shape must be three positive sizes, got {self.shape}")
        if not self.spacing_mm > 0:
            raise ValueError(f"profile {self.name!r}: spacing_mm must be positive, got {self.spacing_mm}")

    @property
    def affine(self) -> np.ndarray:
        """BraTS-like voxel-to-world affine (4, 4): ``diag(-1, -1, 1) * spacing``, BraTS origin (see module doc)."""
        s = float(self.spacing_mm)
        direction = np.asarray(BRATS_DIRECTION)
        affine = np.eye(4)
        affine[:3, :3] = np.diag(direction * s)
        affine[:3, 3] = np.asarray(BRATS_ORIGIN_MM) + direction * (s - 1.0) / 2.0
        return affine

    def world_bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest world coordinates (3,) of the voxel centres."""
        corners = self.affine @ np.array([[0, 0, 0, 1], [*(n - 1 for n in self.shape), 1]], dtype=float).T
        return corners[:3].min(axis=1), corners[:3].max(axis=1)


#: Known output grids: ``brats`` (the BraTS grid) and ``small`` (same field of view at 2 mm, for tests).
PROFILES: dict[str, PhantomProfile] = {
    "brats": PhantomProfile("brats", (240, 240, 155), 1.0),
    "small": PhantomProfile("small", (120, 120, 78), 2.0),
}


def resolve_profile(profile: str | PhantomProfile) -> PhantomProfile:
    """Return ``profile`` itself or the entry of :data:`PROFILES` it names; ValueError for unknown names."""
    if isinstance(profile, PhantomProfile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown phantom profile {profile!r}; known profiles: {sorted(PROFILES)}")
    return PROFILES[profile]


# ----------------------------------------------------------------------------------------------
# The MNI atlas, loaded once per process
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Atlas:
    """MNI152 volumes cropped to the brain, plus what the generator precomputes from them.

    ``volumes`` maps ``t1``, ``gm``, ``wm``, ``brain`` to (X, Y, Z) float32 arrays on the MNI
    1 mm grid (cropped); ``world_to_voxel`` (4, 4) maps MNI mm to their voxel indices.
    ``top_anchor_mm`` (3,) is the x/y centre and top z of the brain's bounding box.
    ``t1_tissue_means`` (3,) are the T1 template's CSF/GM/WM levels relative to white matter,
    ``t1_wm_level`` the template's white-matter value. ``sites_mm`` (N, 3) are candidate
    lesion centres (supratentorial white matter) and ``site_depth_mm`` (N,) their distance
    to the brain's edge.
    """

    volumes: dict[str, np.ndarray]
    world_to_voxel: np.ndarray
    top_anchor_mm: np.ndarray
    t1_wm_level: float
    t1_tissue_means: np.ndarray
    sites_mm: np.ndarray
    site_depth_mm: np.ndarray


_ATLAS: _Atlas | None = None
_SITE_GRID_MM = 3
_MIN_SITE_DEPTH_MM = 12.0


def _atlas() -> _Atlas:
    """The process-wide atlas, loaded on first use (about 3 s) and reused by every case of the process."""
    global _ATLAS
    if _ATLAS is None:
        _ATLAS = _load_atlas()
    return _ATLAS


def _load_mni_volumes() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """MNI152 T1, GM, WM and brain mask from nilearn (offline): arrays (197, 233, 189) and their affine (4, 4)."""
    from nilearn import datasets

    images = {
        "t1": datasets.load_mni152_template(resolution=1),
        "gm": datasets.load_mni152_gm_template(resolution=1),
        "wm": datasets.load_mni152_wm_template(resolution=1),
        "brain": datasets.load_mni152_brain_mask(resolution=1),
    }
    affine = np.asarray(images["t1"].affine, dtype=float)
    return {name: np.asarray(img.get_fdata(), dtype=np.float32) for name, img in images.items()}, affine


def _load_atlas() -> _Atlas:
    """Load the MNI volumes, mask them to the brain, crop them and precompute lesion sites."""
    volumes, affine = _load_mni_volumes()
    brain = volumes["brain"] > 0.5
    for name in ("t1", "gm", "wm"):
        volumes[name] = np.where(brain, volumes[name], 0.0).astype(np.float32)
    volumes["brain"] = brain.astype(np.float32)

    nonzero = np.argwhere(brain)
    lo, hi = nonzero.min(axis=0), nonzero.max(axis=0)
    bbox_world = (affine @ np.array([[*lo, 1], [*hi, 1]], dtype=float).T)[:3]
    top_anchor = np.array([bbox_world[0].mean(), bbox_world[1].mean(), bbox_world[2].max()])

    wm_level, tissue_means = _t1_tissue_levels(volumes)
    sites, depth = _candidate_sites(volumes, brain, affine)

    pad = 2
    lo_c, hi_c = np.maximum(lo - pad, 0), np.minimum(hi + pad + 1, brain.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo_c, hi_c, strict=True))
    shift = np.eye(4)
    shift[:3, 3] = lo_c
    return _Atlas(
        volumes={name: np.ascontiguousarray(vol[crop]) for name, vol in volumes.items()},
        world_to_voxel=np.linalg.inv(affine @ shift),
        top_anchor_mm=top_anchor,
        t1_wm_level=wm_level,
        t1_tissue_means=tissue_means,
        sites_mm=sites,
        site_depth_mm=depth,
    )


def _t1_tissue_levels(volumes: dict[str, np.ndarray]) -> tuple[float, np.ndarray]:
    """The T1 template's white-matter value and its CSF/GM/WM levels (3,) relative to it (least squares)."""
    wm_level = float(np.median(volumes["t1"][volumes["wm"] > 0.9]))
    inside = volumes["brain"] > 0.5
    csf = np.clip(volumes["brain"] - volumes["gm"] - volumes["wm"], 0.0, 1.0)[inside]
    design = np.stack([csf, volumes["gm"][inside], volumes["wm"][inside]], axis=1)
    means, *_ = np.linalg.lstsq(design, volumes["t1"][inside] / wm_level, rcond=None)
    return wm_level, means.astype(np.float32)


def _candidate_sites(volumes: dict[str, np.ndarray], brain: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, ...]:
    """Lesion centre candidates: supratentorial white matter on a coarse grid.

    Returns MNI world positions (N, 3) and their distance to the brain's edge (N,) in mm.
    Cerebellum, brainstem and the midline of the diencephalon are excluded.
    """
    step = _SITE_GRID_MM
    depth = ndimage.distance_transform_edt(brain[::step, ::step, ::step]) * step
    wm = volumes["wm"][::step, ::step, ::step]
    index = np.argwhere((wm > 0.5) & (depth >= _MIN_SITE_DEPTH_MM))
    world = (affine @ np.c_[index * step, np.ones(len(index))].T)[:3].T
    x, y, z = world.T
    keep = (z > -20) & ~((z < 5) & (y < -45)) & ~((np.abs(x) < 12) & (z < 12))
    return world[keep].astype(np.float64), depth[tuple(index[keep].T)].astype(np.float64)


# ----------------------------------------------------------------------------------------------
# Random case parameters
# ----------------------------------------------------------------------------------------------

#: Probability that a case has no enhancing tumour (low-grade-like).
NO_ET_PROBABILITY = 0.18
#: Probability that a case has little oedema.
LITTLE_OEDEMA_PROBABILITY = 0.15


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


@dataclass(frozen=True)
class _LesionSpec:
    """Shape parameters of one simulated glioma.

    Attributes:
        centre_mm: core centre (3,) in output-world mm.
        radius_mm: mean radius of the tumour core.
        axes: (3,) relative semi-axes of the core ellipsoid (product 1).
        orientation: (3, 3) rotation of the ellipsoid axes in the world.
        necrosis_fraction: NETC radius relative to the core (1 when there is no ET).
        oedema_extent: oedema reach relative to the core radius, in white matter.
        enhancing: whether the core has an enhancing rim.
        mass_effect: relative strength (0..1) of the outward push of the anatomy.
        mass_effect_scale_mm: length scale of the push.
    """

    centre_mm: np.ndarray
    radius_mm: float
    axes: np.ndarray
    orientation: np.ndarray
    necrosis_fraction: float
    oedema_extent: float
    enhancing: bool
    mass_effect: float
    mass_effect_scale_mm: float

    @property
    def reach_mm(self) -> float:
        """Distance from the centre beyond which no lesion voxel can lie."""
        return self.radius_mm * float(self.axes.max()) * self.oedema_extent * _MAX_SHAPE_STRETCH + 2.0


_MAX_SHAPE_STRETCH = 1.6


def _sample_pose(rng: np.random.Generator, profile: PhantomProfile, atlas: _Atlas) -> _Pose:
    """Random rotation (+-4 degrees per axis), scale (+-5 %, slightly anisotropic) and shift of the brain."""
    rotation = Rotation.from_euler("xyz", rng.uniform(-4.0, 4.0, size=3), degrees=True).as_matrix()
    scale = rng.uniform(0.95, 1.05) * rng.uniform(0.98, 1.02, size=3)
    lo, hi = profile.world_bounds_mm()
    top_margin = rng.uniform(2.0, 6.0)
    shift_xy = rng.uniform(-3.0, 3.0, size=2)
    anchor_out = np.array([(lo[0] + hi[0]) / 2 + shift_xy[0], (lo[1] + hi[1]) / 2 + shift_xy[1], hi[2] - top_margin])
    return _Pose(matrix=rotation @ np.diag(1.0 / scale), anchor_mni=atlas.top_anchor_mm, anchor_out=anchor_out)


def _sample_lesion(rng: np.random.Generator, atlas: _Atlas, pose: _Pose) -> _LesionSpec:
    """Draw the glioma's type, size, shape and site (deep enough to stay inside the brain)."""
    enhancing = bool(rng.random() >= NO_ET_PROBABILITY)
    little_oedema = bool(rng.random() < LITTLE_OEDEMA_PROBABILITY)
    radius = float(rng.uniform(8.0, 24.0))
    axes = rng.uniform(0.75, 1.25, size=3)
    axes /= np.cbrt(axes.prod())
    orientation = Rotation.from_quat(rng.standard_normal(4)).as_matrix()
    if not enhancing:
        necrosis = 1.0
    elif rng.random() < 0.12:
        necrosis = float(rng.uniform(0.15, 0.35))  # mostly solid enhancing tumour
    else:
        necrosis = float(rng.uniform(0.5, 0.85))
    oedema = float(rng.uniform(1.08, 1.25) if little_oedema else rng.uniform(1.5, 2.6))
    mass_effect = float(rng.uniform(0.2, 0.55))
    mass_scale = radius * float(rng.uniform(1.2, 1.8))
    site = _sample_site(rng, atlas, min_depth=0.8 * radius * float(axes.max()) + 8.0)
    return _LesionSpec(
        centre_mm=pose.to_output(site),
        radius_mm=radius,
        axes=axes,
        orientation=orientation,
        necrosis_fraction=necrosis,
        oedema_extent=oedema,
        enhancing=enhancing,
        mass_effect=mass_effect,
        mass_effect_scale_mm=mass_scale,
    )


def _sample_site(rng: np.random.Generator, atlas: _Atlas, min_depth: float) -> np.ndarray:
    """A random candidate site (3,) in MNI mm at least ``min_depth`` from the brain's edge (or the deepest ones)."""
    eligible = np.flatnonzero(atlas.site_depth_mm >= min_depth)
    if eligible.size == 0:
        eligible = np.argsort(atlas.site_depth_mm)[-50:]
    chosen = atlas.sites_mm[eligible[rng.integers(eligible.size)]]
    return chosen + rng.uniform(-_SITE_GRID_MM / 2, _SITE_GRID_MM / 2, size=3)


# ----------------------------------------------------------------------------------------------
# Anatomy in the output grid
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Anatomy:
    """Resampled anatomy, all (X, Y, Z) float32 except ``brain`` (bool).

    ``csf``, ``gm``, ``wm`` are partial-volume fractions (0 outside the brain); ``t1_residual``
    is the MNI T1 texture the fractions do not explain (relative to white matter).
    """

    brain: np.ndarray
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    t1_residual: np.ndarray


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


def _resample_anatomy(atlas: _Atlas, profile: PhantomProfile, pose: _Pose, lesion: _LesionSpec) -> _Anatomy:
    """Resample the atlas into the profile's grid (trilinear), slab by slab to bound memory."""
    out = {name: np.zeros(profile.shape, dtype=np.float32) for name in atlas.volumes}
    slab = max(1, 2_000_000 // (profile.shape[0] * profile.shape[1]))
    for z0 in range(0, profile.shape[2], slab):
        z1 = min(z0 + slab, profile.shape[2])
        source = _push_from_lesion(_voxel_world(profile, (z0, z1)), lesion)
        mni = pose.anchor_mni + (source - pose.anchor_out) @ pose.matrix.T
        voxel = mni @ atlas.world_to_voxel[:3, :3].T + atlas.world_to_voxel[:3, 3]
        coordinates = np.moveaxis(voxel, -1, 0)
        for name, volume in atlas.volumes.items():
            out[name][:, :, z0:z1] = ndimage.map_coordinates(volume, coordinates, order=1, mode="constant", cval=0.0)
    return _tissues_from_samples(out, atlas)


def _tissues_from_samples(sampled: dict[str, np.ndarray], atlas: _Atlas) -> _Anatomy:
    """Binarise the brain, derive CSF and the T1 texture residual from resampled atlas volumes (X, Y, Z)."""
    brain = sampled["brain"] > 0.5
    gm = np.where(brain, sampled["gm"], 0.0).astype(np.float32)
    wm = np.where(brain, sampled["wm"], 0.0).astype(np.float32)
    csf = np.where(brain, np.clip(sampled["brain"] - gm - wm, 0.0, 1.0), 0.0).astype(np.float32)
    c_csf, c_gm, c_wm = atlas.t1_tissue_means
    t1 = sampled["t1"] / atlas.t1_wm_level
    residual = np.where(brain, t1 - (c_csf * csf + c_gm * gm + c_wm * wm), 0.0).astype(np.float32)
    return _Anatomy(brain=brain, csf=csf, gm=gm, wm=wm, t1_residual=residual)


# ----------------------------------------------------------------------------------------------
# Random fields
# ----------------------------------------------------------------------------------------------


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], spacing_mm: float, correlation_mm: float
) -> np.ndarray:
    """Gaussian random field of ``shape`` (float32, about zero mean and unit std), correlated over ``correlation_mm``.

    Long correlations are drawn on a coarser grid and upsampled linearly, which keeps this fast.
    """
    sigma = max(correlation_mm / spacing_mm, 0.3)
    factor = max(1, int(sigma // 2))
    coarse_shape = tuple(max(2, -(-n // factor)) for n in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), sigma / factor, mode="wrap")
    if factor > 1:
        zoom = np.asarray(shape) / np.asarray(coarse_shape)
        noise = ndimage.zoom(noise, zoom, order=1, grid_mode=True, mode="grid-mirror")
    noise -= noise.mean()
    return noise / (noise.std() + 1e-6)


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int], strength: float) -> np.ndarray:
    """Smooth multiplicative bias (X, Y, Z) float32: exp of a random quadratic polynomial, log-std ~ ``strength``."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = (x, y, z, x * y, x * z, y * z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3)
    weights = rng.standard_normal(len(terms)) * np.array([1, 1, 1, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7])
    log_bias = sum(float(w) * t for w, t in zip(weights, terms, strict=True))
    log_bias = np.broadcast_to(log_bias, shape)
    return np.exp(strength * log_bias / (float(log_bias.std()) + 1e-6)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The lesion
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LesionMaps:
    """The drawn lesion: the label map (X, Y, Z) uint8 and, inside ``box``, soft tissue weights.

    ``netc``, ``et``, ``snfh`` are box-shaped float32 weights in [0, 1] (smoothed masks; the
    oedema weight fades towards its edge); ``texture`` (2, *box) are unit-std random fields.
    """

    seg: np.ndarray
    box: tuple[slice, slice, slice]
    netc: np.ndarray
    et: np.ndarray
    snfh: np.ndarray
    texture: np.ndarray


def _no_lesion(profile: PhantomProfile) -> _LesionMaps:
    """The lesion maps of a healthy brain: an all-zero label map and an empty box."""
    empty = np.zeros((0, 0, 0), np.float32)
    box = (slice(0, 0), slice(0, 0), slice(0, 0))
    return _LesionMaps(np.zeros(profile.shape, np.uint8), box, empty, empty, empty, np.zeros((2, 0, 0, 0), np.float32))


def _lesion_box(lesion: _LesionSpec, profile: PhantomProfile) -> tuple[slice, slice, slice]:
    """Index ranges of the grid that can contain the lesion."""
    centre = np.linalg.solve(profile.affine, np.r_[lesion.centre_mm, 1.0])[:3]
    half = lesion.reach_mm / profile.spacing_mm
    lo = np.clip(np.floor(centre - half), 0, np.asarray(profile.shape) - 1).astype(int)
    hi = np.clip(np.ceil(centre + half) + 1, 1, np.asarray(profile.shape)).astype(int)
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2]))


def _ellipsoid_radius(lesion: _LesionSpec, profile: PhantomProfile, box: tuple[slice, ...]) -> np.ndarray:
    """Normalised ellipsoidal distance (box shape) from the lesion centre: 1 on the mean core surface."""
    index = np.stack(np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij"), axis=-1)
    affine = profile.affine
    offset = index.astype(np.float64) @ affine[:3, :3].T + affine[:3, 3] - lesion.centre_mm
    local = offset @ lesion.orientation / (lesion.axes * lesion.radius_mm)
    return np.sqrt(np.einsum("...i,...i->...", local, local)).astype(np.float32)


def _modulate(radius: np.ndarray, *noises: tuple[float, np.ndarray]) -> np.ndarray:
    """Divide a distance field by ``1 + sum(amplitude * noise)`` (clipped), making its level sets irregular."""
    stretch = 1.0 + sum(amplitude * noise for amplitude, noise in noises)
    return radius / np.clip(stretch, 1.0 / _MAX_SHAPE_STRETCH, _MAX_SHAPE_STRETCH)


def _keep_connected_to(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The connected components of ``mask`` (bool) that overlap ``seed`` (bool), same shape."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    keep = np.unique(labels[seed & mask])
    return np.isin(labels, keep[keep > 0])


def _draw_lesion(
    rng: np.random.Generator, anatomy: _Anatomy, lesion: _LesionSpec, profile: PhantomProfile
) -> _LesionMaps:
    """Draw core, necrosis, enhancing rim and oedema as nested irregular regions inside the brain."""
    box = _lesion_box(lesion, profile)
    shape = tuple(s.stop - s.start for s in box)
    spacing, radius = profile.spacing_mm, lesion.radius_mm
    lobes, fine, necrotic, spread = (
        _smooth_noise(rng, shape, spacing, c) for c in (0.5 * radius, 0.2 * radius, 0.4 * radius, 0.6 * radius)
    )
    distance = _ellipsoid_radius(lesion, profile, box)
    brain, wm, csf = anatomy.brain[box], anatomy.wm[box], anatomy.csf[box]

    core_distance = _modulate(distance, (0.22, lobes), (0.08, fine))
    core = _largest_component((core_distance < 1.0) & brain)
    netc = core & (core_distance < _necrosis_level(lesion, necrotic)) if lesion.enhancing else core
    et = core & ~netc

    oedema_distance = _modulate(distance, (0.3, spread), (0.15, fine))
    white = wm / np.maximum(wm + anatomy.gm[box] + csf, 1e-3)
    reach = 1.0 + (lesion.oedema_extent - 1.0) * (0.25 + 0.75 * white)
    shell = ndimage.binary_dilation(core, iterations=max(1, round(2.0 / spacing)))
    whole = ((oedema_distance < reach) & (csf < 0.5) | shell | core) & brain
    whole = _keep_connected_to(whole, core)
    snfh = whole & ~core

    seg = np.full(profile.shape, BACKGROUND_LABEL, dtype=np.uint8)
    seg_box = seg[box]
    seg_box[snfh] = SNFH_LABEL
    seg_box[netc] = NETC_LABEL
    seg_box[et] = ET_LABEL

    fade = 1.0 - 0.25 * np.clip((oedema_distance - 1.0) / np.maximum(reach - 1.0, 1e-3), 0.0, 1.0)
    blur = 0.6 / spacing
    texture = np.stack([_smooth_noise(rng, shape, spacing, 2.0) for _ in range(2)])
    return _LesionMaps(
        seg=seg,
        box=box,
        netc=ndimage.gaussian_filter(netc.astype(np.float32), blur),
        et=ndimage.gaussian_filter(et.astype(np.float32), blur),
        snfh=ndimage.gaussian_filter(snfh.astype(np.float32), blur) * fade.astype(np.float32),
        texture=texture,
    )


#: Thinnest enhancing rim (mm) around the necrosis.
_MIN_RIM_MM = 3.0


def _necrosis_level(lesion: _LesionSpec, noise: np.ndarray) -> np.ndarray:
    """Level (box shape) of the core's distance field below which the core is necrotic.

    Following the core's own level sets keeps the enhancing rim closed around the necrosis;
    the noise varies the rim's thickness, which never drops below ``_MIN_RIM_MM``.
    """
    level = lesion.necrosis_fraction * np.clip(1.0 + 0.15 * noise, 0.7, 1.3)
    return np.minimum(level, max(0.0, 1.0 - _MIN_RIM_MM / lesion.radius_mm))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask`` (bool); the mask itself if it is empty or one piece."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


# ----------------------------------------------------------------------------------------------
# Contrasts
# ----------------------------------------------------------------------------------------------

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


def _sample_contrast(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-case tissue levels: the table above with +-8 % jitter; NETC in FLAIR varies from 0.6 to 1.6."""
    contrast = {}
    for modality in MODALITIES:
        levels = TISSUE_CONTRAST[modality]
        contrast[modality] = {tissue: value * float(rng.uniform(0.92, 1.08)) for tissue, value in levels.items()}
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
    image += T1_TEXTURE_WEIGHT[modality] * anatomy.t1_residual
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
    """Scanner effects on a signal (X, Y, Z): blur, bias field, global scale/offset, Rician noise; int16 output."""
    blurred = ndimage.gaussian_filter(signal, float(rng.uniform(0.3, 0.7)) / spacing)
    biased = blurred * _bias_field(rng, signal.shape, float(rng.uniform(0.05, 0.15)))
    level = float(rng.uniform(*WM_LEVEL_RANGE[modality]))
    offset = float(rng.uniform(-0.03, 0.03))
    sigma = float(rng.uniform(0.015, 0.035))
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


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


@dataclass
class PhantomCase:
    """One generated case.

    Attributes:
        case_id: BraTS-2023 case id, e.g. ``BraTS-SYN-00003-000``.
        images: modality -> (X, Y, Z) int16 image, in ``MODALITIES`` order (t1c, t1n, t2w, t2f).
        seg: (X, Y, Z) uint8 label map (0, NETC 1, SNFH 2, ET 3).
        affine: (4, 4) voxel-to-world affine shared by all volumes.
        brain_mask: (X, Y, Z) bool, where the images are non-zero.
        tissues: ``csf``, ``gm``, ``wm`` -> (X, Y, Z) float32 partial-volume fractions of the
            normal anatomy (before the lesion was drawn); for tests and analysis, not written.
    """

    case_id: str
    images: dict[str, np.ndarray]
    seg: np.ndarray
    affine: np.ndarray
    brain_mask: np.ndarray
    tissues: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def has_enhancing_tumour(self) -> bool:
        """Whether the case contains ET voxels."""
        return bool((self.seg == ET_LABEL).any())


def generate_case(index: int, seed: int, profile: str | PhantomProfile = "small", healthy: bool = False) -> PhantomCase:
    """Generate phantom case ``index`` of data set ``seed`` on the grid of ``profile``.

    ``healthy``: the same brain, pose and contrasts without the tumour (no lesion, no mass effect, an all-zero
    label map): every voxel a network labels in it is a false positive. The result depends only on
    ``(seed, index)``, the profile and ``healthy``. Takes about 1 s for
    ``small`` (120, 120, 78) and several seconds for ``brats`` (240, 240, 155), plus about
    3 s once per process to load the MNI templates.

    Returns:
        A :class:`PhantomCase` whose volumes all have the profile's shape (X, Y, Z).
    """
    _check_non_negative(index=index, seed=seed)
    grid = resolve_profile(profile)
    atlas = _atlas()
    rng = np.random.default_rng([seed, index])
    pose = _sample_pose(rng, grid, atlas)
    lesion = _sample_lesion(rng, atlas, pose)
    if healthy:
        lesion = replace(lesion, mass_effect=0.0)
    anatomy = _resample_anatomy(atlas, grid, pose, lesion)
    maps = _draw_lesion(rng, anatomy, lesion, grid)  # drawn for a healthy brain too: the same contrasts follow
    if healthy:
        maps = _no_lesion(grid)
    images = _synthesize_images(rng, anatomy, maps, grid)
    return PhantomCase(
        case_id=case_id(PHANTOM_TASK, index),
        images=images,
        seg=maps.seg,
        affine=grid.affine,
        brain_mask=anatomy.brain,
        tissues={"csf": anatomy.csf, "gm": anatomy.gm, "wm": anatomy.wm},
    )


def write_case(case: PhantomCase, root: str | os.PathLike[str], labelled: bool = True) -> Path:
    """Write ``case`` in the BraTS-2023 layout and return its folder ``<root>/<case_id>``.

    Files: ``<case_id>-{t1c,t1n,t2w,t2f}.nii.gz`` (int16) and, when ``labelled``,
    ``<case_id>-seg.nii.gz`` (uint8); an unlabelled case removes a stale seg file. Each file
    is written atomically.
    """
    folder = Path(root) / case.case_id
    for modality in MODALITIES:
        save_nifti_atomic(case.images[modality], case.affine, folder / case_file_name(case.case_id, modality))
    seg_path = folder / case_file_name(case.case_id, SEG_SUFFIX)
    if labelled:
        save_nifti_atomic(case.seg, case.affine, seg_path, dtype=np.uint8)
    else:
        seg_path.unlink(missing_ok=True)
    return folder


def make_phantom_dataset(
    output_dir: str | os.PathLike[str],
    num_cases: int,
    seed: int = 0,
    profile: str | PhantomProfile = "small",
    unlabelled: int = 0,
    workers: int | None = None,
    progress: bool = True,
    healthy: bool = False,
) -> list[str]:
    """Generate and write ``num_cases`` phantoms under ``output_dir``; return their case ids in index order.

    Case ``i`` gets id ``BraTS-SYN-<i:05d>-000``; the last ``unlabelled`` cases are written
    without a segmentation (for semi-supervised distillation). Cases are generated in a pool
    of ``workers`` processes (default: the available cores, at most one per case); each
    worker loads the MNI templates once. Results do not depend on ``workers``. ``healthy``: tumour-free brains
    (:func:`generate_case`), written with their all-zero label maps; keep them in a folder of their own (their
    case ids are those of the tumour phantoms).
    """
    _check_non_negative(num_cases=num_cases, seed=seed, unlabelled=unlabelled)
    if unlabelled > num_cases:
        raise ValueError(f"unlabelled ({unlabelled}) cannot exceed num_cases ({num_cases})")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    grid = resolve_profile(profile)
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, grid, str(root), i < num_cases - unlabelled, healthy) for i in range(num_cases)]
    workers = min(workers or _available_cores(), max(num_cases, 1))
    done = _run_jobs(jobs, workers)
    if progress:
        from tqdm import tqdm

        done = tqdm(done, total=num_cases, desc=f"phantoms ({grid.name})", unit="case")
    for _ in done:
        pass
    return [case_id(PHANTOM_TASK, i) for i in range(num_cases)]


_Job = tuple[int, int, PhantomProfile, str, bool, bool]


def _generate_and_write(job: _Job) -> str:
    """Worker task: generate one case and write it; returns its case id."""
    index, seed, grid, root, labelled, healthy = job
    case = generate_case(index, seed, grid, healthy)
    write_case(case, root, labelled=labelled)
    return case.case_id


def _run_jobs(jobs: list[_Job], workers: int) -> Iterator[str]:
    """Run jobs in this process (one worker) or a process pool, yielding case ids as they finish."""
    if workers <= 1:
        for job in jobs:
            yield _generate_and_write(job)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_atlas) as pool:
        futures = [pool.submit(_generate_and_write, job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def _available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_non_negative(**values: int) -> None:
    """Raise ValueError naming the first argument that is not a non-negative integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
