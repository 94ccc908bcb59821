"""The MNI152 template (nilearn, offline) the phantoms are built from, loaded once per process."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class _Atlas:
    """MNI152 volumes cropped to the brain, plus what the generator precomputes from them.

    ``volumes`` maps ``t1``, ``gm``, ``wm``, ``brain`` to (X, Y, Z) float32 arrays on the MNI
    1 mm grid (cropped); ``world_to_voxel`` (4, 4) maps MNI mm to their voxel indices.
    ``top_anchor_mm`` (3,) is the x/y centre and top z of the brain's bounding box.
    ``t1_tissue_means`` (3,) are the T1 template's CSF/GM/WM levels relative to white matter,
    ``t1_wm_level`` the template's white-matter value. ``sites_mm`` (N, 3) are candidate
    lesion centres (brain voxels on a 3 mm grid at least 3 mm deep), ``site_depth_mm`` (N,) their distance
    to the brain's edge and ``site_regions`` maps each name of :data:`SITE_REGIONS` to a (N,) bool mask of the
    sites in that region (regions overlap).
    """

    volumes: dict[str, np.ndarray]
    world_to_voxel: np.ndarray
    top_anchor_mm: np.ndarray
    t1_wm_level: float
    t1_tissue_means: np.ndarray
    sites_mm: np.ndarray
    site_depth_mm: np.ndarray
    site_regions: dict[str, np.ndarray]


_ATLAS: _Atlas | None = None
_SITE_GRID_MM = 3
_MIN_SITE_DEPTH_MM = 3.0

#: Where gliomas are placed (MNI152 mm): deep supratentorial white matter, the cortex, the temporal lobe and
#: insula, the corpus callosum (a lesion there crosses the midline) and the posterior fossa (cerebellum).
SITE_REGIONS: tuple[str, ...] = ("deep_white_matter", "cortex", "temporal_insula", "corpus_callosum", "posterior_fossa")


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
    sites, depth, regions = _candidate_sites(volumes, brain, affine)

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
        site_regions=regions,
    )


def _t1_tissue_levels(volumes: dict[str, np.ndarray]) -> tuple[float, np.ndarray]:
    """The T1 template's white-matter value and its CSF/GM/WM levels (3,) relative to it (least squares)."""
    wm_level = float(np.median(volumes["t1"][volumes["wm"] > 0.9]))
    inside = volumes["brain"] > 0.5
    csf = np.clip(volumes["brain"] - volumes["gm"] - volumes["wm"], 0.0, 1.0)[inside]
    design = np.stack([csf, volumes["gm"][inside], volumes["wm"][inside]], axis=1)
    means, *_ = np.linalg.lstsq(design, volumes["t1"][inside] / wm_level, rcond=None)
    return wm_level, means.astype(np.float32)


def _candidate_sites(
    volumes: dict[str, np.ndarray], brain: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Lesion centre candidates on a coarse grid, tagged by region (:data:`SITE_REGIONS`).

    Returns MNI world positions (N, 3), their distance to the brain's edge (N,) in mm and one (N,) bool mask per
    region. Deep white matter excludes the cerebellum, brainstem and the midline of the diencephalon, as before.
    """
    step = _SITE_GRID_MM
    depth_grid = ndimage.distance_transform_edt(brain[::step, ::step, ::step]) * step
    index = np.argwhere(depth_grid >= _MIN_SITE_DEPTH_MM)
    world = (affine @ np.c_[index * step, np.ones(len(index))].T)[:3].T
    depth = depth_grid[tuple(index.T)]
    wm = volumes["wm"][::step, ::step, ::step][tuple(index.T)]
    gm = volumes["gm"][::step, ::step, ::step][tuple(index.T)]
    x, y, z = world.T
    ax = np.abs(x)
    regions = {
        "deep_white_matter": (wm > 0.5) & (depth >= 12) & (z > -20) & ~((z < 5) & (y < -45)) & ~((ax < 12) & (z < 12)),
        "cortex": (gm > 0.4) & (depth <= 12) & (z > -20) & ~((z < 5) & (y < -45)),
        "temporal_insula": ((ax > 34) & (z > -40) & (z < -5) & (y > -55) & (y < 25) & (depth >= 6))
        | ((ax > 30) & (ax < 44) & (z > -8) & (z < 22) & (y > -28) & (y < 28) & (depth >= 10)),
        "corpus_callosum": (ax < 6) & (wm > 0.5) & (z > 5) & (z < 35) & (y > -40) & (y < 35),
        "posterior_fossa": (z < -22) & (y < -42) & (depth >= 8),
    }
    keep = np.any(list(regions.values()), axis=0)
    return (
        world[keep].astype(np.float64),
        depth[keep].astype(np.float64),
        {name: mask[keep] for name, mask in regions.items()},
    )
