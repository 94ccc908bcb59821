"""The benchmark's stage graph: phantoms, datalists, and per row and seed the training, test and probe stages;
``run_benchmark`` runs it and collects the results."""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict
from typing import Any

from kd_components.data.brats import discover_cases, validate_cases
from kd_components.data.datalist import build_datalist
from kd_components.io import save_json_atomic
from kd_lab.benchmark.collect import BRATS_FILES, METRICS, RESULTS_INDENT, collect_results, environment, jsonable
from kd_lab.benchmark.costs import measure_costs, network_sizes
from kd_lab.benchmark.plan import (
    REGIMES,
    BenchmarkSettings,
    cli_overrides,
    estimate_seconds,
    held_out_datalist,
    row_schedule,
    run_dir,
    run_name,
    split_cases,
    student_cases,
    teacher_seed_for,
    training_datalist,
)
from kd_lab.benchmark.rows import ROWS_BY_KEY, Row, selected_rows
from kd_lab.demo import STUDENT_BUNDLE, TEACHER_BUNDLE, bundle_command, config_files
from kd_lab.stages import Stage, StageRunner, brats_kd_command

__all__ = [
    "benchmark_stages",
    "probe_run",
    "regime_results",
    "regime_rows",
    "run_benchmark",
    "write_datalists",
    "write_teacher_datalist",
]


def _datalist_parts(settings: BenchmarkSettings) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, list]]:
    """Validate the phantoms: (the datalist's common keys, entries by case id, the cases' roles)."""
    data = settings.output_dir / "data"
    full = build_datalist(validate_cases(discover_cases(data)), data, num_folds=2)
    entries = {e["case_id"]: e for e in full["training"]}
    common = {k: full[k] for k in ("modalities", "labels", "regions", "et_label")}
    return common, entries, split_cases(list(entries), settings)


def _training_datalist(
    settings: BenchmarkSettings,
    parts: tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, list]],
    regime: str | None,
) -> None:
    """Write :func:`~kd_lab.benchmark.plan.training_datalist` of the teachers (``regime`` None) or of a regime, from
    :func:`_datalist_parts`: labelled training cases = fold 1, validation = fold 0; ``testing``: a regime's unlabelled
    scans without labels (none for the teachers, which never read them)."""
    common, entries, roles = parts
    labelled = roles["teacher"] if regime is None else student_cases(roles, settings, regime)
    scans = [{k: v for k, v in entries[c].items() if k in ("case_id", "image")} for c in roles["unlabelled"]]
    save_json_atomic(
        common
        | {
            "name": f"benchmark, {regime or 'teacher'}",
            "roles": (roles if regime else {"validation": roles["validation"]}) | {"labelled": labelled},
            "training": [entries[c] | {"fold": 1} for c in labelled]
            + [entries[c] | {"fold": 0} for c in roles["validation"]],
            "testing": scans if regime else [],
        },
        training_datalist(settings, regime),
    )


def write_teacher_datalist(settings: BenchmarkSettings) -> None:
    """The teachers' training datalist: every labelled training case and the validation cases. Its own stage, so
    that a change of the students' split does not retrain them."""
    _training_datalist(settings, _datalist_parts(settings), None)


def write_datalists(settings: BenchmarkSettings) -> None:
    """Each regime's training datalist and ``test_datalist.json`` (the test cases as fold 0)."""
    parts = _datalist_parts(settings)
    for regime in REGIMES:
        _training_datalist(settings, parts, regime)
    common, entries, roles = parts
    test = [entries[c] | {"fold": 0} for c in roles["test"]]
    save_json_atomic(
        common | {"name": "benchmark test set", "training": test, "testing": []}, held_out_datalist(settings)
    )


