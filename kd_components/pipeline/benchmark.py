"""The project's comparison: teacher vs distilled students vs label-only students, under a shortage of labels.

Regime (see ``docs/results.md`` for the measured table):

- **Data.** One phantom data set (``data_seed``), split by case index into a few labelled training
  cases, a small labelled validation set (model selection, as a real project would keep one), many
  unlabelled scans (their segmentations are never read: the datalist lists them without a label)
  and a held-out labelled test set on which every row is scored.
- **Teacher.** The demo ``HybridTeacher`` trained on the labelled cases only, ``teacher_steps``
  optimizer steps, once per seed in ``teacher_seeds`` (by default once: on 2 CPU cores a teacher
  costs as much as four students).
- **Students.** Every student row gets the same ``student_steps`` optimizer steps (not epochs: an
  epoch with interleaved unlabelled batches has more batches), the same data, augmentation, schedule
  and seed, and is selected by the same validation set. Rows: labels only; + soft-target KD;
  + soft-target and feature KD; the same with the unlabelled scans, interleaved (their batches take
  steps of their own) and paired (each step one labelled and one unlabelled batch, so as many
  labelled batches are seen as in the label-only row); MONAI's model-zoo BraTS SegResNet
  (``init_filters`` 16, blocks 1-2-2-4) on labels only.
- **Seeds.** Each student row is trained with every seed in ``seeds`` (the data split is fixed; the
  seed sets initialisation, patch sampling and augmentation); a student of seed *s* learns from the
  teacher of seed *s* if there is one, else from the teacher of the first teacher seed. Tables give
  mean and standard deviation over seeds.
- **Cost.** Parameters, FLOPs per 96^3 patch, and sliding-window inference time and peak memory of
  one BraTS-size volume (4 x 240 x 240 x 155) on this CPU, each network in a fresh process, all in
  the same run; the default (full-size) teacher is measured too, though it is not trained here.

Every training and evaluation is a stage of :class:`~kd_components.pipeline.stages.StageRunner`, so
an interrupted benchmark continues where it stopped when the same command is run again.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
import os
import resource
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kd_components.constants import MODALITIES
from kd_components.data.brats import discover_cases, validate_cases
from kd_components.data.datalist import build_datalist
from kd_components.io import save_json_atomic
from kd_components.pipeline.demo import STUDENT_BUNDLE, TEACHER_BUNDLE, bundle_command, config_files
from kd_components.pipeline.report import read_metrics
from kd_components.pipeline.stages import Stage, StageRunner, python_command

__all__ = [
    "ROWS",
    "BenchmarkSettings",
    "Row",
    "benchmark_stages",
    "collect_results",
    "measure_inference",
    "network_sizes",
    "run_benchmark",
    "schedule",
    "split_cases",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
_GIB = 1024**3


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    Args:
        key: short name used for folders.
        label: the line's name in the table.
        network: name for :func:`kd_components.benchmarking.build_network` (cost columns).
        overrides: bundle overrides of this row.
        unlabelled: how the unlabelled scans are used: ``""`` (not at all), ``"interleave"`` (batches of
            their own, each an optimizer step) or ``"paired"`` (each step one labelled and one unlabelled
            batch); see :class:`~kd_components.data.mixing.MixedBatchLoader`.
        kind: ``teacher``, ``student`` (a distillation row) or ``baseline`` (labels only).
    """

    key: str
    label: str
    network: str
    overrides: tuple[str, ...] = ()
    unlabelled: str = ""
    kind: str = "student"


ROWS: tuple[Row, ...] = (
    Row("teacher", "hybrid teacher (demo size)", "demo", kind="teacher"),
    Row("labels_only", "student, labels only", "student", ("--alpha", "0", "--beta", "0"), kind="baseline"),
    Row("soft", "student + soft-target KD", "student", ("--alpha", "1", "--beta", "0", "--use_unlabelled", "false")),
    Row(
        "soft_feature",
        "student + soft-target + feature KD",
        "student",
        ("--alpha", "1", "--use_unlabelled", "false"),
    ),
    Row(
        "soft_feature_unlabelled",
        "student + soft-target + feature KD + unlabelled scans",
        "student",
        ("--alpha", "1", "--use_unlabelled", "true", "--unlabelled_mixing", "interleave"),
        unlabelled="interleave",
    ),
    Row(
        "soft_feature_paired",
        "student + soft-target + feature KD + unlabelled scans, paired",
        "student",
        ("--alpha", "1", "--use_unlabelled", "true", "--unlabelled_mixing", "paired"),
        unlabelled="paired",
    ),
    Row(
        "segresnet16",
        "model-zoo SegResNet (16 filters), labels only",
        "segresnet16",
        ("--alpha", "0", "--beta", "0", "--network_def#init_filters", "16"),
        kind="baseline",
    ),
)


