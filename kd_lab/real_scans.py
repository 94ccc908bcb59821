"""Trained networks measured on real glioma scans: segmentation, BraTS scores, overlays, a section of a page.

The real scans are a folder of BraTS-2023 case folders with their ``-seg`` references (by default
``../shared/real_dev`` beside the repository: three preprocessed glioma scans whose references are algorithms'
outputs, see its README). They are never copied into the project; the label maps go below a work folder
(``outputs/real_scans`` by default).

For each network (a :class:`ModelSpec`: weights, bundle, optional config overlay):

1. **segment** every case with the project's own command in a subprocess: ``brats-kd segment`` (the bundle's
   ``inference.json`` at the grid recorded in ``training_geometry.json`` beside the weights, the brain crop, the
   CPU engine); a network whose bundle needs an overlay to build its ``network_def`` (the demo teacher is built
   from ``demo.json``'s ``teacher_config``, which ``brats-kd segment`` has no option for) runs through the bundle's
   own ``inference.json`` + overlay with ``python -m monai.bundle run``, as the main job's prediction stages do;
2. **score** each label map against the case's ``-seg`` file with the project's evaluation
   (:func:`~kd_components.evaluation.folder.load_case_pair`, :func:`~kd_components.evaluation.lesions.
   score_label_maps`): per case and region (TC, WT, ET) the global Dice, the lesion-wise Dice in the BraTS 2023
   ranking's counting (false-positive and missed lesions count 0: ``RegionScores.ranking_lesion_dice``), the mean
   over matched lesions (``brats-evaluation``'s ``lesionwise_dsc_mean``: ``RegionScores.matched_lesion_dice``),
   TP / FP / FN lesions and the predicted and
   reference volumes in mL; means over the cases per region and over TC / WT / ET;
3. **draw** one PNG per network: a row per case (t1c, t2f, reference, prediction) through the axial slice with the
   most reference tumour, in the label colours of :mod:`kd_components.data.preview`;
4. **write** a section of a Markdown page between two HTML-comment markers (:func:`place_section`).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from monai.data.utils import affine_to_spacing

from kd_components.constants import ET_LABEL, REGIONS, SEG_SUFFIX
from kd_components.data.brats import BratsCase, find_cases
from kd_components.data.preview import draw_overlay, find_volume, legend_handles, load_lps, show_gray
from kd_components.evaluation.folder import EvaluationError, evaluate_missing, find_prediction, load_case_pair
from kd_components.evaluation.lesions import RegionScores, region_masks, score_label_maps
from kd_components.geometry import GEOMETRY_FILE, GEOMETRY_KEYS, read_training_geometry
from kd_components.io import atomic_path, save_figure_atomic, save_json_atomic
from kd_lab.measure import cpu_description
from kd_lab.stages import brats_kd_command, python_command

__all__ = [
    "DEFAULT_REAL_SCANS",
    "MEASUREMENT_END",
    "MEASUREMENT_HEADING",
    "MEASUREMENT_START",
    "CaseMeasurement",
    "ModelMeasurement",
    "ModelSpec",
    "NoRealScansError",
    "demo_models",
    "labelled_cases",
    "mean_table",
    "measure_models",
    "place_section",
    "plot_model_overlay",
    "render_measurement_section",
    "score_predictions",
    "segment_command",
    "update_page_section",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real scans beside the repository (``../shared/real_dev``); absent on a fresh clone.
DEFAULT_REAL_SCANS = REPO_ROOT.parent / "shared" / "real_dev"
MEASUREMENT_START = "<!-- real-scan-measurement:start (scripts/measure_real_scans.py writes this part) -->"
MEASUREMENT_END = "<!-- real-scan-measurement:end -->"
MEASUREMENT_HEADING = "## 6. Measured on real scans"
#: Column headers of the per-case table: (header, :class:`CaseMeasurement` value name, format).
_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Dice", "dice", ".3f"),
    ("lesion Dice (matched)", "matched_lesion_dice", ".3f"),
    ("lesion Dice (2023 ranking)", "ranking_lesion_dice", ".3f"),
    ("TP / FP / FN", "lesions", ""),
    ("predicted mL", "pred_ml", ".1f"),
    ("reference mL", "ref_ml", ".1f"),
)


class NoRealScansError(FileNotFoundError):
    """The real-scan folder is missing or holds no BraTS case with a reference segmentation."""


@dataclass(frozen=True)
class ModelSpec:
    """One trained network to measure.

    Args:
        name: label in tables, file names and figures (``teacher``, ``student``).
        ckpt: its weights (``models/model.pt`` of a training; ``training_geometry.json`` beside it gives the grid).
        bundle: the bundle folder whose ``configs/inference.json`` runs it.
        overlay: a config JSON merged over ``inference.json`` (``configs/demo.json`` for the demo teacher, whose
            ``teacher_config`` changes the network); ``None``: ``brats-kd segment`` runs it.
    """

    name: str
    ckpt: Path
    bundle: Path
    overlay: Path | None = None


@dataclass
class CaseMeasurement:
    """One case scored for one network.

    Attributes:
        case_id: the case.
        scores: region (TC, WT, ET) -> :class:`RegionScores`.
        pred_ml, ref_ml: region -> predicted / reference volume (mL).
        segmented: ``False`` where the network wrote no label map (scored as an empty prediction, BraTS's rule).
    """

    case_id: str
    scores: dict[str, RegionScores]
    pred_ml: dict[str, float]
    ref_ml: dict[str, float]
    segmented: bool = True

    def values(self, region: str) -> dict[str, float]:
        """The table's numbers of one region: ``dice``, ``matched_lesion_dice``, ``ranking_lesion_dice``, ``tp``,
        ``fp``, ``fn``, ``hd95``, ``ranking_lesion_hd95``, ``pred_ml``, ``ref_ml``."""
        score = self.scores[region]
        return {
            "dice": score.dice,
            "matched_lesion_dice": score.matched_lesion_dice,
            "ranking_lesion_dice": score.ranking_lesion_dice,
            "tp": score.tp,
            "fp": score.fp,
            "fn": score.fn,
            "hd95": score.hd95,
            "ranking_lesion_hd95": score.ranking_lesion_hd95,
            "pred_ml": self.pred_ml[region],
            "ref_ml": self.ref_ml[region],
        }


@dataclass
class ModelMeasurement:
    """What :func:`measure_models` did for one network.

    Attributes:
        spec: the network.
        command: the segmentation command run (argv).
        returncode: its exit status (0: every case written; 1: some not; 2: nothing could be run).
        log: the file holding its output.
        cases: case id -> :class:`CaseMeasurement` (empty when the network could not run).
        image: the overlay PNG, once drawn.
        problems: cases that could not be scored, and why.
    """

    spec: ModelSpec
    command: list[str]
    returncode: int
    log: Path
    cases: dict[str, CaseMeasurement] = field(default_factory=dict)
    image: Path | None = None
    problems: list[str] = field(default_factory=list)


def labelled_cases(folder: str | os.PathLike[str]) -> list[BratsCase]:
    """The BraTS case folders below ``folder`` that have all four images and a ``-seg`` file, sorted by id.

    Raises:
        NoRealScansError: the folder does not exist, or holds no such case (the message names the path).
    """
    path = Path(folder)
    if not path.is_dir():
        raise NoRealScansError(f"real-scan folder {path} does not exist (or is not a folder)")
    cases = [c for c in find_cases(path).cases if c.label is not None and not c.problems]
    if not cases:
        raise NoRealScansError(
            f"no BraTS case folder with four images and a -seg file in {path} "
            "(expected <id>/<id>-{t1c,t1n,t2w,t2f,seg}.nii.gz, ids like BraTS-GLI-00000-000)"
        )
    return cases


def demo_models(demo_dir: str | os.PathLike[str]) -> list[ModelSpec]:
    """The teacher and student of a main-job output folder (``scripts/run_demo.py --output-dir``): weights in
    ``hybrid_teacher/models/model.pt`` and ``distilled_student/models/model.pt``. The demo teacher needs its
    bundle's ``configs/demo.json`` (its ``teacher_config``); the student runs through ``brats-kd segment``."""
    demo = Path(demo_dir)
    teacher_bundle = REPO_ROOT / "bundles" / "hybrid_teacher"
    return [
        ModelSpec(
            "teacher",
            demo / "hybrid_teacher" / "models" / "model.pt",
            teacher_bundle,
            teacher_bundle / "configs" / "demo.json",
        ),
        ModelSpec(
            "student", demo / "distilled_student" / "models" / "model.pt", REPO_ROOT / "bundles" / "distilled_student"
        ),
    ]


def _bundle_overlay(spec: ModelSpec, work_dir: Path) -> Path:
    """The overlay to run ``spec`` with, written to ``work_dir``: its keys, less ``pixdim`` / ``orientation`` when
    ``training_geometry.json`` is beside the weights (the grid travels with the weights, as in ``brats-kd segment``)."""
    assert spec.overlay is not None
    overlay = json.loads(spec.overlay.read_text())
    if read_training_geometry(spec.ckpt) is not None:
        overlay = {k: v for k, v in overlay.items() if k not in GEOMETRY_KEYS}
    path = work_dir / "overlay.json"
    save_json_atomic(overlay, path)
    return path


def segment_command(
    spec: ModelSpec, data_dir: Path, predictions_dir: Path, overlay_file: Path | None = None, threads: int | None = None
) -> list[str]:
    """The argv that segments every case of ``data_dir`` into ``predictions_dir`` with ``spec``.

    Without an overlay: ``brats-kd segment DATA -o PRED --bundle B --ckpt C`` (the ONNX / OpenVINO export cached in
    ``PRED/../cache``, never beside someone's weights). With one (``overlay_file``, see :func:`_bundle_overlay`): the
    bundle's ``inference.json`` + overlay through ``python -m monai.bundle run`` with no datalist (every case
    folder of ``data_dir``), weights ``<ckpt_dir>/model.pt``.

    Raises:
        ValueError: an overlay is given for weights not named ``model.pt`` (the bundle reads ``ckpt_dir/model.pt``).
    """
    if spec.overlay is None:
        extra = ["--threads", str(threads)] if threads else []
        return brats_kd_command(
            "segment",
            str(data_dir),
            *("-o", str(predictions_dir), "--bundle", str(spec.bundle), "--ckpt", str(spec.ckpt)),
            *("--cache-dir", str(predictions_dir.parent / "cache"), "--no-progress", *extra),
        )
    if spec.ckpt.name != "model.pt":
        raise ValueError(f"{spec.name}: a bundle run reads <ckpt_dir>/model.pt; {spec.ckpt} is named otherwise")
    configs = [str(spec.bundle / "configs" / "inference.json"), str(overlay_file or spec.overlay)]
    return python_command(
        *("-m", "monai.bundle", "run", "--config_file", repr(configs), "--bundle_root", str(spec.bundle)),
        *("--ckpt_dir", str(spec.ckpt.parent), "--dataset_dir", str(data_dir), "--data_list_file_path", ""),
        *("--output_dir", str(predictions_dir), "--num_workers", "0"),
    )


def _volumes_ml(labels: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Volume (mL) of each region (TC, WT, ET) of a BraTS label map ``(H, W, D)`` with voxel ``spacing`` (mm)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {r: float(np.count_nonzero(m)) * voxel_ml for r, m in region_masks(labels, ET_LABEL, REGIONS).items()}


def score_predictions(
    cases: Sequence[BratsCase], predictions_dir: Path
) -> tuple[dict[str, CaseMeasurement], list[str]]:
    """Score ``<predictions_dir>/<case_id>.nii.gz`` of each case against its ``-seg`` file (TC, WT, ET).

    A case without a label map is scored as an empty prediction (BraTS's rule) and marked ``segmented=False``;
    a case whose files fail the checks of :func:`load_case_pair` is left out and named in the returned problems.
    """
    measured: dict[str, CaseMeasurement] = {}
    problems: list[str] = []
    for case in cases:
        try:
            prediction = find_prediction(predictions_dir, case.case_id) if predictions_dir.is_dir() else None
            if prediction is None:
                scores = evaluate_missing(case, ET_LABEL, REGIONS)
                reference, spacing = _reference(case)
                measured[case.case_id] = CaseMeasurement(
                    case.case_id,
                    scores,
                    dict.fromkeys(REGIONS, 0.0),
                    _volumes_ml(reference, spacing),
                    segmented=False,
                )
                continue
            pred, reference, spacing = load_case_pair(case, prediction)
        except EvaluationError as err:
            problems.append(str(err))
            continue
        scores = score_label_maps(pred, reference, spacing, ET_LABEL, REGIONS)
        measured[case.case_id] = CaseMeasurement(
            case.case_id, scores, _volumes_ml(pred, spacing), _volumes_ml(reference, spacing)
        )
    return measured, problems


def _reference(case: BratsCase) -> tuple[np.ndarray, tuple[float, ...]]:
    """The case's reference label map ``(H, W, D)`` and voxel spacing (mm), for a case without a prediction."""
    assert case.label is not None
    image = nib.load(str(case.label))
    spacing = tuple(float(v) for v in affine_to_spacing(np.asarray(image.affine, dtype=np.float64), r=3))
    return np.asarray(image.dataobj).astype(np.uint8), spacing


def _run_logged(command: Sequence[str], log: Path, threads: int | None) -> int:
    """Run ``command`` with its output in ``log`` (``OMP_NUM_THREADS`` set to ``threads``); its exit status."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        return subprocess.run(list(command), stdout=handle, stderr=subprocess.STDOUT, env=env).returncode


def measure_models(
    specs: Sequence[ModelSpec],
    data_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> list[ModelMeasurement]:
    """Segment, score and draw every case of ``data_dir`` for each network (see the module's docstring).

    Label maps and the command's log go to ``work_dir/<name>/`` (its ``predictions`` folder is emptied first, so
    no earlier run's label map is scored); the overlay is ``image_dir/real_scans_<name>.png``; the numbers are
    also written to ``work_dir/measurement.json``.

    Raises:
        NoRealScansError: ``data_dir`` is missing or holds no labelled case.
    """
    data = Path(data_dir)
    cases = labelled_cases(data)
    work = Path(work_dir)
    results = []
    for spec in specs:
        folder = work / spec.name
        predictions = folder / "predictions"
        if predictions.exists():
            shutil.rmtree(predictions)
        folder.mkdir(parents=True, exist_ok=True)
        overlay = _bundle_overlay(spec, folder) if spec.overlay is not None else None
        command = segment_command(spec, data, predictions, overlay, threads)
        log(f"[{spec.name}] segmenting {len(cases)} case(s) of {data} with {spec.ckpt}")
        log_file = folder / "segment.log"
        returncode = _run_logged(command, log_file, threads)
        if returncode:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
            log(f"[{spec.name}] the command exited with status {returncode}; its output is in {log_file}:")
            for line in tail:
                log(f"    {line}")
        result = ModelMeasurement(spec, command, returncode, log_file)
        if predictions.is_dir() and any(predictions.glob("*.nii*")):
            result.cases, result.problems = score_predictions(cases, predictions)
            result.image = plot_model_overlay(
                cases, predictions, spec.name, Path(image_dir) / f"real_scans_{spec.name}.png", result.cases
            )
        else:
            result.problems.append(f"{spec.name}: no label map was written (see {log_file})")
        for problem in result.problems:
            log(f"[{spec.name}] {problem}")
        results.append(result)
    save_json_atomic(measurement_json(results, data), work / "measurement.json")
    return results


def _slice_with_most_tumour(reference: np.ndarray) -> int:
    """The axial index (last axis of an LPS volume ``(X, Y, Z)``) with the most reference tumour voxels; the middle
    slice for an empty reference."""
    counts = np.count_nonzero(reference > 0, axis=(0, 1))
    return int(np.argmax(counts)) if counts.any() else reference.shape[2] // 2


def plot_model_overlay(
    cases: Sequence[BratsCase],
    predictions_dir: Path,
    name: str,
    output_png: str | os.PathLike[str],
    measured: Mapping[str, CaseMeasurement] | None = None,
) -> Path:
    """One PNG: a row per case with t1c, t2f, the reference on t2f and ``name``'s label map on t2f, through the
    axial slice with the most reference tumour (radiological view, label colours of the data preview)."""
    figure = Figure(figsize=(2.8 * 4, 2.9 * len(cases) + 0.5))
    axes = figure.subplots(len(cases), 4, squeeze=False)
    for row, case in zip(axes, cases, strict=True):
        t1c, (dx, dy) = load_lps(case.images["t1c"])
        t2f = load_lps(case.images["t2f"])[0]
        seg_path = find_volume(case.directory, SEG_SUFFIX) or case.label
        reference = load_lps(Path(seg_path))[0].astype(np.int16)
        z = _slice_with_most_tumour(reference)
        aspect = dy / dx
        show_gray(row[0], t1c[:, :, z].T, aspect)
        row[0].set_title("t1c", fontsize=9)
        row[0].set_ylabel(f"{case.case_id}\naxial {z}", fontsize=8)
        show_gray(row[1], t2f[:, :, z].T, aspect)
        row[1].set_title("t2f", fontsize=9)
        draw_overlay(row[2], t2f[:, :, z].T, reference[:, :, z].T, aspect, title="reference")
        prediction_path = find_prediction(predictions_dir, case.case_id) if predictions_dir.is_dir() else None
        if prediction_path is None:
            show_gray(row[3], t2f[:, :, z].T, aspect)
            row[3].set_title(f"{name}: not segmented", fontsize=9)
            continue
        prediction = load_lps(prediction_path)[0].astype(np.int16)
        title = name
        if measured and case.case_id in measured:
            dice = measured[case.case_id].scores
            title += f" (Dice WT {dice['WT'].dice:.2f}, TC {dice['TC'].dice:.2f})"
        draw_overlay(row[3], t2f[:, :, z].T, prediction[:, :, z].T, aspect, title=title)
    figure.legend(handles=legend_handles(), loc="lower center", ncol=3, frameon=False)
    figure.tight_layout(rect=(0, 0.5 / (2.9 * len(cases) + 0.5), 1, 1))
    return save_figure_atomic(figure, output_png)


def _cell(values: Mapping[str, float], key: str, fmt: str) -> str:
    if key == "lesions":
        return f"{values['tp']:.0f} / {values['fp']:.0f} / {values['fn']:.0f}"
    return format(float(values[key]), fmt)


def _region_means(cases: Sequence[CaseMeasurement], region: str) -> dict[str, float]:
    """Means over cases of one region's numbers (TP, FP, FN: sums)."""
    rows = [c.values(region) for c in cases]
    return {
        k: float(np.sum([r[k] for r in rows])) if k in ("tp", "fp", "fn") else float(np.mean([r[k] for r in rows]))
        for k in rows[0]
    }


def case_table(measured: Mapping[str, CaseMeasurement]) -> str:
    """Markdown: a row per case and region, then the means over cases per region and over TC / WT / ET."""
    header = ["case", "region", *(h for h, _, _ in _COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(_COLUMNS)]
    cases = list(measured.values())
    for case in cases:
        label = case.case_id + ("" if case.segmented else " (no label map)")
        for region in REGIONS:
            values = case.values(region)
            lines.append("| " + " | ".join([label, region, *(_cell(values, k, f) for _, k, f in _COLUMNS)]) + " |")
    means = {region: _region_means(cases, region) for region in REGIONS}
    for region in REGIONS:
        cells = [_cell(means[region], k, f) for _, k, f in _COLUMNS]
        lines.append("| " + " | ".join([f"**mean of {len(cases)}**", region, *cells]) + " |")
    overall = {
        k: float(np.mean([means[r][k] for r in REGIONS]))
        for k in ("dice", "matched_lesion_dice", "ranking_lesion_dice")
    }
    cells = [_cell(overall, k, f) if k in overall else "" for _, k, f in _COLUMNS]
    lines.append("| " + " | ".join(["**mean**", "TC / WT / ET", *cells]) + " |")
    return "\n".join(lines)


def mean_table(results: Sequence[ModelMeasurement]) -> str:
    """Markdown: a row per network with the means over cases of Dice and ranking lesion-wise Dice per region and
    over TC / WT / ET."""
    header = ["network", *(f"Dice {r}" for r in REGIONS), "Dice mean"]
    header += [*(f"ranking lesion Dice {r}" for r in REGIONS), "ranking lesion Dice mean"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for result in results:
        if not result.cases:
            lines.append("| " + " | ".join([result.spec.name, *(["n/a"] * (len(header) - 1))]) + " |")
            continue
        cases = list(result.cases.values())
        means = {r: _region_means(cases, r) for r in REGIONS}
        cells = [result.spec.name]
        for key in ("dice", "ranking_lesion_dice"):
            values = [means[r][key] for r in REGIONS]
            cells += [f"{v:.3f}" for v in values] + [f"{np.mean(values):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def render_measurement_section(
    results: Sequence[ModelMeasurement], data_dir: Path, command: str, page: Path, date: str | None = None
) -> str:
    """The Markdown of the measurement (without markers): how it was made, a table per network, the overlays."""
    date = date or datetime.date.today().isoformat()
    parts = [
        f"Generated by `{command}` on {date} ({cpu_description()}): {len(results)} network(s) on the labelled "
        f"cases of `{data_dir}` (1 mm, 240 x 240 x 155; the references are algorithms' outputs, not radiologists' "
        "delineations: read Dice as agreement with strong BraTS models).",
        "Networks, and how each was run (its label maps on the scan's grid, the bundle's post-processing on):",
        "\n".join(_model_line(r) for r in results),
        "Means over the cases:",
        mean_table(results),
        "Columns: *Dice* is the global Dice of the region (BraTS's rule for a region absent from the reference: 1 "
        "if the prediction has none either, else 0). *lesion Dice (matched)* "
        "(`RegionScores.matched_lesion_dice`, `brats-evaluation`'s `lesionwise_dsc_mean`) is the mean over matched "
        "lesions only, blind to false-positive and missed lesions. *lesion Dice (2023 ranking)* counts every unmatched "
        "lesion as 0, as the BraTS 2023 ranking did (sum of the matched lesions' Dice over TP + FP + FN, "
        "`RegionScores.ranking_lesion_dice`), on the project's lesion matching (26-connected components, any overlap "
        "matches; without the 2023 script's reference-lesion dilation and minimum lesion size). TP / FP / FN are "
        "lesion counts (sums in the mean rows); volumes in mL.",
    ]
    for result in results:
        parts.append(f"### {result.spec.name}")
        if result.cases:
            parts.append(case_table(result.cases))
        if result.problems:
            parts.append("\n".join(f"- {p}" for p in result.problems))
        if result.image is not None:
            parts.append(f"![{result.spec.name} on the real scans]({_relative(result.image, page.parent)})")
    return "\n\n".join(parts)


def _model_line(result: ModelMeasurement) -> str:
    spec = result.spec
    geometry = read_training_geometry(spec.ckpt) if spec.ckpt.is_file() else None
    grid = (
        f"trained at {geometry['pixdim']} mm ({GEOMETRY_FILE})"
        if geometry
        else f"no {GEOMETRY_FILE}: run at the bundle's grid"
    )
    how = "`brats-kd segment`" if spec.overlay is None else f"`monai.bundle run` inference.json + `{spec.overlay.name}`"
    status = "" if result.returncode == 0 else f"; the command exited with status {result.returncode}"
    return f"- **{spec.name}**: `{spec.ckpt}` ({spec.bundle.name} bundle; {grid}), by {how}{status}"


def measurement_json(results: Sequence[ModelMeasurement], data_dir: Path) -> dict[str, object]:
    """The numbers as plain JSON: per network, per case and region, every value of :meth:`CaseMeasurement.values`."""
    return {
        "data_dir": str(data_dir),
        "models": {
            r.spec.name: {
                "ckpt": str(r.spec.ckpt),
                "bundle": str(r.spec.bundle),
                "overlay": str(r.spec.overlay) if r.spec.overlay else None,
                "returncode": r.returncode,
                "problems": r.problems,
                "cases": {
                    cid: {"segmented": c.segmented, **{reg: c.values(reg) for reg in REGIONS}}
                    for cid, c in r.cases.items()
                },
            }
            for r in results
        },
    }


def place_section(page: str, body: str, start_marker: str, end_marker: str, heading: str) -> str:
    """``page`` with ``body`` between ``start_marker`` and ``end_marker`` (replacing what was there); without the
    markers, ``heading`` and the marked ``body`` are appended as a new section. Everything else is unchanged."""
    marked = f"{start_marker}\n{body.strip()}\n{end_marker}"
    start = page.find(start_marker)
    end = page.find(end_marker, start + len(start_marker)) if start >= 0 else -1
    if start >= 0 and end >= 0:
        return page[:start] + marked + page[end + len(end_marker) :]
    if start >= 0 or end_marker in page:
        raise ValueError(f"the page has only one of the markers {start_marker!r} and {end_marker!r}")
    stripped = page.rstrip("\n")
    return (stripped + "\n\n" if stripped else "") + f"{heading}\n\n{marked}\n"


def update_page_section(
    page: str | os.PathLike[str], body: str, start_marker: str, end_marker: str, heading: str
) -> Path:
    """:func:`place_section` on the file ``page`` (created when absent), written atomically; its path."""
    path = Path(page)
    text = path.read_text() if path.is_file() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(place_section(text, body, start_marker, end_marker, heading))
    return path
