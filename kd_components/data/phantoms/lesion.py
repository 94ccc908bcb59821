"""The simulated glioma: its kind, size, site and shape, and its drawing as NETC, ET and SNFH.

A glioma is one main focus (which pushes the anatomy aside) and, in multifocal cases, one or two small satellite
foci. Each focus is an irregular core inside oedema; how the core splits into labels depends on its kind
(:data:`LESION_KINDS`). NETC (label 1) is drawn as three tissues with their own signal: necrosis, solid
non-enhancing tumour and fluid-filled cyst; the label map does not tell them apart, as in BraTS.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from kd_components.constants import BACKGROUND_LABEL, ET_LABEL, NETC_LABEL, SNFH_LABEL
from kd_components.data.phantoms.atlas import _SITE_GRID_MM, SITE_REGIONS, _Atlas
from kd_components.data.phantoms.fields import _smooth_noise
from kd_components.data.phantoms.grid import PhantomProfile

if TYPE_CHECKING:
    from kd_components.data.phantoms.anatomy import _Anatomy, _Pose

#: Kinds of glioma core and their share of cases:
#: ``necrotic_rim``: a necrotic centre in a closed enhancing rim, thin or thick (glioblastoma-like);
#: ``solid_enhancing``: mostly enhancing tumour with little necrosis;
#: ``patchy``: solid non-enhancing tumour with patchy or nodular enhancement (sometimes a necrotic centre);
#: ``non_enhancing``: a solid non-enhancing core, bright on T2 and FLAIR, no ET (lower-grade-like);
#: ``cystic``: a fluid-filled cyst inside a thin wall that enhances in part or not at all.
LESION_KINDS: dict[str, float] = {
    "necrotic_rim": 0.38,
    "solid_enhancing": 0.08,
    "patchy": 0.16,
    "non_enhancing": 0.26,
    "cystic": 0.12,
}
#: Kinds without enhancing tumour.
NON_ENHANCING_KINDS: frozenset[str] = frozenset({"non_enhancing"})
#: Share of cases per site region (:data:`~kd_components.data.phantoms.atlas.SITE_REGIONS`).
SITE_SHARES: dict[str, float] = {
    "deep_white_matter": 0.48,
    "cortex": 0.18,
    "temporal_insula": 0.16,
    "corpus_callosum": 0.08,
    "posterior_fossa": 0.10,
}
#: Core radius (mm) of small, typical and very large tumours, and the share of small and very large ones.
SMALL_RADIUS_MM, TYPICAL_RADIUS_MM, LARGE_RADIUS_MM = (3.5, 8.0), (8.0, 22.0), (22.0, 32.0)
SMALL_SHARE, LARGE_SHARE = 0.18, 0.10
#: Probability that a case has one or two satellite foci (multifocal glioma).
MULTIFOCAL_PROBABILITY = 0.14
#: Probability that a case has little oedema (higher for non-enhancing tumours).
LITTLE_OEDEMA_PROBABILITY = 0.15
#: Thinnest enhancing rim (mm) around necrosis or a cyst.
MIN_RIM_MM = 1.5
#: NETC tissues drawn with their own signal, and the classes of :attr:`_LesionMaps.weights`.
NETC_TISSUES: tuple[str, ...] = ("necrosis", "solid", "cyst")
LESION_CLASSES: tuple[str, ...] = (*NETC_TISSUES, "et", "snfh")

assert abs(sum(LESION_KINDS.values()) - 1.0) < 1e-9 and abs(sum(SITE_SHARES.values()) - 1.0) < 1e-9
assert set(SITE_SHARES) == set(SITE_REGIONS)


@dataclass(frozen=True)
class _LesionSpec:
    """Shape parameters of one glioma focus (the main one carries the satellites and the mass effect).

    Attributes:
        centre_mm: core centre (3,) in output-world mm.
        radius_mm: mean radius of the tumour core.
        axes: (3,) relative semi-axes of the core ellipsoid (product 1).
        orientation: (3, 3) rotation of the ellipsoid axes in the world.
        kind: one of :data:`LESION_KINDS`.
        region: one of :data:`SITE_REGIONS`.
        necrosis_fraction: radius of the necrosis or cyst relative to the core (0: none).
        rim_mm: thickness of the enhancing rim (or cyst wall) at its thinnest.
        enhancing_share: for ``patchy`` cores, the share of the core that enhances; for ``cystic`` ones, of the wall.
        oedema_extent: oedema reach relative to the core radius, in white matter.
        mass_effect: relative strength (0..1) of the outward push of the anatomy.
        mass_effect_scale_mm: length scale of the push.
        satellites: further small foci (multifocal glioma), without mass effect.
    """

    centre_mm: np.ndarray
    radius_mm: float
    axes: np.ndarray
    orientation: np.ndarray
    kind: str
    region: str
    necrosis_fraction: float
    rim_mm: float
    enhancing_share: float
    oedema_extent: float
    mass_effect: float
    mass_effect_scale_mm: float
    satellites: tuple[_LesionSpec, ...] = field(default=())

    @property
    def enhancing(self) -> bool:
        """Whether the focus has an enhancing part."""
        return self.kind not in NON_ENHANCING_KINDS

    @property
    def reach_mm(self) -> float:
        """Distance from the centre beyond which no voxel of this focus can lie."""
        return self.radius_mm * float(self.axes.max()) * self.oedema_extent * _MAX_SHAPE_STRETCH + 2.0

    @property
    def foci(self) -> tuple[_LesionSpec, ...]:
        """This focus and its satellites."""
        return (self, *self.satellites)


_MAX_SHAPE_STRETCH = 1.6


def _choice(rng: np.random.Generator, shares: dict[str, float]) -> str:
    """A key of ``shares`` drawn with probability equal to its value."""
    names = list(shares)
    return names[int(rng.choice(len(names), p=np.asarray([shares[n] for n in names])))]


def _sample_radius(rng: np.random.Generator, region: str) -> float:
    """Core radius (mm): small, typical or very large; at most 14 mm in the posterior fossa."""
    draw = rng.random()
    if draw < SMALL_SHARE:
        radius = rng.uniform(*SMALL_RADIUS_MM)
    elif draw < SMALL_SHARE + LARGE_SHARE:
        radius = rng.uniform(*LARGE_RADIUS_MM)
    else:
        radius = rng.uniform(*TYPICAL_RADIUS_MM)
    return float(min(radius, 14.0) if region == "posterior_fossa" else radius)


def _sample_core_split(rng: np.random.Generator, kind: str, radius: float) -> tuple[float, float, float]:
    """``(necrosis_fraction, rim_mm, enhancing_share)`` of a core of ``kind``: rims from thin to thick."""
    if kind == "necrotic_rim":
        rim = min(float(rng.uniform(MIN_RIM_MM, 7.0)), 0.45 * radius)
        return float(rng.uniform(0.45, 0.9)), rim, 1.0
    if kind == "solid_enhancing":
        return float(rng.uniform(0.0, 0.35)), 2.0, 1.0
    if kind == "patchy":
        necrosis = float(rng.uniform(0.2, 0.45)) if rng.random() < 0.3 else 0.0
        return necrosis, 2.0, float(rng.uniform(0.12, 0.4))
    if kind == "cystic":
        rim = min(float(rng.uniform(MIN_RIM_MM, 3.5)), 0.3 * radius)
        return float(rng.uniform(0.65, 0.92)), rim, float(rng.uniform(0.3, 1.0)) if rng.random() < 0.7 else 0.0
    return 0.0, 0.0, 0.0  # non_enhancing


def _sample_focus(
    rng: np.random.Generator,
    atlas: _Atlas,
    pose: _Pose,
    kind: str,
    region: str,
    radius: float,
    away_from_mm: np.ndarray | None = None,
) -> _LesionSpec:
    """Draw one focus of ``kind`` in ``region``: shape, site (deep enough for its region), oedema and mass effect."""
    axes = rng.uniform(0.75, 1.25, size=3)
    orientation = Rotation.from_quat(rng.standard_normal(4)).as_matrix()
    if region == "corpus_callosum":  # a butterfly lesion: long across the midline
        axes = np.array([rng.uniform(1.6, 2.2), rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.9)])
        orientation = Rotation.from_euler("xyz", rng.uniform(-12.0, 12.0, size=3), degrees=True).as_matrix()
    axes = axes / np.cbrt(axes.prod())
    necrosis, rim, enhancing_share = _sample_core_split(rng, kind, radius)
    little = LITTLE_OEDEMA_PROBABILITY * (2.3 if kind == "non_enhancing" else 1.0)
    oedema = float(rng.uniform(1.08, 1.3) if rng.random() < little else rng.uniform(1.4, 2.6))
    extent = radius * float(axes.max())
    min_depth = {
        "deep_white_matter": 0.8 * extent + 8.0,
        "cortex": 0.0,
        "temporal_insula": 0.5 * extent + 3.0,
        "corpus_callosum": 0.0,
        "posterior_fossa": 0.5 * extent + 3.0,
    }[region]
    site = _sample_site(rng, atlas, region, min_depth, pose, away_from_mm)
    return _LesionSpec(
        centre_mm=pose.to_output(site),
        radius_mm=radius,
        axes=axes,
        orientation=orientation,
        kind=kind,
        region=region,
        necrosis_fraction=necrosis,
        rim_mm=rim,
        enhancing_share=enhancing_share,
        oedema_extent=oedema,
        mass_effect=float(rng.uniform(0.2, 0.55)),
        mass_effect_scale_mm=radius * float(rng.uniform(1.2, 1.8)),
    )


def _sample_lesion(rng: np.random.Generator, atlas: _Atlas, pose: _Pose) -> _LesionSpec:
    """Draw the glioma: the main focus's kind, site region and size, and in multifocal cases its satellites."""
    kind = _choice(rng, LESION_KINDS)
    region = _choice(rng, SITE_SHARES)
    main = _sample_focus(rng, atlas, pose, kind, region, _sample_radius(rng, region))
    if rng.random() >= MULTIFOCAL_PROBABILITY:
        return main
    satellites = []
    for _ in range(int(rng.integers(1, 3))):
        satellite_kind = "non_enhancing" if kind == "non_enhancing" else _choice(rng, _SATELLITE_KINDS)
        satellite_region = "cortex" if rng.random() < 0.3 else "deep_white_matter"
        satellite = _sample_focus(
            rng, atlas, pose, satellite_kind, satellite_region, float(rng.uniform(3.5, 9.0)), main.centre_mm
        )
        satellites.append(replace(satellite, mass_effect=0.0))
    return replace(main, satellites=tuple(satellites))