@dataclass(frozen=True)
class BenchmarkSettings:
    """Data split, budgets and seeds of the benchmark (defaults: the run in ``docs/results.md``)."""

    output_dir: Path = Path("outputs/benchmark")
    data_seed: int = 100
    labelled: int = 6
    validation: int = 2
    unlabelled: int = 12
    test: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    teacher_seeds: tuple[int, ...] = (0,)
    teacher_steps: int = 120
    student_steps: int = 36
    validations: int = 4
    batch_size: int = 2
    rows: tuple[str, ...] = tuple(r.key for r in ROWS)
    timing_networks: tuple[str, ...] = ("default", "demo", "student", "segresnet16")
    timing_shape: tuple[int, int, int] = (240, 240, 155)
    timing_roi: int = 96
    timing_overlap: float = 0.25
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.rows) - {r.key for r in ROWS}
        if unknown:
            raise ValueError(f"unknown rows {sorted(unknown)}; known: {[r.key for r in ROWS]}")
        if min(self.labelled, self.validation, self.test) < 1 or self.unlabelled < 0:
            raise ValueError("labelled, validation and test need at least one case each")
        if not self.seeds or not self.teacher_seeds:
            raise ValueError("at least one seed and one teacher seed are needed")

    @property
    def num_cases(self) -> int:
        return self.labelled + self.validation + self.unlabelled + self.test


