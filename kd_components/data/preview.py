"""A PNG contact sheet of a BraTS-2023-layout folder: one row per case, one axial slice per modality.

Works for any folder of ``BraTS-*`` case folders (real BraTS or phantoms): volumes are
reoriented to LPS and shown in radiological convention (patient right on the left,
anterior at the top). The slice goes through the tumour's centroid when a segmentation
exists, else through the middle of the volume. The last column overlays the labels on t2f;
ET marked with 3 (BraTS 2023) or 4 (BraTS 2018-2022) gets the same colour.

Figures are built with matplotlib's object-oriented API (no pyplot, no global backend
switch) and rendered by the Agg PNG writer, so this works headless.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy import ndimage

from kd_components.constants import (
    ET_LABEL,
    LABEL_NAMES,
    LEGACY_ET_LABEL,
    MODALITIES,
    NETC_LABEL,
    NIFTI_EXTENSIONS,
    SEG_SUFFIX,
    SNFH_LABEL,
    case_file_name,
)
from kd_components.io import atomic_path

__all__ = [
    "LABEL_COLOURS",
    "axial_index",
    "blend_overlay",
    "draw_overlay",
    "find_volume",
    "legend_handles",
    "load_lps",
    "reorient_lps",
    "save_preview",
    "show_gray",
]

#: Overlay colour (RGB) of each tumour label.
LABEL_COLOURS: dict[int, tuple[float, float, float]] = {
    NETC_LABEL: (0.90, 0.10, 0.10),
    SNFH_LABEL: (0.15, 0.80, 0.20),
    ET_LABEL: (1.00, 0.85, 0.00),
}
_OVERLAY_ALPHA = 0.45
_COLUMN_WIDTH_IN, _ROW_HEIGHT_IN, _LEGEND_HEIGHT_IN = 2.6, 2.8, 0.5
_DISPLAY_ORIENTATION = ("L", "P", "S")


def save_preview(
    dataset_dir: str | os.PathLike[str],
    output_png: str | os.PathLike[str],
    case_ids: Sequence[str] | None = None,
    max_cases: int = 4,
) -> Path:
    """Draw up to ``max_cases`` cases of ``dataset_dir`` into ``output_png`` (written atomically); return its path.

    ``case_ids`` selects cases by folder name; by default the first ``BraTS-*`` folders in
    sorted order are shown. Raises ValueError when there is nothing to show.
    """
    if max_cases < 1:
        raise ValueError(f"max_cases must be at least 1, got {max_cases}")
    folders = _case_folders(Path(dataset_dir), case_ids)[:max_cases]
    height = _ROW_HEIGHT_IN * len(folders) + _LEGEND_HEIGHT_IN
    figure = Figure(figsize=(_COLUMN_WIDTH_IN * (len(MODALITIES) + 1), height))
    axes = figure.subplots(len(folders), len(MODALITIES) + 1, squeeze=False)
    for row, folder in zip(axes, folders, strict=True):
        _draw_case(row, folder)
    figure.legend(handles=legend_handles(), loc="lower center", ncol=len(LABEL_COLOURS), frameon=False)
    figure.tight_layout(rect=(0, _LEGEND_HEIGHT_IN / height, 1, 1))
    output = Path(output_png)
    with atomic_path(output) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    return output


def _case_folders(dataset_dir: Path, case_ids: Sequence[str] | None) -> list[Path]:
    """The case folders to draw: the named ones (must exist) or all ``BraTS-*`` folders, sorted."""
    if not dataset_dir.is_dir():
        raise ValueError(f"dataset folder {dataset_dir} does not exist")
    if case_ids is not None:
        missing = [cid for cid in case_ids if not (dataset_dir / cid).is_dir()]
        if missing:
            raise ValueError(f"case folders not found in {dataset_dir}: {missing}")
        folders = [dataset_dir / cid for cid in case_ids]
    else:
        folders = sorted(p for p in dataset_dir.glob("BraTS-*") if p.is_dir())
    if not folders:
        raise ValueError(f"no BraTS-* case folders in {dataset_dir}")
    return folders


def find_volume(folder: Path, suffix: str) -> Path | None:
    """The NIfTI file of one modality (or the seg) in a case folder, whichever extension it has."""
    for extension in NIFTI_EXTENSIONS:
        path = folder / case_file_name(folder.name, suffix, extension)
        if path.is_file():
            return path
    return None


def load_lps(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """A volume reoriented to LPS, (X, Y, Z), and its in-plane voxel size (x, y) in mm."""
    image = nib.load(path)
    data, zooms = reorient_lps(np.asanyarray(image.dataobj), image.affine)
    return data, (zooms[0], zooms[1])


def reorient_lps(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A volume ``(H, W, D)`` with its affine, reoriented to LPS ``(X, Y, Z)``, and its voxel size in mm along
    X, Y and Z (axes are permuted and flipped, never resampled)."""
    current = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    target = nib.orientations.axcodes2ornt(_DISPLAY_ORIENTATION)
    transform = nib.orientations.ornt_transform(current, target)
    reoriented = nib.orientations.apply_orientation(np.asarray(data), transform)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    zooms = spacing[transform[:, 0].astype(int).argsort()]
    return np.asarray(reoriented), (float(zooms[0]), float(zooms[1]), float(zooms[2]))


