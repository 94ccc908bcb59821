"""Output grids of the phantoms: the BraTS grid and coarser ones over the same field of view."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