def split_cases(case_ids: Sequence[str], settings: BenchmarkSettings) -> dict[str, list[str]]:
    """Sorted case ids -> roles, by index: labelled, validation, unlabelled, test (in that order)."""
    ids = sorted(case_ids)
    if len(ids) < settings.num_cases:
        raise ValueError(f"the benchmark needs {settings.num_cases} cases, found {len(ids)}")
    bounds = [0]
    for n in (settings.labelled, settings.validation, settings.unlabelled, settings.test):
        bounds.append(bounds[-1] + n)
    names = ("labelled", "validation", "unlabelled", "test")
    return {name: ids[bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}


def write_datalists(settings: BenchmarkSettings) -> None:
    """Validate the phantoms, then write ``datalist.json`` (training: labelled = fold 1, validation = fold 0;
    testing: the unlabelled scans, without labels) and ``test_datalist.json`` (the test cases as fold 0)."""
    data = settings.output_dir / "data"
    full = build_datalist(validate_cases(discover_cases(data)), data, num_folds=2)
    entries = {e["case_id"]: e for e in full["training"]}
    roles = split_cases(list(entries), settings)
    train = [entries[c] | {"fold": 1} for c in roles["labelled"]] + [
        entries[c] | {"fold": 0} for c in roles["validation"]
    ]
    unlabelled = [{k: v for k, v in entries[c].items() if k in ("case_id", "image")} for c in roles["unlabelled"]]
    test = [entries[c] | {"fold": 0} for c in roles["test"]]
    common = {k: full[k] for k in ("modalities", "labels", "regions", "et_label")}
    save_json_atomic(
        common | {"name": "benchmark", "roles": roles, "training": train, "testing": unlabelled},
        settings.output_dir / "datalist.json",
    )
    save_json_atomic(common | {"name": "benchmark test set", "training": test, "testing": []}, _test_datalist(settings))


def _test_datalist(settings: BenchmarkSettings) -> Path:
    return settings.output_dir / "test_datalist.json"


def schedule(steps: int, batches_per_epoch: int, validations: int) -> tuple[int, int]:
    """(epochs, val_interval) for about ``steps`` optimizer steps with ``validations`` evenly spaced validations.

    The epochs are rounded up to a multiple of the interval so that the last epoch is validated
    (the steps actually run are ``epochs * batches_per_epoch``; the results table gives them).
    """
    epochs = max(1, math.ceil(steps / batches_per_epoch))
    interval = max(1, epochs // validations)
    return interval * math.ceil(epochs / interval), interval


def _batches(cases: int, batch_size: int) -> int:
    return math.ceil(cases / batch_size)


def row_schedule(settings: BenchmarkSettings, row: Row) -> tuple[int, int, int]:
    """(epochs, val_interval, batches per epoch) of ``row``."""
    per_epoch = _batches(settings.labelled, settings.batch_size)
    if row.unlabelled == "interleave":  # paired: one unlabelled batch rides along with each labelled one
        per_epoch += _batches(settings.unlabelled, settings.batch_size)
    steps = settings.teacher_steps if row.kind == "teacher" else settings.student_steps
    return (*schedule(steps, per_epoch, settings.validations), per_epoch)


def row_seeds(settings: BenchmarkSettings, row: Row) -> tuple[int, ...]:
    """The seeds ``row`` is trained with: ``teacher_seeds`` for the teacher, ``seeds`` for the others."""
    return settings.teacher_seeds if row.kind == "teacher" else settings.seeds


def run_dir(settings: BenchmarkSettings, row: Row, seed: int) -> Path:
    return settings.output_dir / "runs" / f"{row.key}_seed{seed}"


def benchmark_stages(settings: BenchmarkSettings) -> list[Stage]:
    """Data, datalists, then per seed: teacher training, each student row, and each row's test evaluation."""
    out = settings.output_dir
    data = out / "data"
    stages = [
        Stage(
            "phantoms",
            command=python_command(
                str(REPO_ROOT / "scripts" / "make_phantoms.py"),
                *("--output-dir", str(data), "--num-cases", str(settings.num_cases)),
                *("--seed", str(settings.data_seed), "--profile", "small", "--preview"),
            ),
            outputs=(data / "preview.png",),
            owned_dirs=(data,),
            description=f"{settings.num_cases} phantom cases (seed {settings.data_seed}) -> {data}",
        ),
        Stage(
            "datalists",
            action=lambda: write_datalists(settings),
            outputs=(out / "datalist.json", _test_datalist(settings)),
            depends_on=("phantoms",),
            params={k: getattr(settings, k) for k in ("data_seed", "labelled", "validation", "unlabelled", "test")},
            description="validating every case; benchmark datalist and held-out test datalist",
        ),
    ]
    common = ["--dataset_dir", str(data), "--batch_size", str(settings.batch_size)]
    rows = [r for r in ROWS if r.key in settings.rows or r.kind == "teacher"]
    for seed in sorted(set(settings.seeds) | set(settings.teacher_seeds)):
        teacher_seed = seed if seed in settings.teacher_seeds else settings.teacher_seeds[0]
        teacher_model = run_dir(settings, ROWS[0], teacher_seed) / "models" / "model.pt"
        for row in rows:
            if seed not in row_seeds(settings, row):
                continue
            folder = run_dir(settings, row, seed)
            bundle = TEACHER_BUNDLE if row.kind == "teacher" else STUDENT_BUNDLE
            epochs, val_interval, per_epoch = row_schedule(settings, row)
            args = [*common, "--seed", str(seed), *row.overrides, "--ckpt_dir", str(folder / "models")]
            train_args = [
                *args,
                *("--data_list_file_path", str(out / "datalist.json")),
                *("--epochs", str(epochs), "--val_interval", str(val_interval)),
            ]
            deps: tuple[str, ...] = ("datalists",)
            if row.kind == "student":
                train_args += ["--teacher_ckpt", str(teacher_model)]
                deps += (f"teacher_seed{teacher_seed}_train",)
            name = f"{row.key}_seed{seed}"
            stages.append(
                Stage(
                    f"{name}_train",
                    command=bundle_command(
                        bundle,
                        "training",
                        ("train.json", "demo.json"),
                        *train_args,
                        "--output_dir",
                        str(folder / "runs"),
                    ),
                    inputs=config_files(bundle, ("train.json", "demo.json")),
                    outputs=(folder / "models" / "model.pt",),
                    owned_dirs=(folder / "models", folder / "runs"),
                    depends_on=deps,
                    resume_dir=folder / "models",
                    description=f"{row.label}, seed {seed}: {epochs} epochs x {per_epoch} batches",
                ),
            )
            stages.append(
                Stage(
                    f"{name}_test",
                    command=bundle_command(
                        bundle,
                        None,
                        ("train.json", "demo.json", "evaluate.json"),
                        *args,
                        *("--data_list_file_path", str(_test_datalist(settings)), "--fold", "0"),
                        "--output_dir",
                        str(folder / "test"),
                    ),
                    inputs=config_files(bundle, ("train.json", "demo.json", "evaluate.json")),
                    outputs=(folder / "test" / "metrics.csv",),
                    owned_dirs=(folder / "test",),
                    depends_on=(f"{name}_train",),
                    description=f"{row.label}, seed {seed}: Dice and HD95 on the {settings.test} test cases",
                ),
            )
    return stages


def network_sizes(networks: Sequence[str], roi: int) -> dict[str, dict[str, float]]:
    """Parameters and forward GFLOPs per ``roi``^3 patch of each network, counted on the meta device
    (no weights are allocated, nothing is timed): the size columns of the results table."""
    from kd_components.benchmarking import build_network, count_flops
    from kd_components.tracking import count_parameters

    sizes = {}
    for name in dict.fromkeys(networks):
        with torch.device("meta"):
            params = count_parameters(build_network(name, roi))
        sizes[name] = {"params": params, "gflops_patch": count_flops(name, roi)[0] / 1e9}
    return sizes


def measure_inference(network: str, shape: Sequence[int], roi: int, overlap: float) -> dict[str, Any]:
    """Parameters, FLOPs per ``roi``^3 patch, and sliding-window inference time and peak memory on one
    random ``(1, 4, *shape)`` volume with MONAI's ``SlidingWindowInferer`` (batch 1 per window, eval
    mode, ``torch.no_grad()``). Meant to run in a fresh process (:func:`measure_inference_in_fresh_process`)."""
    from monai.inferers import SlidingWindowInferer

    from kd_components.benchmarking import build_network

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB
    size = network_sizes([network], roi)[network]
    torch.manual_seed(0)
    model = build_network(network, roi).eval()
    volume = torch.randn(1, len(MODALITIES), *shape)
    inferer = SlidingWindowInferer(roi_size=(roi,) * 3, sw_batch_size=1, overlap=overlap, mode="gaussian")
    import time

    load = os.getloadavg()[0]
    start = time.perf_counter()
    with torch.no_grad():
        output = inferer(volume, model)
    seconds = time.perf_counter() - start
    return {
        "network": network,
        **size,
        "inference_s": seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB,
        "baseline_rss_gib": baseline,
        "output_shape": list(output.shape),
        "load": (load, os.getloadavg()[0]),
        "threads": torch.get_num_threads(),
    }


def measure_inference_in_fresh_process(network: str, shape: Sequence[int], roi: int, overlap: float) -> dict[str, Any]:
    """:func:`measure_inference` in a new (spawned) process, so peak memory is that network's alone."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure_inference, network, tuple(shape), roi, overlap).result()


def collect_results(settings: BenchmarkSettings) -> dict[str, Any]:
    """Per row and seed: the test metrics of ``metrics.csv``; per row: mean and standard deviation over seeds."""
    results: dict[str, Any] = {}
    for row in ROWS:
        if row.key not in settings.rows and row.kind != "teacher":
            continue
        seeds = row_seeds(settings, row)
        per_seed = {seed: read_metrics(run_dir(settings, row, seed) / "test") for seed in seeds}
        keys = sorted(next(iter(per_seed.values())))
        summary = {}
        for key in keys:
            values = [per_seed[s][key] for s in seeds]
            finite = [v for v in values if math.isfinite(v)]
            summary[key] = {
                "mean": statistics.fmean(finite) if finite else float("nan"),
                "std": statistics.stdev(finite) if len(finite) > 1 else None,
                "n": len(finite),
                "values": values,
            }
        epochs, _, per_epoch = row_schedule(settings, row)
        results[row.key] = {
            "label": row.label,
            "kind": row.kind,
            "network": row.network,
            "unlabelled": row.unlabelled,
            "epochs": epochs,
            "steps": epochs * per_epoch,
            "seeds": list(seeds),
            "per_seed": per_seed,
            "summary": summary,
        }
    return results


def run_benchmark(settings: BenchmarkSettings, fresh: bool = False, timing: bool = True) -> dict[str, Any]:
    """Train and test every row for every seed (restartable), measure inference cost, return everything."""
    runner = StageRunner(settings.output_dir / ".stages", fresh=fresh)
    for stage in benchmark_stages(settings):
        runner.run(stage)
    results = {"settings": _jsonable(asdict(settings)), "rows": collect_results(settings)}
    results["sizes"] = network_sizes([row["network"] for row in results["rows"].values()], settings.timing_roi)
    cost_path = settings.output_dir / "inference_cost.json"
    if timing:
        costs = []
        for network in settings.timing_networks:
            print(f"[timing] sliding-window inference of {network} on 4x{'x'.join(map(str, settings.timing_shape))}")
            costs.append(
                measure_inference_in_fresh_process(
                    network, settings.timing_shape, settings.timing_roi, settings.timing_overlap
                )
            )
            print(f"[timing] {network}: {costs[-1]['inference_s']:.1f} s")
        save_json_atomic(costs, cost_path)
    results["cost"] = json.loads(cost_path.read_text()) if cost_path.exists() else []
    results["stage_seconds"] = runner.timings
    results["stage_seconds_recorded"] = runner.recorded
    save_json_atomic(_jsonable(results), settings.output_dir / "results.json")
    return results


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