def axial_index(seg: np.ndarray | None, depth: int) -> int:
    """Axial slice through the tumour's centroid, or the middle slice without a (non-empty) segmentation."""
    if seg is None or not np.any(seg > 0):
        return depth // 2
    return round(float(ndimage.center_of_mass(seg > 0)[2]))


def _draw_case(row: Sequence[Axes], folder: Path) -> None:
    """Fill one figure row: the four modalities, then t2f with the label overlay."""
    seg_path = find_volume(folder, SEG_SUFFIX)
    seg = load_lps(seg_path)[0].astype(np.int16) if seg_path is not None else None
    slices: dict[str, np.ndarray] = {}
    aspect = 1.0
    z = None
    for axis, modality in zip(row, MODALITIES, strict=False):
        path = find_volume(folder, modality)
        if path is None:
            _blank(axis, f"{modality}: missing")
            continue
        volume, (dx, dy) = load_lps(path)
        aspect = dy / dx
        z = axial_index(seg, volume.shape[2]) if z is None else z
        slices[modality] = volume[:, :, z].T
        show_gray(axis, slices[modality], aspect)
        axis.set_title(modality, fontsize=9)
    row[0].set_ylabel(folder.name, fontsize=8)
    draw_overlay(row[-1], slices.get("t2f"), None if seg is None or z is None else seg[:, :, z].T, aspect)


def draw_overlay(
    axis: Axes, background: np.ndarray | None, labels: np.ndarray | None, aspect: float, title: str = "t2f + labels"
) -> None:
    """t2f slice (Y, X) with the label slice (Y, X) blended on top, titled ``title``.

    The blend is made in NumPy and drawn as one RGB image (matplotlib composites two layers per panel several times
    slower, and the picture is on the path of every case the Deploy app reports)."""
    if background is None:
        _blank(axis, "t2f: missing")
        return
    if labels is None:
        show_gray(axis, background, aspect)
        axis.set_title("t2f (no labels)", fontsize=9)
        return
    axis.imshow(blend_overlay(background, labels), aspect=aspect, interpolation="nearest")
    _no_ticks(axis)
    axis.set_title(title, fontsize=9)


def blend_overlay(background: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A slice ``(Y, X)`` windowed to grey (:func:`show_gray`'s window) with its BraTS labels ``(Y, X)`` blended on
    top in :data:`LABEL_COLOURS` (alpha :data:`_OVERLAY_ALPHA`): RGB ``(Y, X, 3)`` in [0, 1]."""
    labels = np.where(labels == LEGACY_ET_LABEL, ET_LABEL, labels)
    colours = np.zeros((max(LABEL_COLOURS) + 1, 4))
    for label, rgb in LABEL_COLOURS.items():
        colours[label] = (*rgb, _OVERLAY_ALPHA)
    overlay = colours[np.clip(labels, 0, max(LABEL_COLOURS))]  # (Y, X, RGBA); background label: alpha 0
    alpha = overlay[..., 3:]
    return alpha * overlay[..., :3] + (1 - alpha) * _windowed(background)[..., None]


def _window(image: np.ndarray) -> tuple[float, float]:
    """The grey window of a slice: 0 (or below) to the 99.5th percentile of its non-zero voxels."""
    values = image[image != 0]
    low, high = np.percentile(values, (0.5, 99.5)) if values.size else (0.0, 1.0)
    return min(float(low), 0.0), max(float(high), float(low) + 1e-6)


def _windowed(image: np.ndarray) -> np.ndarray:
    """``image`` mapped to [0, 1] by :func:`_window`: what ``cmap="gray"`` with that window shows."""
    low, high = _window(image)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def show_gray(axis: Axes, image: np.ndarray, aspect: float) -> None:
    """Grey-scale image (Y, X), windowed to the 0.5-99.5 percentiles of its non-zero voxels."""
    low, high = _window(image)
    axis.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
    _no_ticks(axis)


def _no_ticks(axis: Axes) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


def _blank(axis: Axes, text: str) -> None:
    """An empty panel with a message."""
    axis.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])


def legend_handles() -> list[Patch]:
    """Legend patches: one per tumour label, named as in ``LABEL_NAMES``."""
    return [Patch(color=rgb, label=f"{LABEL_NAMES[label]} ({label})") for label, rgb in LABEL_COLOURS.items()]