#: Kinds of the satellites of an enhancing multifocal glioma (mostly small enhancing nodules).
_SATELLITE_KINDS = {"necrotic_rim": 0.3, "solid_enhancing": 0.4, "patchy": 0.3}


def _sample_site(
    rng: np.random.Generator,
    atlas: _Atlas,
    region: str,
    min_depth: float,
    pose: _Pose,
    away_from_mm: np.ndarray | None = None,
) -> np.ndarray:
    """A random site (3,) in MNI mm of ``region``, at least ``min_depth`` from the brain's edge (or among the region's
    deepest sites) and, for satellites, at least 25 mm from ``away_from_mm`` (output-world mm) where possible."""
    in_region = atlas.site_regions[region]
    eligible = np.flatnonzero(in_region & (atlas.site_depth_mm >= min_depth))
    if eligible.size == 0:
        candidates = np.flatnonzero(in_region)
        eligible = candidates[np.argsort(atlas.site_depth_mm[candidates])[-50:]]
    if away_from_mm is not None:
        distance = np.linalg.norm(pose.to_output(atlas.sites_mm[eligible]) - away_from_mm, axis=1)
        far = eligible[distance >= 25.0]
        eligible = far if far.size else eligible
    chosen = atlas.sites_mm[eligible[rng.integers(eligible.size)]]
    return chosen + rng.uniform(-_SITE_GRID_MM / 2, _SITE_GRID_MM / 2, size=3)


