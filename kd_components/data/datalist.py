"""MONAI decathlon-style datalists with cross-validation folds.

The JSON written by :func:`build_datalist` loads with
``monai.data.load_decathlon_datalist(path, data_list_key="training", base_dir=dataset_dir)``::

    {
      "training": [{"case_id": ..., "image": [t1c, t1n, t2w, t2f], "label": seg, "fold": k}, ...],
      "testing":  [{"case_id": ..., "image": [t1c, t1n, t2w, t2f]}, ...],   # cases without a segmentation
      "invalid":  [{"case_id": ..., "file": ..., "problem": ...}, ...],     # only with skip_invalid
      "not_cases": [{"folder": ..., "problem": ...}, ...],                 # folders not taken (skip_invalid)
      ...metadata (modalities, labels, regions, num_folds, seed, et_label)
    }

Paths are relative to the data set root, lexically (a case reached through a symlinked folder keeps the
link's path). Folds are stratified by task, presence of enhancing tumour and whole-tumour size (above or
below the median), and deterministic for a seed. A labelled case without tumour (a healthy brain) gets fold
:data:`TRAINING_ONLY_FOLD` (-1): it is in the training part of every fold and never validated.

Datalists are read back with :func:`load_datalist_split`, which checks them first
(:func:`check_datalist_schema`, :func:`image_list_problems`) and names the file and the entry of every
problem, one line each.
"""

from __future__ import annotations

import json
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
    modality_of_file,
)
from kd_components.data.brats import CaseProblem, CaseReport, InvalidCaseError

