"""MONAI decathlon-style datalists with cross-validation folds.

The JSON written by :func:`build_datalist` loads with
``monai.data.load_decathlon_datalist(path, data_list_key="training", base_dir=dataset_dir)``::

    {
      "training": [{"case_id": ..., "image": [t1c, t1n, t2w, t2f], "label": seg, "fold": k}, ...],
      "testing":  [{"case_id": ..., "image": [t1c, t1n, t2w, t2f]}, ...],   # cases without a segmentation
      "invalid":  [{"case_id": ..., "file": ..., "problem": ...}, ...],     # only with skip_invalid
      ...metadata (modalities, labels, regions, num_folds, seed, et_label)
    }

Paths are relative to the data set root. Folds are stratified by task, presence of enhancing
tumour and whole-tumour size (above or below the median), and deterministic for a seed.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kd_components.constants import (
    BACKGROUND_LABEL,
    ET_LABEL,
    LABEL_NAMES,
    MODALITIES,
    NETC_LABEL,
    REGIONS,
    SNFH_LABEL,
)
from kd_components.data.brats import CaseReport, InvalidCaseError

FOLD_KEY = "fold"


def _relative(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def _stratum(report: CaseReport, wt_median: float) -> tuple[str, bool, bool]:
    counts = report.label_counts or {}
    et_label = max((k for k in counts if k not in (BACKGROUND_LABEL, NETC_LABEL, SNFH_LABEL)), default=None)
    has_et = et_label is not None and counts.get(et_label, 0) > 0
    return report.case.task, has_et, _whole_tumour(report) > wt_median


def _whole_tumour(report: CaseReport) -> int:
    return sum(c for k, c in (report.label_counts or {}).items() if k != BACKGROUND_LABEL)


def assign_folds(reports: Sequence[CaseReport], num_folds: int, seed: int = 0) -> dict[str, int]:
    """Assign each labelled case to one of ``num_folds`` folds, stratified and deterministic by ``seed``.

    Cases are grouped by (task, has ET, whole tumour above the median); each group is shuffled with
    ``seed`` and dealt round-robin, continuing where the previous group stopped so fold sizes differ
    by at most one.
    """
    if num_folds < 1:
        raise ValueError(f"num_folds must be at least 1, got {num_folds}")
    if 0 < len(reports) < num_folds:
        raise ValueError(f"cannot make {num_folds} folds from {len(reports)} labelled cases; lower num_folds")
    wt_median = float(np.median([_whole_tumour(r) for r in reports])) if reports else 0.0
    groups: dict[tuple[str, bool, bool], list[str]] = defaultdict(list)
    for report in reports:
        groups[_stratum(report, wt_median)].append(report.case.case_id)
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    position = 0
    for key in sorted(groups):
        members = sorted(groups[key])
        for i in rng.permutation(len(members)):
            folds[members[i]] = position % num_folds
            position += 1
    return folds


def build_datalist(
    reports: Sequence[CaseReport],
    dataset_dir: str | os.PathLike[str],
    num_folds: int = 5,
    seed: int = 0,
    et_label: int = ET_LABEL,
    skip_invalid: bool = False,
) -> dict[str, Any]:
    """Turn validated cases into a decathlon-style datalist (see the module docstring).

    Raises:
        InvalidCaseError: some case has problems and ``skip_invalid`` is False (lists every problem).
        ValueError: no usable case at all.
    """
    root = Path(dataset_dir)
    problems = [p for r in reports for p in r.problems]
    if problems and not skip_invalid:
        raise InvalidCaseError(problems)
    good = [r for r in reports if r.ok]
    if not good:
        raise ValueError(f"no usable BraTS case under {root} ({len(reports)} found, all invalid)")
    labelled = [r for r in good if r.case.label is not None]
    folds = assign_folds(labelled, num_folds, seed)
    training, testing = [], []
    for report in good:
        case = report.case
        entry: dict[str, Any] = {
            "case_id": case.case_id,
            "image": [_relative(case.images[m], root) for m in MODALITIES],
        }
        if case.label is not None:
            entry["label"] = _relative(case.label, root)
            entry[FOLD_KEY] = folds[case.case_id]
            training.append(entry)
        else:
            testing.append(entry)
    labels = {str(k): v for k, v in LABEL_NAMES.items() if k != ET_LABEL} | {str(et_label): "ET"}
    return {
        "name": "BraTS",
        "description": f"BraTS-2023-layout cases under {root.name}",
        "modalities": list(MODALITIES),
        "labels": labels,
        "regions": list(REGIONS),
        "et_label": et_label,
        "num_folds": num_folds,
        "seed": seed,
        "numTraining": len(training),
        "numTest": len(testing),
        "training": training,
        "testing": testing,
        "invalid": [{"case_id": p.case_id, "file": p.file, "problem": p.problem} for p in problems],
    }


def split_fold(entries: Sequence[dict[str, Any]], fold: int, validation: bool = False) -> list[dict[str, Any]]:
    """The training (``validation=False``: every fold but ``fold``) or validation part of a datalist.

    ``entries`` are the ``training`` items (as returned by ``monai.data.load_decathlon_datalist``).
    """
    folds = {e[FOLD_KEY] for e in entries if FOLD_KEY in e}
    if fold not in folds:
        raise ValueError(f"fold {fold} is not in the datalist (folds present: {sorted(folds)})")
    return [e for e in entries if (e.get(FOLD_KEY) == fold) == validation]


SPLITS = ("train", "validation", "labelled", "testing")


def load_datalist_split(
    data_list_file_path: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str],
    split: str = "train",
    fold: int = 0,
) -> list[dict[str, Any]]:
    """Items of one split of a datalist written by :func:`build_datalist`, with absolute paths.

    Args:
        data_list_file_path: the datalist JSON.
        dataset_dir: the data set root the relative paths refer to.
        split: ``train`` (labelled cases outside ``fold``), ``validation`` (labelled cases in ``fold``),
            ``labelled`` (all labelled cases) or ``testing`` (the cases without a segmentation).
        fold: the validation fold.

    Raises:
        ValueError: unknown split, missing fold, an empty split, duplicate case ids, or a path outside
            ``dataset_dir``.
    """
    from monai.data import load_decathlon_datalist

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    key = "testing" if split == "testing" else "training"
    items = load_decathlon_datalist(
        data_list_file_path, is_segmentation=key == "training", data_list_key=key, base_dir=dataset_dir
    )
    ids = [Path(str(item["case_id"])).name for item in items if "case_id" in item]  # MONAI prefixes base_dir
    duplicates = sorted({c for c in ids if ids.count(c) > 1})
    if duplicates:
        raise ValueError(f"{data_list_file_path}: duplicate case ids in {key!r}: {', '.join(duplicates)}")
    root = Path(dataset_dir).resolve()
    for item in items:
        for path in [*item["image"], *([item["label"]] if "label" in item else [])]:
            if not Path(path).resolve().is_relative_to(root):
                raise ValueError(
                    f"{data_list_file_path}: case {item.get('case_id', '?')}: "
                    f"path {path} escapes the data set root {root}"
                )
    if split in ("train", "validation"):
        items = split_fold(items, fold, validation=split == "validation")
    if not items:
        raise ValueError(f"{data_list_file_path}: split {split!r} (fold {fold}) is empty")
    return items
