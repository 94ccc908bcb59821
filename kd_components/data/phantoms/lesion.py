"""The simulated glioma: its random shape parameters and its drawing as NETC, ET and SNFH."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from kd_components.constants import BACKGROUND_LABEL, ET_LABEL, NETC_LABEL, SNFH_LABEL
from kd_components.data.phantoms.atlas import _SITE_GRID_MM, _Atlas
from kd_components.data.phantoms.fields import _smooth_noise
from kd_components.data.phantoms.grid import PhantomProfile

if TYPE_CHECKING:
    from kd_components.data.phantoms.anatomy import _Anatomy, _Pose

#: Probability that a case has no enhancing tumour (low-grade-like).
NO_ET_PROBABILITY = 0.18
#: Probability that a case has little oedema.
LITTLE_OEDEMA_PROBABILITY = 0.15


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