FOLD_KEY = "fold"
#: The fold of labelled cases without tumour (healthy brains): in the training part of every fold, never validated
#: (their Dice is undefined for an empty prediction and 0 for any other).
TRAINING_ONLY_FOLD = -1


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, lexically: symlinks are not resolved, so a case folder that is a symlink
    (or lies under one) keeps the path through the link.

    Raises:
        ValueError: ``path`` is not below ``root``.
    """
    relative = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root)))
    if relative.parts and relative.parts[0] == os.pardir:
        raise ValueError(f"{path} is not below the data set root {root}")
    return relative.as_posix()


def _stratum(report: CaseReport, wt_median: float) -> tuple[str, bool, bool]:
    counts = report.label_counts or {}
    et_label = max((k for k in counts if k not in (BACKGROUND_LABEL, NETC_LABEL, SNFH_LABEL)), default=None)
    has_et = et_label is not None and counts.get(et_label, 0) > 0
    return report.case.task, has_et, _whole_tumour(report) > wt_median


def _whole_tumour(report: CaseReport) -> int:
    return sum(c for k, c in (report.label_counts or {}).items() if k != BACKGROUND_LABEL)


def empty_segmentations(reports: Sequence[CaseReport]) -> list[str]:
    """Ids of the valid labelled cases whose segmentation has no tumour voxel (only label 0)."""
    return [
        r.case.case_id
        for r in reports
        if r.ok
        and r.label_counts is not None
        and not any(c for k, c in r.label_counts.items() if k != BACKGROUND_LABEL)
    ]


def assign_folds(reports: Sequence[CaseReport], num_folds: int, seed: int = 0) -> dict[str, int]:
    """Assign each labelled case to one of ``num_folds`` folds, stratified and deterministic by ``seed``.

    Cases are grouped by (task, has ET, whole tumour above the median); each group is shuffled with
    ``seed`` and dealt round-robin, continuing where the previous group stopped so fold sizes differ
    by at most one.
    """
    if num_folds < 1:
        raise ValueError(f"num_folds must be at least 1, got {num_folds}")
    if 0 < len(reports) < num_folds:
        raise ValueError(
            f"cannot make {num_folds} folds from {len(reports)} labelled cases with tumour (cases without tumour "
            "train in every fold and are not counted); lower num_folds"
        )
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
    not_cases: Sequence[CaseProblem] = (),
) -> dict[str, Any]:
    """Turn validated cases into a decathlon-style datalist (see the module docstring).

    ``not_cases`` are the folders that discovery did not take (:attr:`~kd_components.data.brats.CaseDiscovery.
    not_cases`); like invalid cases they stop the build unless ``skip_invalid``, and are listed under
    ``not_cases``.

    Raises:
        InvalidCaseError: some case has problems, or some folder was not taken, and ``skip_invalid`` is False
            (lists every problem, the folders' last).
        ValueError: no usable case at all.
    """
    root = Path(dataset_dir)
    problems = [p for r in reports for p in r.problems]
    if (problems or not_cases) and not skip_invalid:
        raise InvalidCaseError([*problems, *not_cases])
    good = [r for r in reports if r.ok]
    if not good:
        raise ValueError(f"no usable BraTS case under {root} ({len(reports)} found, all invalid)")
    healthy = set(empty_segmentations(good))
    labelled = [r for r in good if r.case.label is not None and r.case.case_id not in healthy]
    folds = assign_folds(labelled, num_folds, seed) | dict.fromkeys(healthy, TRAINING_ONLY_FOLD)
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
        "not_cases": [{"folder": p.case_id, "problem": p.problem} for p in not_cases],
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
#: What an ``image`` list must hold, for messages.
_IMAGE_LIST = f"a list of the {len(MODALITIES)} files [{', '.join(MODALITIES)}]"


class DatalistError(ValueError):
    """A datalist that cannot be used; ``problems`` are its lines, each ``<datalist>: <entry>: <what is wrong>``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def entry_name(key: str, index: int, entry: Any) -> str:
    """How messages name an entry of a datalist: ``'training' entry 3 (BraTS-GLI-00001-000)``."""
    case_id = entry.get("case_id") if isinstance(entry, dict) else None
    return f"{key!r} entry {index}" + (f" ({case_id})" if isinstance(case_id, str) and case_id else "")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_datalist_schema(data: Any, key: str, labelled: bool | None = None) -> list[str]:
    """The schema problems of the list ``data[key]`` of a parsed datalist, one line each (``<entry>: <problem>``).

    Checked: ``data`` is an object holding a list under ``key``; every entry is an object (not an MSD-style
    plain string) with ``image`` a list of file paths, ``label`` a file path (required when ``labelled``,
    by default for ``training``), ``case_id`` a string and ``fold`` an integer where present. The number,
    order and distinctness of the images are checked by :func:`image_list_problems`.
    """
    labelled = key == "training" if labelled is None else labelled
    if not isinstance(data, dict):
        return [f"the top level is a {_type_name(data)}; expected an object with 'training' and 'testing' lists"]
    if key not in data:
        return [f"no {key!r} list (keys present: {', '.join(map(repr, data)) or 'none'})"]
    entries = data[key]
    if not isinstance(entries, list):
        return [f"{key!r} is a {_type_name(entries)}; expected a list of entries"]
    problems = []
    for index, entry in enumerate(entries):
        name = entry_name(key, index, entry)
        if isinstance(entry, str):
            problems.append(
                f"{name}: a plain string ({entry!r}); expected an object "
                f'{{"case_id": ..., "image": [{", ".join(MODALITIES)}]}} (an MSD-style string names one file; '
                f"each case needs its {len(MODALITIES)} modality files)"
            )
            continue
        if not isinstance(entry, dict):
            problems.append(f"{name}: a {_type_name(entry)}; expected an object with 'image'")
            continue
        images = entry.get("image")
        if "image" not in entry:
            problems.append(f"{name}: no 'image' ({_IMAGE_LIST})")
        elif isinstance(images, str):
            problems.append(f"{name}: 'image' is one string ({images!r}); expected {_IMAGE_LIST}")
        elif not isinstance(images, list):
            problems.append(f"{name}: 'image' is a {_type_name(images)}; expected {_IMAGE_LIST}")
        else:
            problems += [
                f"{name}: 'image' item {i} is {p!r} ({_type_name(p)}); expected a file path"
                for i, p in enumerate(images)
                if not isinstance(p, str) or not p
            ]
        if "label" in entry:
            label = entry["label"]
            if not isinstance(label, str) or not label:
                problems.append(f"{name}: 'label' is {label!r} ({_type_name(label)}); expected one file path")
        elif labelled:
            problems.append(f"{name}: no 'label' (every {key!r} entry needs its segmentation file)")
        case_id = entry.get("case_id")
        if "case_id" in entry and (not isinstance(case_id, str) or not case_id):
            problems.append(f"{name}: 'case_id' is {case_id!r} ({_type_name(case_id)}); expected a non-empty string")
        fold = entry.get(FOLD_KEY)
        if FOLD_KEY in entry and (isinstance(fold, bool) or not isinstance(fold, int)):
            problems.append(f"{name}: {FOLD_KEY!r} is {fold!r} ({_type_name(fold)}), expected an integer")
    return problems


def read_datalist(path: str | os.PathLike[str], key: str, labelled: bool | None = None) -> list[dict[str, Any]]:
    """The entries under ``key`` of the datalist JSON ``path``, after :func:`check_datalist_schema`.

    Raises:
        DatalistError: the file is missing, unreadable or not JSON, or the schema is wrong; one line per
            problem, each naming the file and the entry.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatalistError([f"{path}: datalist file not found"]) from None
    except (OSError, UnicodeDecodeError) as err:
        detail = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise DatalistError([f"{path}: cannot read the datalist ({type(err).__name__}: {detail})"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatalistError([f"{path}: not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"]) from None
    problems = check_datalist_schema(data, key, labelled)
    if problems:
        raise DatalistError([f"{path}: {p}" for p in problems])
    return data[key]


def image_list_problems(images: Sequence[str]) -> list[str]:
    """What is wrong with the ``image`` list of one entry, by its paths alone (files are not read).

    The list must hold :data:`~kd_components.constants.MODALITIES`'s number of files, all different (by path, and
    by identity for files that exist), and where the file names carry a modality suffix (``...-t1c.nii.gz``,
    any letter case; see :func:`~kd_components.constants.modality_of_file`) they must come in the order
    ``[t1c, t1n, t2w, t2f]``. Names without a suffix (``patient1/a.nii.gz``) cannot be checked by name and pass.
    The order is checked only when the number and distinctness are right.
    """
    problems = []
    expected = f"[{', '.join(MODALITIES)}]"
    if len(images) != len(MODALITIES):
        problems.append(f"expected {len(MODALITIES)} images {expected}, got {len(images)}")
    positions: dict[Any, list[int]] = defaultdict(list)
    for index, path in enumerate(images):
        try:
            info = os.stat(path)
            identity: Any = (info.st_dev, info.st_ino)
        except OSError:
            identity = os.path.normpath(os.path.abspath(path))
        positions[identity].append(index)
    for indices in positions.values():
        if len(indices) > 1:
            where = ", ".join(map(str, indices))
            problems.append(
                f"'image' lists the same file {images[indices[0]]} as images {where}; "
                f"expected {len(MODALITIES)} different files {expected}"
            )
    found = [modality_of_file(str(p)) for p in images]
    if not problems and any(
        m is not None and (i >= len(MODALITIES) or m != MODALITIES[i]) for i, m in enumerate(found)
    ):
        order = ", ".join(m or "?" for m in found)
        problems.append(f"images are in the order [{order}] by their file names; expected {expected}")
    return problems


def _absolute(path: str, root: str) -> str:
    """``path`` of a datalist joined to the data set root as MONAI's ``load_decathlon_datalist`` does it."""
    return os.path.normpath(os.path.join(root, path))


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` lies below ``root``, lexically (``..`` counts, symlinks are not resolved)."""
    path, root = os.path.abspath(path), os.path.abspath(root)
    return os.path.commonpath([path, root]) == root


def load_datalist_split(
    data_list_file_path: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str],
    split: str = "train",
    fold: int = 0,
    check_images: bool = True,
) -> list[dict[str, Any]]:
    """Items of one split of a datalist written by :func:`build_datalist`, with absolute paths.

    The datalist is checked first and every problem is reported at once, one line each naming the datalist
    file and the entry (index and case id): the schema (:func:`check_datalist_schema`), duplicate case ids,
    paths outside ``dataset_dir`` (lexically: ``..`` escapes, a symlink inside the root may point anywhere)
    and, with ``check_images``, each entry's images (:func:`image_list_problems`: number, distinct files,
    channel order by file name) and that every image and label file exists.

    Args:
        data_list_file_path: the datalist JSON.
        dataset_dir: the data set root the relative paths refer to.
        split: ``train`` (labelled cases outside ``fold``), ``validation`` (labelled cases in ``fold``),
            ``labelled`` (all labelled cases) or ``testing`` (the cases without a segmentation).
        fold: the validation fold.
        check_images: check the images of each entry (batch inference checks them itself, per case, so that
            a bad entry is skipped instead of stopping the run).

    Raises:
        ValueError: unknown split, missing fold, an empty split; :class:`DatalistError` (a ``ValueError``) for
            a datalist that cannot be used.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    key = "testing" if split == "testing" else "training"
    entries = read_datalist(data_list_file_path, key)
    root = os.fspath(dataset_dir)
    items: list[dict[str, Any]] = []
    for entry in entries:
        item = dict(entry)
        item["image"] = [_absolute(p, root) for p in entry["image"]]
        if "label" in entry:
            item["label"] = _absolute(entry["label"], root)
        items.append(item)
    errors = []
    where: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        if "case_id" in item:
            where[item["case_id"]].append(index)
    duplicates = {c: i for c, i in where.items() if len(i) > 1}
    if duplicates:
        listing = ", ".join(f"{c} (entries {', '.join(map(str, i[:-1]))} and {i[-1]})" for c, i in duplicates.items())
        errors.append(f"{data_list_file_path}: duplicate case ids in {key!r}: {listing}")
    for index, item in enumerate(items):
        name = f"{data_list_file_path}: {entry_name(key, index, item)}"
        files = [("image", p) for p in item["image"]] + ([("label", item["label"])] if "label" in item else [])
        outside = [p for _, p in files if not _inside(p, root)]
        errors += [f"{name}: path {p} escapes the data set root {root}" for p in outside]
        if check_images and not outside:
            errors += [f"{name}: {p}" for p in image_list_problems(item["image"])]
            if "label" in item and item["label"] in item["image"]:
                errors.append(f"{name}: 'label' is one of the images ({item['label']})")
            errors += [f"{name}: {kind} file {p} not found" for kind, p in files if not os.path.isfile(p)]
    if errors:
        raise DatalistError(errors)
    if split in ("train", "validation"):
        items = split_fold(items, fold, validation=split == "validation")
    if not items:
        raise ValueError(f"{data_list_file_path}: split {split!r} (fold {fold}) is empty")
    return items
