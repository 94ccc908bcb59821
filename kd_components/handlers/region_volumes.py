"""Per-case tumour volumes (mL) of the predicted BraTS label maps, written as CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from ignite.engine import Engine, Events
from monai.config.type_definitions import NdarrayOrTensor

from kd_components.constants import ET_LABEL, NETC_LABEL, SNFH_LABEL
from kd_components.io import atomic_path, is_brats_kd_label_map, locked, save_json_atomic
from kd_components.writers import case_id_of

logger = logging.getLogger(__name__)


def region_volumes_ml(
    label_map: NdarrayOrTensor, affine: NdarrayOrTensor, et_label: int = ET_LABEL
) -> dict[str, float]:
    """Volumes in mL of a BraTS label map ``(H, W, D)`` or ``(1, H, W, D)``: each label (``NETC_ml``,
    ``SNFH_ml``, ``ET_ml``) and each composite region (``TC_ml`` = NETC + ET, ``WT_ml`` = all three).

    The voxel volume is ``|det(affine[:3, :3])|`` mm^3 (1 mL = 1000 mm^3).
    """
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))
    labels = np.asarray(label_map.detach().cpu() if hasattr(label_map, "detach") else label_map)
    counts = {"NETC": int((labels == NETC_LABEL).sum()), "SNFH": int((labels == SNFH_LABEL).sum())}
    counts["ET"] = int((labels == et_label).sum())
    counts["TC"] = counts["NETC"] + counts["ET"]
    counts["WT"] = counts["TC"] + counts["SNFH"]
    return {f"{name}_ml": round(count * voxel_mm3 / 1000.0, 4) for name, count in counts.items()}


class RegionVolumeWriter:
    """Ignite handler: after each iteration, add the volumes of every predicted case to a summary.

    Reads ``engine.state.output`` (a list of per-case dicts, as MONAI's evaluators give after
    decollation) and the label map under ``pred_key`` (``(1, H, W, D)`` with MONAI metadata). The
    summary is rewritten atomically to ``<output_dir>/<filename>.csv`` and ``.json`` after every
    iteration, so an interrupted run keeps what it had finished.

    Args:
        output_dir: folder of the summary files.
        pred_key: key of the BraTS label map in each output dict.
        et_label: ET value used in the label maps (3 BraTS 2023, 4 legacy).
        filename: base name of the summary files.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        pred_key: str = "pred",
        et_label: int = ET_LABEL,
        filename: str = "volumes",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.pred_key = pred_key
        self.et_label = et_label
        self.filename = filename
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def __call__(self, engine: Engine) -> None:
        outputs = engine.state.output
        for item in outputs if isinstance(outputs, list) else [outputs]:
            if self.pred_key not in item:  # dropped by DropNonFinited: no label map, no volumes
                continue
            pred = item[self.pred_key]
            meta = getattr(pred, "meta", {})
            row = {"case_id": case_id_of(meta) or f"case_{len(self.rows)}"}
            row.update(region_volumes_ml(pred, meta.get("affine", np.eye(4)), self.et_label))
            self.rows.append(row)
        self.write()

    def write(self) -> None:
        """Write the rows collected so far as CSV and JSON (atomically)."""
        write_volume_table(self.rows, self.output_dir, self.filename)


def write_volume_table(
    rows: list[dict[str, Any]], output_dir: str | os.PathLike[str], filename: str = "volumes"
) -> None:
    """Write ``rows`` (one dict per case) as ``<filename>.csv`` and ``<filename>.json`` in ``output_dir``, each
    atomically; nothing is written for no rows. The CSV's columns are every key of the rows, in first-seen order."""
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), restval="")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(Path(output_dir) / f"{filename}.csv") as tmp:
        tmp.write_text(buffer.getvalue())
    save_json_atomic(rows, Path(output_dir) / f"{filename}.json")


def update_volume_table(
    rows: list[dict[str, Any]], output_dir: str | os.PathLike[str], filename: str = "volumes"
) -> list[dict[str, Any]]:
    """Add ``rows`` to the volume table already in ``output_dir`` (``<filename>.json``, as
    :func:`write_volume_table` writes it) and write both files again; return the table.

    A case of ``rows`` replaces its earlier row; an earlier row stays while its label map ``<case_id>.nii.gz`` (or
    ``.nii``) is still in the folder, so two runs into one folder list the cases of both. A label map in the folder
    that segment wrote without a row (a run killed, or a disk filled, after the map was written and before its row)
    gets one, from its voxels (:func:`unlisted_label_map_rows`). The read and the write happen under a lock on
    ``.<filename>.lock``, so concurrent runs into one folder each add their cases and none is lost. An unreadable
    earlier table is rebuilt from ``rows`` and the label maps (and said in the log).
    """
    folder = Path(output_dir)
    with locked(folder / f".{filename}.lock"):
        earlier: list[dict[str, Any]] = []
        table = folder / f"{filename}.json"
        if table.is_file():
            try:
                loaded = json.loads(table.read_text())
                earlier = [r for r in loaded if isinstance(r, dict) and "case_id" in r]
            except (OSError, ValueError) as err:
                logger.warning(f"{table} is unreadable ({err}); it is written again from this run's cases")
        new = {str(r["case_id"]) for r in rows}
        kept = [
            r
            for r in earlier
            if str(r["case_id"]) not in new
            and any((folder / f"{r['case_id']}{ext}").is_file() for ext in (".nii.gz", ".nii"))
        ]
        merged = kept + list(rows)
        merged += unlisted_label_map_rows(folder, {str(r["case_id"]) for r in merged})
        write_volume_table(merged, folder, filename)
    return merged


def unlisted_label_map_rows(folder: Path, listed: set[str], et_label: int = ET_LABEL) -> list[dict[str, Any]]:
    """Volume rows (``case_id`` and the volumes of :func:`region_volumes_ml`) of the label maps ``<case_id>.nii.gz``
    in ``folder`` that ``brats-kd segment`` wrote (:func:`~kd_components.io.is_brats_kd_label_map`: its mark in the
    header) and whose case is not in ``listed``. Other NIfTI files (a user's scans or segmentations) are left out."""
    rows = []
    for path in sorted(folder.glob("*.nii.gz")):
        case_id = path.name[: -len(".nii.gz")]
        if case_id in listed or path.name.startswith(".") or not is_brats_kd_label_map(path):
            continue
        image = nib.load(str(path))
        logger.warning(f"{path}: a label map without a row in the volume table (a run stopped before it): added")
        rows.append({"case_id": case_id, **region_volumes_ml(np.asarray(image.dataobj), image.affine, et_label)})
    return rows