@dataclass(frozen=True)
class _LesionMaps:
    """The drawn lesion: the label map (X, Y, Z) uint8 and, inside ``box``, soft tissue weights.

    ``weights`` maps each of :data:`LESION_CLASSES` to a box-shaped float32 weight in [0, 1] (smoothed masks, so
    edges are partial-volume; the oedema weight fades towards its edge); the weights of a voxel sum to at most 1.
    """

    seg: np.ndarray
    box: tuple[slice, slice, slice]
    weights: dict[str, np.ndarray]

    @property
    def box_shape(self) -> tuple[int, int, int]:
        """Voxels per axis of ``box``."""
        return tuple(s.stop - s.start for s in self.box)  # type: ignore[return-value]


def _no_lesion(profile: PhantomProfile) -> _LesionMaps:
    """The lesion maps of a healthy brain: an all-zero label map and an empty box."""
    box = (slice(0, 0), slice(0, 0), slice(0, 0))
    return _LesionMaps(
        np.zeros(profile.shape, np.uint8), box, {c: np.zeros((0, 0, 0), np.float32) for c in LESION_CLASSES}
    )


def _lesion_box(lesion: _LesionSpec, profile: PhantomProfile) -> tuple[slice, slice, slice]:
    """Index ranges of the grid that can contain the focus ``lesion`` (its satellites not included)."""
    centre = np.linalg.solve(profile.affine, np.r_[lesion.centre_mm, 1.0])[:3]
    half = lesion.reach_mm / profile.spacing_mm
    lo = np.clip(np.floor(centre - half), 0, np.asarray(profile.shape) - 1).astype(int)
    hi = np.clip(np.ceil(centre + half) + 1, 1, np.asarray(profile.shape)).astype(int)
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2]))