def benchmark_stages(settings: BenchmarkSettings) -> list[Stage]:
    """Data, datalists, then the teachers of every seed, then per seed and regime each student row; every run
    trained, tested on the held-out cases and probed."""
    out = settings.output_dir
    data = out / "data"
    stages = [
        Stage(
            "phantoms",
            command=brats_kd_command(
                "phantoms",
                *("--output-dir", str(data), "--num-cases", str(settings.num_cases)),
                *("--seed", str(settings.data_seed), "--profile", "small", "--preview"),
            ),
            outputs=(data / "preview.png",),
            owned_dirs=(data,),
            description=f"{settings.num_cases} phantom cases (seed {settings.data_seed}) -> {data}",
        ),
        Stage(
            "teacher_datalist",
            action=lambda: write_teacher_datalist(settings),
            outputs=(training_datalist(settings, None),),
            depends_on=("phantoms",),
            params={k: getattr(settings, k) for k in ("data_seed", "teacher_labelled", "validation")},
            description="validating every case; the teachers' datalist",
        ),
        Stage(
            "datalists",
            action=lambda: write_datalists(settings),
            outputs=(*(training_datalist(settings, r) for r in REGIMES), held_out_datalist(settings)),
            depends_on=("phantoms",),
            params={
                k: getattr(settings, k)
                for k in ("data_seed", "teacher_labelled", "labelled", "validation", "unlabelled", "test")
            },
            description="each regime's datalist and the held-out test datalist",
        ),
    ]
    common = ["--dataset_dir", str(data), "--batch_size", str(settings.batch_size)]
    rows = selected_rows(settings)
    teachers = [r for r in rows if r.kind == "teacher"]
    students = [r for r in rows if r.kind != "teacher"]
    # the teachers first (every student needs one), then seed by seed and regime by regime every student row
    runs: list[tuple[Row, int, str | None]] = [(t, seed, None) for t in teachers for seed in settings.teacher_seeds]
    runs += [(r, s, regime) for s in settings.seeds for regime in settings.regimes for r in students]
    for row, seed, regime in runs:
        folder = run_dir(settings, row, seed, regime)
        bundle = TEACHER_BUNDLE if row.kind == "teacher" else STUDENT_BUNDLE
        epochs, val_interval, per_epoch = row_schedule(settings, row, regime)
        args = [*common, "--seed", str(seed), *row.overrides, "--ckpt_dir", str(folder / "models")]
        train_args = [
            *args,
            *("--preprocessed_dir", str(out / "preprocessed")),  # one store for every row and seed
            *("--data_list_file_path", str(training_datalist(settings, regime))),
            *("--epochs", str(epochs), "--val_interval", str(val_interval)),
        ]
        deps: tuple[str, ...] = ("teacher_datalist",) if row.kind == "teacher" else ("datalists",)
        if row.kind == "student":
            teacher_seed = teacher_seed_for(settings, seed)
            teacher = ROWS_BY_KEY[row.teacher]
            train_args += ["--teacher_ckpt", str(run_dir(settings, teacher, teacher_seed) / "models" / "model.pt")]
            deps += (f"{run_name(teacher, teacher_seed)}_train",)
        name = run_name(row, seed, regime)
        where = f"{row.label}, seed {seed}" + (f", {regime} regime" if regime else "")
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
                description=f"{where}: {epochs} epochs x {per_epoch} batches",
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
                    *("--data_list_file_path", str(held_out_datalist(settings)), "--fold", "0"),
                    "--output_dir",
                    str(folder / "test"),
                ),
                inputs=config_files(bundle, ("train.json", "demo.json", "evaluate.json")),
                outputs=(
                    folder / "test" / "metrics.csv",
                    *(folder / "test" / f"{m}_raw.csv" for m in METRICS),
                    *(folder / "test" / f for f in BRATS_FILES.values()),
                ),
                owned_dirs=(folder / "test",),
                depends_on=(f"{name}_train", "datalists"),
                description=f"{where}: Dice and HD95 on the {settings.test} test cases",
            ),
        )
        if settings.probe_cases:
            stages.append(
                Stage(
                    f"{name}_probe",
                    action=lambda row=row, seed=seed, regime=regime: probe_run(settings, row, seed, regime),
                    params={"probe_cases": settings.probe_cases, "overrides": list(row.overrides)},
                    inputs=config_files(bundle, ("inference.json", "demo.json")),
                    outputs=(folder / "probe" / "probe.json",),
                    owned_dirs=(folder / "probe",),
                    depends_on=(f"{name}_train",),
                    description=f"{where}: {settings.probe_cases} healthy and unseen-seed phantoms",
                ),
            )
    return stages


