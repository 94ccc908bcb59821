"""What a reader sees first of a segmented case: its tumour volumes as JSON and three orthogonal slices through
the tumour as a PNG (t2f with the label map on top, in radiological convention)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from kd_components.constants import ET_LABEL, LABEL_NAMES, LEGACY_ET_LABEL
from kd_components.data.preview import draw_overlay, legend_handles, reorient_lps
from kd_components.io import save_figure_atomic, save_json_atomic
from kd_components.segment.segmenter import Segmentation

__all__ = ["REPORT_SUFFIXES", "save_tumour_slices", "tumour_centre", "write_case_report"]

#: File names of a case's report: ``<case_id><suffix>`` beside its label map ``<case_id>.nii.gz``.
REPORT_SUFFIXES: dict[str, str] = {"volumes": "-volumes.json", "slices": "-slices.png"}


def tumour_centre(labels: np.ndarray) -> tuple[int, int, int] | None:
    """The tumour voxel nearest to the centre of mass of all tumour voxels of ``labels`` ``(X, Y, Z)`` (so that
    the slices cut the tumour even when it is not convex); ``None`` without tumour."""
    tumour = np.argwhere(labels > 0)
    if tumour.size == 0:
        return None
    centre = tumour.mean(axis=0)  # the centre of mass of the tumour voxels
    nearest = tumour[np.argmin(((tumour - centre) ** 2).sum(axis=1))]
    return int(nearest[0]), int(nearest[1]), int(nearest[2])


def save_tumour_slices(
    background: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """Axial, coronal and sagittal slices through :func:`tumour_centre` (the middle of the volume without tumour),
    ``background`` (``(H, W, D)``, e.g. t2f) with ``labels`` (``(H, W, D)``, BraTS values) on top; written as PNG
    atomically.

    Shown in radiological convention, reoriented to LPS without resampling: axial and coronal slices with the
    patient's right on the left, the sagittal slice with anterior on the left; superior is up.
    """
    volume, (dx, dy, dz) = reorient_lps(background, affine)
    seg, _ = reorient_lps(labels.astype(np.int16), affine)
    centre = tumour_centre(seg)
    x, y, z = centre if centre is not None else tuple(size // 2 for size in seg.shape)
    views = [
        (f"axial (z={z})", volume[:, :, z].T, seg[:, :, z].T, dy / dx),
        (f"coronal (y={y})", np.flipud(volume[:, y, :].T), np.flipud(seg[:, y, :].T), dz / dx),
        (f"sagittal (x={x})", np.flipud(volume[x, :, :].T), np.flipud(seg[x, :, :].T), dz / dy),
    ]
    figure = Figure(figsize=(10.5, 4.2))
    axes = figure.subplots(1, len(views))
    for axis, (name, image, overlay, aspect) in zip(axes, views, strict=True):
        draw_overlay(axis, image, overlay, aspect, title=name)
    heading = title if centre is not None else f"{title}: no tumour found".lstrip(": ")
    figure.suptitle(heading, fontsize=10)
    figure.legend(handles=legend_handles(), loc="lower center", ncol=3, frameon=False, fontsize=8)
    figure.tight_layout(rect=(0, 0.08, 1, 0.95))
    return save_figure_atomic(figure, path)


def write_case_report(
    segmentation: Segmentation, background: np.ndarray, output_dir: str | os.PathLike[str], engine: str = ""
) -> dict[str, Path]:
    """Write ``<case_id>-volumes.json`` (the volumes in mL per label and region, the voxel size, the label map's
    file) and ``<case_id>-slices.png`` (:func:`save_tumour_slices` on ``background`` ``(H, W, D)``, e.g. t2f)
    into ``output_dir``, atomically; return their paths by kind (``volumes``, ``slices``)."""
    output = Path(output_dir)
    cid = segmentation.case_id
    paths = {kind: output / f"{cid}{suffix}" for kind, suffix in REPORT_SUFFIXES.items()}
    present = sorted(int(v) for v in np.unique(segmentation.labels) if v)
    names = {str(v): LABEL_NAMES.get(ET_LABEL if v == LEGACY_ET_LABEL else v, "?") for v in present}
    spacing = np.linalg.norm(np.asarray(segmentation.affine)[:3, :3], axis=0)
    save_json_atomic(
        {
            "case_id": cid,
            "label_map": f"{cid}.nii.gz",
            "volumes_ml": segmentation.volumes,
            "labels_present": names,
            "voxel_size_mm": [round(float(s), 4) for s in spacing],
            "shape": [int(s) for s in segmentation.labels.shape],
            **({"engine": engine} if engine else {}),
        },
        paths["volumes"],
    )
    volumes = segmentation.volumes
    title = f"{cid}: whole tumour {volumes['WT_ml']:.1f} mL, tumour core {volumes['TC_ml']:.1f} mL, " + (
        f"enhancing {volumes['ET_ml']:.1f} mL"
    )
    save_tumour_slices(background, segmentation.labels, segmentation.affine, paths["slices"], title)
    return paths
