"""What a reader sees first of a segmented case: its tumour volumes as JSON and three orthogonal slices through
the tumour as a PNG (t2f with the label map on top, in radiological convention)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kd_components.constants import ET_LABEL, LABEL_NAMES, LEGACY_ET_LABEL
from kd_components.data.preview import LABEL_COLOURS, blend_overlay, reorient_lps
from kd_components.io import atomic_path, save_json_atomic
from kd_components.postprocess import bounding_box
from kd_components.segment.segmenter import Segmentation

__all__ = ["PANEL_HEIGHT", "REPORT_SUFFIXES", "save_tumour_slices", "tumour_centre", "write_case_report"]

#: File names of a case's report: ``<case_id><suffix>`` beside its label map ``<case_id>.nii.gz``.
REPORT_SUFFIXES: dict[str, str] = {"volumes": "-volumes.json", "slices": "-slices.png"}


def tumour_centre(labels: np.ndarray) -> tuple[int, int, int] | None:
    """The tumour voxel nearest to the centre of mass of all tumour voxels of ``labels`` ``(X, Y, Z)`` (so that
    the slices cut the tumour even when it is not convex); ``None`` without tumour."""
    mask = labels > 0
    box = bounding_box(mask)  # the tumour's box: the voxels are gathered there, not over the whole grid
    if box is None:
        return None
    tumour = np.argwhere(mask[box]) + [s.start for s in box]
    centre = tumour.mean(axis=0)  # the centre of mass of the tumour voxels
    nearest = tumour[np.argmin(((tumour - centre) ** 2).sum(axis=1))]
    return int(nearest[0]), int(nearest[1]), int(nearest[2])


#: Height in pixels of each view of the case picture (its width follows the slice and its voxel size).
PANEL_HEIGHT = 300
_MARGIN, _TEXT = 12, 16  # pixels around the panels; font size of the titles


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
    patient's right on the left, the sagittal slice with anterior on the left; superior is up. Each view is
    :data:`PANEL_HEIGHT` pixels high and as wide as its voxel size makes it. Drawn with Pillow (a few hundredths of
    a second; matplotlib took 0.13-0.19 s, on the path of every case the Deploy app reports).
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
    panels = []
    for name, image, overlay, aspect in views:
        rgb = np.round(255 * blend_overlay(image, overlay)).astype(np.uint8)
        rows, cols = rgb.shape[:2]
        width = max(1, round(PANEL_HEIGHT * cols / (rows * aspect)))  # a pixel of the slice is aspect times as tall
        panels.append((name, Image.fromarray(rgb).resize((width, PANEL_HEIGHT), Image.Resampling.NEAREST)))
    font = ImageFont.load_default(size=_TEXT)
    heading = title if centre is not None else f"{title}: no tumour found".lstrip(": ")
    top = _MARGIN + 2 * (_TEXT + 6)  # the heading, then the views' names
    width = _MARGIN + sum(panel.width + _MARGIN for _, panel in panels)
    canvas = Image.new("RGB", (width, top + PANEL_HEIGHT + _TEXT + 3 * _MARGIN), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((width // 2, _MARGIN), heading, fill="black", font=font, anchor="mt")
    left = _MARGIN
    for name, panel in panels:
        draw.text((left + panel.width // 2, top - 4), name, fill="black", font=font, anchor="mb")
        canvas.paste(panel, (left, top))
        left += panel.width + _MARGIN
    _draw_legend(draw, font, width, top + PANEL_HEIGHT + 2 * _MARGIN)
    output = Path(path)
    with atomic_path(output) as tmp:
        canvas.save(tmp, format="png", compress_level=1)
    return output


def _draw_legend(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int, y: int) -> None:
    """One colour swatch and name per tumour label (as in ``LABEL_NAMES``), centred on the line at ``y``."""
    entries = [(f"{LABEL_NAMES[label]} ({label})", rgb) for label, rgb in LABEL_COLOURS.items()]
    sizes = [round(draw.textlength(text, font=font)) + _TEXT + 6 for text, _ in entries]
    left = (width - sum(sizes) - 3 * _MARGIN * (len(entries) - 1)) // 2
    for (text, rgb), size in zip(entries, sizes, strict=True):
        draw.rectangle((left, y, left + _TEXT, y + _TEXT), fill=tuple(round(255 * c) for c in rgb))
        draw.text((left + _TEXT + 6, y + _TEXT // 2), text, fill="black", font=font, anchor="lm")
        left += size + 3 * _MARGIN


def write_case_report(
    segmentation: Segmentation, background: np.ndarray, output_dir: str | os.PathLike[str], engine: str = ""
) -> dict[str, Path]:
    """Write ``<case_id>-volumes.json`` (the volumes in mL per label and region, the voxel size, the label map's
    file) and ``<case_id>-slices.png`` (:func:`save_tumour_slices` on ``background`` ``(H, W, D)``, e.g. t2f)
    into ``output_dir``, atomically; return their paths by kind (``volumes``, ``slices``)."""
    output = Path(output_dir)
    cid = segmentation.case_id
    paths = {kind: output / f"{cid}{suffix}" for kind, suffix in REPORT_SUFFIXES.items()}
    labels = np.asarray(segmentation.labels)
    if labels.dtype == np.uint8:  # a label map as written: counting is 3x faster than np.unique's sort
        present = [int(v) for v in np.flatnonzero(np.bincount(labels.reshape(-1))) if v]
    else:
        present = sorted(int(v) for v in np.unique(labels) if v)
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