def probe_run(settings: BenchmarkSettings, row: Row, seed: int, regime: str | None = None) -> None:
    """The false-positive probe of one trained run (:func:`kd_components.evaluation.false_positives.measure`, with
    the bundle's ``inference.json``, its demo overlay and the row's overrides) -> ``<run>/probe/probe.json``."""
    from kd_components.evaluation.false_positives import make_probe_data, measure
    from kd_components.segment import Segmenter

    bundle = TEACHER_BUNDLE if row.kind == "teacher" else STUDENT_BUNDLE
    folder = run_dir(settings, row, seed, regime)
    overlay = json.loads((bundle / "configs" / "demo.json").read_text())
    segmenter = Segmenter(
        bundle, folder / "models" / "model.pt", overrides=overlay | cli_overrides(row.overrides), log=lambda line: None
    )
    folders = make_probe_data(settings.output_dir / "probe_data", settings.probe_cases)
    save_json_atomic(measure(segmenter, folders), folder / "probe" / "probe.json")


def run_benchmark(
    settings: BenchmarkSettings, fresh: bool = False, timing: bool = True, command: str = ""
) -> dict[str, Any]:
    """Train and test every row for every seed and regime (restartable; ``settings.jobs`` stages at a time), measure
    inference cost, return everything (also saved as ``OUTPUT_DIR/results.json``, with ``command``, the command line
    that ran it): ``regimes`` maps each regime to its rows (:func:`collect_results`)."""
    runner = StageRunner(settings.output_dir / ".stages", fresh=fresh)
    estimate = estimate_seconds(settings)["total"]
    print(f"[benchmark] a fresh run takes about {estimate / 3600:.1f} h on 2 CPU cores (finished stages are reused)")
    if settings.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:  # share the cores between the parallel stages
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // settings.jobs))
    runner.run_all(benchmark_stages(settings), jobs=settings.jobs)
    results = {
        "command": command,
        "settings": jsonable(asdict(settings)),
        "regimes": {regime: collect_results(settings, regime) for regime in settings.regimes},
    }
    results["estimate_seconds"] = estimate_seconds(settings)
    results["environment"] = environment(settings.jobs)
    networks = [row["network"] for rows in results["regimes"].values() for row in rows.values()]
    results["sizes"] = network_sizes(networks, settings.timing_roi)
    cost_path = settings.output_dir / "inference_cost.json"
    if timing:
        measure_costs(settings)
    results["cost"] = json.loads(cost_path.read_text()) if cost_path.exists() else []
    results["finished"] = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}"
    results["stage_seconds"] = runner.timings
    results["stage_seconds_recorded"] = runner.recorded
    save_json_atomic(jsonable(results), settings.output_dir / "results.json", indent=RESULTS_INDENT)
    return results


def regime_results(results: dict[str, Any], regime: str) -> dict[str, Any]:
    """The view of ``results`` that one regime's page shows: its rows as ``rows`` and its name as ``regime``."""
    return results | {"rows": results["regimes"][regime], "regime": regime}


def regime_rows(results: dict[str, Any], regime: str | None = None) -> dict[str, Any]:
    """The rows of ``regime`` in a ``results.json`` (``regime`` None: its only regime), or the rows of a results.json
    made before the regimes (``rows``, the teacher trained on the students' labelled cases)."""
    if "regimes" not in results:
        return results["rows"]
    if regime is None:
        if len(results["regimes"]) != 1:
            raise ValueError(f"the results hold the regimes {sorted(results['regimes'])}: name one")
        (regime,) = results["regimes"]
    return results["regimes"][regime]