def _union_box(boxes: list[tuple[slice, slice, slice]]) -> tuple[slice, slice, slice]:
    """The smallest box holding every box of ``boxes``."""
    return tuple(  # type: ignore[return-value]
        slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes)) for axis in range(3)
    )


def _inner(box: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    """``box`` as indices into an array covering ``outer``."""
    return tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer, strict=True))


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


@dataclass(frozen=True)
class _Focus:
    """One drawn focus inside its box: bool masks of each class in :data:`LESION_CLASSES` (disjoint; ``snfh`` is the
    oedema) and the oedema's fade (box shape, 0.75..1, lower towards the oedema's edge)."""

    box: tuple[slice, slice, slice]
    masks: dict[str, np.ndarray]
    fade: np.ndarray


def _split_core(
    rng: np.random.Generator, focus: _LesionSpec, core: np.ndarray, core_distance: np.ndarray, spacing: float
) -> dict[str, np.ndarray]:
    """Split a core (bool, box shape) into necrosis, solid non-enhancing tumour, cyst and ET by the focus's kind."""
    empty = np.zeros_like(core)
    masks = {name: empty for name in ("necrosis", "solid", "cyst", "et")}
    shape = core.shape
    inner = _inner_level(focus, _smooth_noise(rng, shape, spacing, 0.4 * focus.radius_mm))
    if focus.kind in ("necrotic_rim", "solid_enhancing"):
        necrosis = core & (core_distance < inner)
        return masks | {"necrosis": necrosis, "et": core & ~necrosis}
    if focus.kind == "patchy":
        patches = _smooth_noise(rng, shape, spacing, max(0.25 * focus.radius_mm, 1.5 * spacing))
        necrosis = core & (core_distance < inner)
        rest = core & ~necrosis
        values = patches[rest]
        threshold = np.quantile(values, 1.0 - focus.enhancing_share) if values.size else 0.0
        et = rest & (patches > threshold)
        return masks | {"necrosis": necrosis, "et": et, "solid": rest & ~et}
    if focus.kind == "cystic":
        cyst = core & (core_distance < inner)
        wall = core & ~cyst
        if focus.enhancing_share <= 0.0:
            return masks | {"cyst": cyst, "solid": wall}
        patches = _smooth_noise(rng, shape, spacing, max(0.5 * focus.radius_mm, 2.0 * spacing))
        values = patches[wall]
        threshold = np.quantile(values, 1.0 - focus.enhancing_share) if values.size else 0.0
        et = wall & (patches >= threshold)
        return masks | {"cyst": cyst, "et": et, "solid": wall & ~et}
    return masks | {"solid": core}


def _inner_level(focus: _LesionSpec, noise: np.ndarray) -> np.ndarray:
    """Level (box shape) of the core's distance field below which the core is necrotic (or cystic).

    Following the core's own level sets keeps the rim closed around the necrosis; the noise varies the rim's
    thickness, which never drops below the focus's ``rim_mm``.
    """
    level = focus.necrosis_fraction * np.clip(1.0 + 0.15 * noise, 0.7, 1.3)
    return np.minimum(level, max(0.0, 1.0 - focus.rim_mm / focus.radius_mm))


def _draw_focus(rng: np.random.Generator, anatomy: _Anatomy, focus: _LesionSpec, profile: PhantomProfile) -> _Focus:
    """Draw one focus as disjoint class masks in its own box: an irregular core (split by kind) inside oedema that
    reaches further along white matter than into grey matter and stays out of CSF."""
    box = _lesion_box(focus, profile)
    shape = tuple(s.stop - s.start for s in box)
    spacing, radius = profile.spacing_mm, focus.radius_mm
    lobes, fine, spread = (_smooth_noise(rng, shape, spacing, c) for c in (0.5 * radius, 0.2 * radius, 0.6 * radius))
    distance = _ellipsoid_radius(focus, profile, box)
    brain, wm, csf = anatomy.brain[box], anatomy.wm[box], anatomy.csf[box]

    smooth = 0.5 if focus.kind == "cystic" else 1.0  # cysts are rounder
    core_distance = _modulate(distance, (0.22 * smooth, lobes), (0.08 * smooth, fine))
    core = _largest_component((core_distance < 1.0) & brain)
    masks = _split_core(rng, focus, core, core_distance, spacing)

    oedema_distance = _modulate(distance, (0.3, spread), (0.15, fine))
    white = wm / np.maximum(wm + anatomy.gm[box] + csf, 1e-3)
    reach = 1.0 + (focus.oedema_extent - 1.0) * (0.25 + 0.75 * white)
    shell = ndimage.binary_dilation(core, iterations=max(1, round(2.0 / spacing)))
    whole = ((oedema_distance < reach) & (csf < 0.5) | shell | core) & brain
    whole = _keep_connected_to(whole, core)
    masks["snfh"] = whole & ~core
    fade = 1.0 - 0.25 * np.clip((oedema_distance - 1.0) / np.maximum(reach - 1.0, 1e-3), 0.0, 1.0)
    return _Focus(box, masks, fade.astype(np.float32))


def _draw_lesion(
    rng: np.random.Generator, anatomy: _Anatomy, lesion: _LesionSpec, profile: PhantomProfile
) -> _LesionMaps:
    """Draw every focus of ``lesion`` and merge them into one label map and soft class weights (partial-volume
    edges: each class mask blurred by 0.4-1.2 mm)."""
    foci = [_draw_focus(rng, anatomy, focus, profile) for focus in lesion.foci]
    box = _union_box([f.box for f in foci])
    shape = tuple(s.stop - s.start for s in box)
    masks = {name: np.zeros(shape, bool) for name in LESION_CLASSES}
    fade = np.ones(shape, np.float32)
    for focus in foci:
        inner = _inner(focus.box, box)
        for name in LESION_CLASSES:
            masks[name][inner] |= focus.masks[name]
        fade[inner] = np.where(focus.masks["snfh"], np.minimum(fade[inner], focus.fade), fade[inner])
    core = masks["necrosis"] | masks["solid"] | masks["cyst"] | masks["et"]
    masks["snfh"] &= ~core  # a satellite's core may lie in the main focus's oedema
    for name in NETC_TISSUES:  # one tissue per voxel: ET over cyst over necrosis over solid tumour
        masks[name] &= ~masks["et"]
    masks["solid"] &= ~(masks["necrosis"] | masks["cyst"])
    masks["necrosis"] &= ~masks["cyst"]

    seg = np.full(profile.shape, BACKGROUND_LABEL, dtype=np.uint8)
    seg_box = seg[box]
    seg_box[masks["snfh"]] = SNFH_LABEL
    seg_box[masks["necrosis"] | masks["solid"] | masks["cyst"]] = NETC_LABEL
    seg_box[masks["et"]] = ET_LABEL

    blur = float(rng.uniform(0.4, 1.2)) / profile.spacing_mm
    weights = {name: ndimage.gaussian_filter(masks[name].astype(np.float32), blur) for name in LESION_CLASSES}
    weights["snfh"] *= fade
    return _LesionMaps(seg=seg, box=box, weights=weights)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask`` (bool); the mask itself if it is empty or one piece."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)
