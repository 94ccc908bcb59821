"""The benchmark's pure parts: case roles, step budgets, stage plan, teacher pairing, cost estimate, per-case
statistics in results.json, and the generated page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kd_components.constants import REGIONS
from kd_components.evaluation.lesions import RegionScores, case_row, write_case_table
from kd_components.networks.student import build_student
from kd_lab.benchmark import (
    BRANCH_ROWS,
    BRATS_METRICS,
    GUIDANCE_SECONDS,
    METRICS,
    ROW_SETS,
    ROWS,
    ROWS_BY_KEY,
    BenchmarkSettings,
    add_statistics,
    benchmark_stages,
    cli_overrides,
    collect_results,
    estimate_seconds,
    expand_rows,
    network_sizes,
    row_schedule,
    run_dir,
    schedule,
    selected_rows,
    split_cases,
    teacher_seed_for,
)
from kd_lab.results import plot_dice_vs_time, plot_region_bars, render_results
from kd_lab.statistics import Interval


def test_split_cases_is_disjoint_and_ordered() -> None:
    settings = BenchmarkSettings(labelled=3, validation=1, unlabelled=4, test=2)
    ids = [f"BraTS-SYN-{i:05d}-000" for i in reversed(range(10))]
    roles = split_cases(ids, settings)
    assert [len(roles[k]) for k in ("labelled", "validation", "unlabelled", "test")] == [3, 1, 4, 2]
    assert [c for k in ("labelled", "validation", "unlabelled", "test") for c in roles[k]] == sorted(ids)
    with pytest.raises(ValueError, match="needs 10 cases, found 9"):
        split_cases(ids[:9], settings)


@pytest.mark.parametrize(("steps", "per_epoch", "validations"), [(72, 3, 4), (72, 9, 4), (120, 3, 4), (10, 3, 4)])
def test_schedule_validates_the_last_epoch_and_meets_the_budget(steps: int, per_epoch: int, validations: int) -> None:
    epochs, interval = schedule(steps, per_epoch, validations)
    assert epochs % interval == 0
    assert epochs * per_epoch >= steps
    assert (epochs - interval) * per_epoch < steps  # never a whole validation period more than asked


def test_every_student_row_gets_the_same_steps_by_default() -> None:
    settings = BenchmarkSettings()
    steps = {r.key: (lambda e, _i, b: e * b)(*row_schedule(settings, r)) for r in ROWS if r.kind != "teacher"}
    assert set(steps.values()) == {settings.student_steps}, steps
    rows = {r.key: r for r in ROWS}
    epochs = {key: row_schedule(settings, rows[key])[0] for key in ("labels_only", "soft_feature_paired")}
    # paired: every step also takes an unlabelled batch, so the epochs (labelled batches seen) are the same
    assert epochs["labels_only"] == epochs["soft_feature_paired"]
    assert row_schedule(settings, rows["soft_feature_unlabelled"])[0] < epochs["labels_only"]


def test_stage_plan_chains_students_to_their_seed_teacher(tmp_path: Path) -> None:
    settings = BenchmarkSettings(output_dir=tmp_path, seeds=(0, 1), teacher_seeds=(0, 1), rows=("labels_only", "soft"))
    stages = {s.name: s for s in benchmark_stages(settings)}
    assert "teacher_seed1_train" in stages and "segresnet16_seed0_train" not in stages
    soft = stages["soft_seed1_train"]
    assert "teacher_seed1_train" in soft.depends_on
    assert str(tmp_path / "runs" / "teacher_seed1" / "models" / "model.pt") in soft.command
    assert "teacher_seed0_train" not in stages["labels_only_seed0_train"].depends_on  # no teacher needed
    test = stages["soft_seed1_test"].command
    assert str(tmp_path / "test_datalist.json") in test and "evaluate.json" in " ".join(test)


def test_every_run_is_probed_after_its_training_with_its_overrides(tmp_path: Path) -> None:
    settings = BenchmarkSettings(output_dir=tmp_path, seeds=(0,), teacher_seeds=(0,), rows=("segresnet16",))
    stages = {s.name: s for s in benchmark_stages(settings)}
    probe = stages["segresnet16_seed0_probe"]
    assert probe.depends_on == ("segresnet16_seed0_train",) and probe.action is not None
    segresnet = next(r for r in ROWS if r.key == "segresnet16")
    assert probe.outputs == (run_dir(settings, segresnet, 0) / "probe" / "probe.json",)
    assert "teacher_seed0_probe" in stages
    overrides = cli_overrides(segresnet.overrides)
    assert overrides["network_def#init_filters"] == 16 and overrides["alpha"] == 0
    assert overrides["network_def#_target_"] == "kd_components.networks.student.build_segresnet_student"
    assert not any(n.endswith("_probe") for n in (s.name for s in benchmark_stages(BenchmarkSettings(probe_cases=0))))
    with pytest.raises(ValueError, match="--key value"):
        cli_overrides(["--alpha"])


def test_students_are_paired_with_teachers_round_robin(tmp_path: Path) -> None:
    settings = BenchmarkSettings(output_dir=tmp_path)
    assert (len(settings.seeds), len(settings.teacher_seeds), settings.test) == (5, 2, 24)  # the regime's defaults
    assert [teacher_seed_for(settings, s) for s in settings.seeds] == [0, 1, 0, 1, 0]
    stages = {s.name: s for s in benchmark_stages(settings)}
    names = list(stages)
    assert [n for n in names if n.startswith("teacher_") and n.endswith("_train")] == [
        "teacher_seed0_train",
        "teacher_seed1_train",
    ]
    assert names.index("teacher_seed1_test") < names.index("labels_only_seed0_train")  # every teacher comes first
    assert "teacher_seed1_train" in stages["soft_seed3_train"].depends_on
    assert "teacher_seed0_train" in stages["soft_feature_paired_seed4_train"].depends_on
    assert "soft_feature_unlabelled_seed0_train" not in stages  # interleaved: not a default row (``--rows``)
    # teacher seeds need not be student seeds
    other = BenchmarkSettings(output_dir=tmp_path, seeds=(0, 1), teacher_seeds=(7,), rows=("soft",))
    plan = [s.name for s in benchmark_stages(other)]
    assert plan.index("teacher_seed7_train") < plan.index("soft_seed0_train")


def test_last_checkpoint_rule_validates_once_after_the_last_epoch(tmp_path: Path) -> None:
    settings = BenchmarkSettings(output_dir=tmp_path)
    assert settings.selection == "last" and settings.validations_per_run == 1
    rows = {r.key: r for r in ROWS}
    epochs, interval, _ = row_schedule(settings, rows["labels_only"])
    assert interval == epochs  # one validation, at the end: model.pt holds the last weights
    best = BenchmarkSettings(output_dir=tmp_path, selection="best", validations=4)
    epochs, interval, _ = row_schedule(best, rows["labels_only"])
    assert epochs // interval == 4
    with pytest.raises(ValueError, match="selection"):
        BenchmarkSettings(selection="first")
    with pytest.raises(ValueError, match="repeat"):
        BenchmarkSettings(seeds=(0, 0))


def test_the_default_regime_fits_about_an_hour_and_a_quarter_on_two_cores() -> None:
    estimate = estimate_seconds(BenchmarkSettings())
    assert estimate["total"] == pytest.approx(sum(v for k, v in estimate.items() if k != "total"))
    assert 1 * 3600 < estimate["total"] <= 1.5 * 3600
    old = estimate_seconds(BenchmarkSettings(test=8, seeds=(0, 1, 2), teacher_seeds=(0,), selection="best"))
    assert old["total"] < 0.6 * estimate["total"]
    # the teacher segments the 12 unlabelled scans once per teacher for the teacher-guided rows
    unguided = BenchmarkSettings(rows=("labels_only", "soft_feature_paired"))
    guided = BenchmarkSettings(rows=("labels_only", "soft_feature_paired", "guided_paired"))
    paired = (
        estimate_seconds(unguided)["training"] - estimate_seconds(BenchmarkSettings(rows=("labels_only",)))["training"]
    )
    extra = estimate_seconds(guided)["training"] - estimate_seconds(unguided)["training"]
    assert extra == pytest.approx(paired + 2 * 12 * GUIDANCE_SECONDS)  # its own runs, as the paired row's, + masks
    assert estimate_seconds(BenchmarkSettings(probe_cases=0))["testing"] < estimate["testing"]


def test_one_shared_teacher_when_one_teacher_seed(tmp_path: Path) -> None:
    rows = tuple(r.key for r in ROWS if r.key not in BRANCH_ROWS)
    settings = BenchmarkSettings(output_dir=tmp_path, seeds=(0, 1, 2), teacher_seeds=(0,), rows=rows)
    stages = {s.name: s for s in benchmark_stages(settings)}
    assert [n for n in stages if n.startswith("teacher_") and n.endswith("_train")] == ["teacher_seed0_train"]
    assert "teacher_seed0_train" in stages["soft_feature_unlabelled_seed2_train"].depends_on
    assert "--use_unlabelled" in stages["soft_feature_unlabelled_seed2_train"].command
    paired = stages["soft_feature_paired_seed1_train"].command
    assert paired[paired.index("--unlabelled_mixing") + 1] == "paired"


_CASES = [f"BraTS-SYN-{i:05d}-000" for i in range(4)]


def _row(kind: str, network: str, dice: float, seeds: tuple[int, ...] = (0, 1)) -> dict:
    """A row as collect_results builds it, with the same score ``dice`` on every (seed, test case) (the BraTS
    scores after post-processing: ``dice`` + 0.05), and a false-positive probe per seed."""
    per_case = {"cases": _CASES} | {m: [[dice] * len(_CASES) for _ in seeds] for m in METRICS}
    for metric in BRATS_METRICS:
        value = dice + 0.05 if metric.startswith("post_") else dice
        per_case[metric] = [[value] * len(_CASES) for _ in seeds]
    std = 0.0 if len(seeds) > 1 else None
    summary = {
        k: {"mean": dice, "std": std, "values": [dice] * len(seeds), "case_means": [dice] * len(seeds)} for k in METRICS
    }
    row = {"label": f"{kind} {network}", "kind": kind, "network": network, "steps": 72, "summary": summary}
    unseen = dict.fromkeys(REGIONS, dice)
    probe = [
        {"healthy_wt_ml_mean": 10.0 * (1 + i), "healthy_wt_ml_max": 30.0, "unseen_dice_mean": unseen}
        for i, _ in enumerate(seeds)
    ]
    return row | {"seeds": list(seeds), "per_case": per_case, "probe": probe}


def _results() -> dict:
    rows = {
        "teacher": _row("teacher", "demo", 0.8, seeds=(0,)),
        "labels_only": _row("baseline", "student", 0.4),
        "soft": _row("student", "student", 0.7),
    }
    cost = [
        {
            "network": n,
            "params": p,
            "gflops_patch": 1.0,
            "inference_s": t,
            "peak_rss_gib": 1.0,
            "baseline_rss_gib": 0.5,
            "load": [1.0, 1.0],
            "threads": 2,
        }
        for n, p, t in (("default", 178_000_000, 100.0), ("demo", 4_000_000, 10.0), ("student", 1_000_000, 2.0))
    ]
    settings = BenchmarkSettings(seeds=(0, 1), teacher_seeds=(0,), student_steps=72)
    return {
        "settings": {
            "data_seed": 1,
            "labelled": settings.labelled,
            "validation": 2,
            "unlabelled": 12,
            "test": len(_CASES),
            "seeds": [0, 1],
            "teacher_seeds": [0],
            "teacher_steps": 120,
            "student_steps": 72,
            "selection": "last",
            "batch_size": 2,
            "bootstrap_resamples": 1000,
            "bootstrap_seed": 0,
            "timing_roi": 96,
            "timing_overlap": 0.25,
            "timing_shape": [240, 240, 155],
            "probe_cases": 3,
        },
        "rows": add_statistics(rows, resamples=1000, seed=0),
        "cost": cost,
        "estimate_seconds": estimate_seconds(settings),
        "stage_seconds": {"a": 61.0, "b": 0.0},
        "stage_seconds_recorded": {"a": 61.0, "b": 120.0},
    }


def test_statistics_of_each_row() -> None:
    rows = _results()["rows"]
    soft = rows["soft"]["statistics"]["val_mean_dice"]
    assert Interval.from_dict(soft["mean"]).estimate == pytest.approx(0.7)
    assert Interval.from_dict(soft["difference"]).estimate == pytest.approx(0.3)
    assert Interval.from_dict(soft["gap_closed"]).estimate == pytest.approx(0.75)
    # no difference or gap for the label-only student itself or the teacher (not trained on the student seeds)
    for key in ("labels_only", "teacher"):
        assert rows[key]["statistics"]["val_mean_dice"]["difference"] is None
        assert rows[key]["statistics"]["val_mean_dice"]["gap_closed"] is None


def _write_evaluation(folder: Path, values: np.ndarray) -> None:
    """What evaluate.json's MetricsSaver writes for ``values`` (cases x regions TC, WT, ET), with MONAI's writer."""
    from monai.handlers.utils import write_metrics_reports

    details = {f"val_dice_{r}": values[:, i : i + 1] for i, r in enumerate(("tc", "wt", "et"))}
    details |= {f"val_hd95_{r}": 10 * values[:, i : i + 1] for i, r in enumerate(("tc", "wt", "et"))}
    details["val_mean_dice"] = values
    metrics = {k: float(np.nanmean(v)) for k, v in details.items()}
    folder.mkdir(parents=True)
    write_metrics_reports(folder, _CASES, metrics, details, summary_ops=None)


def _write_brats_scores(folder: Path, lesion_dice: float) -> None:
    """``brats_metrics.csv`` (matched-lesion Dice ``lesion_dice`` in TC and WT, 0 in ET, two false-positive WT
    lesions) and
    ``brats_metrics_post.csv`` (the same without the false positives), as CaseScoresWriter writes them."""
    for filename, fp in (("brats_metrics.csv", 2), ("brats_metrics_post.csv", 0)):
        scores = {r: RegionScores(0.7, 5.0, 0.5, lesion_dice, 5.0, 0.5, 1, fp, 0) for r in ("TC", "WT")}
        scores["ET"] = RegionScores(0.0, 373.13, 0.0, 0.0, 373.13, 0.0, 0, 0, 1)
        write_case_table([case_row(c, scores) for c in reversed(_CASES)], folder / filename)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")  # MONAI's writer, on the case without ET
def test_collect_results_reads_per_case_scores_in_datalist_order(tmp_path: Path) -> None:
    settings = BenchmarkSettings(
        output_dir=tmp_path, seeds=(0, 1), teacher_seeds=(0,), rows=("labels_only", "soft"), bootstrap_resamples=500
    )
    datalist = {"training": [{"case_id": c} for c in _CASES]}
    (tmp_path / "test_datalist.json").write_text(json.dumps(datalist))
    rng = np.random.default_rng(0)
    base = {s: rng.uniform(0.3, 0.6, size=(len(_CASES), 3)) for s in (0, 1)}
    for s in (0, 1):
        base[s][2, 2] = np.nan  # case 2 has no ET in its ground truth
        _write_evaluation(run_dir(settings, ROWS_BY_KEY["labels_only"], s) / "test", base[s])
        _write_evaluation(run_dir(settings, ROWS_BY_KEY["soft"], s) / "test", base[s] + 0.1)
    _write_evaluation(run_dir(settings, ROWS[0], 0) / "test", np.full((len(_CASES), 3), 0.9))
    students = (ROWS_BY_KEY["labels_only"], ROWS_BY_KEY["soft"])
    for row, seed in [(ROWS[0], 0), *((r, s) for r in students for s in (0, 1))]:
        _write_brats_scores(run_dir(settings, row, seed) / "test", lesion_dice=0.5 + 0.1 * seed)
        probe = {"healthy_wt_ml_mean": 1.0 + seed, "healthy_wt_ml_max": 2.0, "unseen_dice_mean": {}}
        (run_dir(settings, row, seed) / "probe").mkdir()
        (run_dir(settings, row, seed) / "probe" / "probe.json").write_text(json.dumps(probe))
    rows = collect_results(settings)
    assert [p["healthy_wt_ml_mean"] for p in rows["soft"]["probe"]] == [1.0, 2.0]
    # BraTS scores: per case and region from brats_metrics.csv, the mean over the regions, the post-processed ones
    assert rows["soft"]["per_case"]["brats_matched_lesion_dice_wt"][1] == pytest.approx([0.6] * len(_CASES))
    # the ranking form counts the two false-positive WT lesions: 0.6 x 1 / (1 + 2)
    assert rows["soft"]["per_case"]["brats_ranking_lesion_dice_wt"][1] == pytest.approx([0.2] * len(_CASES))
    assert rows["soft"]["per_case"]["brats_matched_lesion_dice_mean"][0] == pytest.approx([(0.5 + 0.5 + 0.0) / 3] * 4)
    assert rows["soft"]["per_case"]["post_brats_fp_wt"][0] == [0.0] * len(_CASES)
    effect = rows["soft"]["statistics"]["post_brats_fp_wt"]["postprocessing_effect"]
    assert effect["estimate"] == pytest.approx(-2.0)
    assert rows["soft"]["statistics"]["brats_ranking_lesion_dice_et"]["difference"]["estimate"] == pytest.approx(0.0)
    assert list(rows) == ["teacher", "labels_only", "soft"]
    soft = rows["soft"]
    assert soft["per_case"]["cases"] == _CASES and soft["teacher_seeds"] == [0, 0]
    np.testing.assert_allclose(soft["per_case"]["val_dice_tc"], [base[s][:, 0] + 0.1 for s in (0, 1)], atol=1e-4)
    assert np.isnan(soft["per_case"]["val_dice_et"][1][2])
    et = soft["statistics"]["val_dice_et"]
    assert et["mean"]["estimate"] == pytest.approx(np.nanmean([base[s][:, 2] + 0.1 for s in (0, 1)]), abs=1e-4)
    assert et["difference"]["estimate"] == pytest.approx(0.1, abs=1e-4)
    assert et["difference"]["high"] - et["difference"]["low"] < 1e-3  # the same shift on every case: exact
    mean_dice = np.nanmean(base[0] + 0.1, axis=1)  # per case: the mean over the regions present
    np.testing.assert_allclose(soft["per_case"]["val_mean_dice"][0], mean_dice, atol=1e-4)
    assert soft["summary"]["val_mean_dice"]["case_means"][0] == pytest.approx(mean_dice.mean(), abs=1e-4)
    gap = soft["statistics"]["val_mean_dice"]["gap_closed"]["estimate"]
    base_mean = np.mean([np.nanmean(base[s], axis=1) for s in (0, 1)])
    assert gap == pytest.approx(0.1 / (0.9 - base_mean), abs=1e-3)


def test_results_page_and_plots(tmp_path: Path) -> None:
    results = _results()
    plot_dice_vs_time(results, tmp_path / "a.png")
    plot_region_bars(results, tmp_path / "b.png")
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0
    page = render_results(results, "python scripts/benchmark_kd.py", {"dice_vs_time": "a.png", "regions": "b.png"})
    assert "| student student | 72 | 1,000,000 |" in page
    assert "0.700 [0.700, 0.700]" in page  # mean [95 % interval]
    assert "| student student | 0.700 [0.700, 0.700] | 0.300 [0.300, 0.300] | 75 % [75, 75] | 2 of 2 |" in page
    assert "| teacher demo | 0.800 |  |" in page  # per-seed table: no value for seed 1
    assert "student seed -> teacher seed: 0 -> 0, 1 -> 0" in page
    assert "4 held-out labelled test cases" in page and "the weights after the last epoch" in page
    assert "**Determinism.**" in page and "floating-point" in page
    assert "1,000 resamples" in page and "**Cost and commands.** A fresh run of this regime is estimated at" in page
    assert "as recorded when each ran: 3 min 01 s; of the stages this invocation ran: 1 min 01 s." in page
    assert "50.0x faster" in page  # student 2 s against the default teacher's 100 s
    assert "![Dice vs inference time](a.png)" in page
    # BraTS challenge metrics, the lesion-wise comparison, the post-processing effect, the false-positive probe
    assert "## BraTS challenge metrics" in page
    assert "## Against the label-only student (mean lesion-wise Dice, 2023 ranking form;" in page
    assert "| student student | 0.750 [0.750, 0.750] | +0.050 [+0.050, +0.050] |" in page
    assert "| student student | 15.0 (10.0-20.0) | 30.0 | 0.700 (0.700-0.700) |" in page
    assert "| teacher demo | 10.0 | 30.0 | 0.800 |" in page


def test_page_without_timing_still_has_sizes_and_says_cost_was_not_measured(tmp_path: Path) -> None:
    results = {**_results(), "cost": [], "sizes": network_sizes(["student"], 32)}
    assert results["sizes"]["student"]["params"] == sum(p.numel() for p in build_student().parameters())
    assert results["sizes"]["student"]["gflops_patch"] > 0
    page = render_results(results, "python scripts/benchmark_kd.py --no-timing", {"regions": "b.png"})
    params = f"{results['sizes']['student']['params']:,}"
    assert f"| student student | 72 | {params} |" in page  # sizes are counted, not timed
    assert "*Not measured*: this page was made with `--no-timing`" in page and "| network |" not in page
    assert "Dice vs inference time" not in page


def test_page_names_where_the_stages_ran_and_where_the_cost_was_measured(tmp_path: Path) -> None:
    results = _results()
    for entry in results["cost"]:
        entry["cpu"] = "Some CPU, 2 cores"
    gpu_run = {"cpu": "Big CPU, 16 cores", "gpu": "NVIDIA H200", "python": "3.12.3", "torch": "2.11.0"}
    results |= {"environment": gpu_run | {"jobs": 10}, "finished": "2026-01-02 03:04"}
    page = render_results(results, "python scripts/benchmark_kd.py --jobs 10", {"regions": "b.png"})
    assert "- Trainings and evaluations: CPU Big CPU, 16 cores; GPU: NVIDIA H200" in page
    assert "10 stage(s) at a time" in page and "torch 2.11.0" in page
    assert "## Inference cost on the CPU (Some CPU, 2 cores, torch threads: 2)" in page
    assert "(run finished on 2026-01-02 03:04 UTC)" in page and "not deterministic" in page
    cpu_run = {**_results(), "environment": gpu_run | {"gpu": None, "jobs": 1}}
    page = render_results(cpu_run, "python scripts/benchmark_kd.py", {"regions": "b.png"})
    assert "; no GPU; 1 stage(s) at a time" in page and "not deterministic" not in page


def test_render_from_a_saved_results_file_keeps_its_command(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_kd", Path(__file__).parents[1] / "scripts/benchmark_kd.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = _results() | {"command": "python scripts/benchmark_kd.py --jobs 4"}
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(results))
    notes = tmp_path / "notes.md"
    notes.write_text("These are the notes.")
    page = tmp_path / "docs" / "page.md"
    assert script.main(["--render-from", str(saved), "--notes", str(notes), "--results-md", str(page)]) == 0
    text = page.read_text()
    assert "Generated by `python scripts/benchmark_kd.py --jobs 4`" in text and text.rstrip().endswith("notes.")
    assert (tmp_path / "docs" / "img" / "page_regions.png").exists()
    # a run made elsewhere without the cost table, and the table of a CPU --timing-only run carried into it
    measured = results["cost"]
    saved.write_text(json.dumps(results | {"cost": []}))
    assert script.main(["--render-from", str(saved), "--results-md", str(page)]) == 0
    assert "*Not measured*" in page.read_text()
    cost_file = tmp_path / "inference_cost.json"
    cost_file.write_text(json.dumps(measured))
    assert script.main(["--render-from", str(saved), "--cost-from", str(cost_file), "--results-md", str(page)]) == 0
    assert json.loads(saved.read_text())["cost"] == measured  # the file holds what the page shows
    assert "| student | 1,000,000 |" in page.read_text().split("## Inference cost")[1]


def test_branch_rows_train_their_own_teacher_and_name_their_features(tmp_path: Path) -> None:
    assert not set(BRANCH_ROWS) & set(BenchmarkSettings().rows)  # not in the default comparison
    settings = BenchmarkSettings(
        output_dir=tmp_path, seeds=(0, 1), rows=("soft_feature_from_vit", "features_fused_vit")
    )
    stages = {s.name: s for s in benchmark_stages(settings)}
    # the ViT-only teacher is pulled in by its student; the hybrid is always there; the VGG-only one is not
    assert {"teacher_seed0_train", "teacher_vit_seed1_train"} <= set(stages) and "teacher_cnn_seed0_train" not in stages
    teacher = stages["teacher_vit_seed1_train"].command
    assert teacher[teacher.index("--teacher_config") + 1] == "demo_vit"
    student = stages["soft_feature_from_vit_seed1_train"]
    assert "teacher_vit_seed1_train" in student.depends_on
    command = student.command
    assert command[command.index("--teacher_config") + 1] == "demo_vit"
    assert command[command.index("--teacher_ckpt") + 1] == str(tmp_path / "runs/teacher_vit_seed1/models/model.pt")
    sources = cli_overrides(ROWS_BY_KEY["features_fused_vit"].overrides)["feature_sources"]
    assert sources == ["fused", "vit"]
    assert "teacher_seed0_train" in stages["features_fused_vit_seed0_train"].depends_on  # the hybrid's features


def _diagnostics(weights: list[float], ablation: bool) -> dict:
    record = {"scale_weights": [{"epoch": 1, "weights": [0.25] * 4}, {"epoch": 9, "weights": weights}]}
    record["gates"] = [{"epoch": 9, "scales": [{"mean": m} for m in (0.9, 0.7, 0.5, 0.3)]}] if ablation else []
    record["ablation"] = {"dice": {"full": [0.8] * 4, "vit": [0.7] * 4, "cnn": [0.2] * 4}} if ablation else None
    return record


def test_page_compares_the_branches_paired_and_shows_the_diagnostics(tmp_path: Path) -> None:
    results = _results()
    rows = results["rows"]
    rows["teacher"]["branch_diagnostics"] = [_diagnostics([0.4, 0.3, 0.2, 0.1], ablation=True)]
    rows["teacher_cnn"] = _row("teacher", "demo_cnn", 0.7, seeds=(0,)) | {
        "branch_diagnostics": [_diagnostics([0.1, 0.2, 0.3, 0.4], ablation=False)]
    }
    rows["soft_feature"] = _row("student", "student", 0.7)
    rows["soft_feature_from_cnn"] = _row("student", "student", 0.65) | {"teacher": "teacher_cnn"}
    rows["features_fused_vit"] = _row("student", "student", 0.72)
    results["rows"] = add_statistics(rows, resamples=1000, seed=0)
    from kd_lab.results_branches import plot_teacher_scale_weights

    assert plot_teacher_scale_weights(rows, tmp_path / "w.png").stat().st_size > 0
    figures = {"dice_vs_time": "a.png", "regions": "b.png", "scale_weights": "w.png"}
    page = render_results(results, "python scripts/benchmark_kd.py", figures)
    assert "![the fusion's scale weights over training](w.png)" in page
    assert "## Teacher branches: the hybrid against each branch alone" in page
    assert "| teacher demo_cnn | 0.700 [0.700, 0.700] | -0.100 [-0.100, -0.100] |" in page  # paired with the hybrid
    assert "| student student | 0.650 [0.650, 0.650] | -0.050 [-0.050, -0.050] |" in page  # with the hybrid's student
    assert "## Feature distillation from the branches" in page
    assert "| student student | 0.720 [0.720, 0.720] | +0.020 [+0.020, +0.020] |" in page
    assert "| teacher demo | 0.250 / 0.250 / 0.250 / 0.250 | 0.400 / 0.300 / 0.200 / 0.100 | " in page
    assert "0.900 / 0.700 / 0.500 / 0.300 | 0.800 | 0.700 | 0.200 |" in page
    assert (
        "| teacher demo_cnn | 0.250 / 0.250 / 0.250 / 0.250 | 0.100 / 0.200 / 0.300 / 0.400 | no gates | n/a |" in page
    )


def test_report_section_on_the_teachers_branches(tmp_path: Path) -> None:
    from kd_lab.results_branches import branch_report_section

    assert branch_report_section(tmp_path / "missing.json", tmp_path / "b.png") == ""  # no diagnostics, no section
    (tmp_path / "branch_diagnostics.json").write_text(json.dumps(_diagnostics([0.4, 0.3, 0.2, 0.1], ablation=True)))
    section = branch_report_section(tmp_path / "branch_diagnostics.json", tmp_path / "branches.png")
    assert (tmp_path / "branches.png").stat().st_size > 0 and "![scale weights and gates](branches.png)" in section
    assert "| hybrid teacher | 0.250 / 0.250 / 0.250 / 0.250 | 0.400 / 0.300 / 0.200 / 0.100 |" in section
    assert "| 0.800 | 0.700 | 0.200 |" in section


@pytest.mark.parametrize(("name", "page"), [("branches", "branches.json"), ("students", "students_kd.json")])
def test_a_row_set_is_the_rows_of_its_page(name: str, page: str) -> None:
    """``--rows branches`` / ``--rows students`` (the Makefile's targets) select exactly the rows the page holds (the
    page's run adds the hybrid teacher, which every run has)."""
    rows = json.loads((Path(__file__).parents[1] / "docs" / page).read_text())["rows"]
    assert set(rows) == {"teacher", *ROW_SETS[name]}
    selected = selected_rows(BenchmarkSettings(rows=expand_rows([name])))
    assert {r.key for r in selected} == set(rows)


def test_expand_rows_keeps_order_drops_repeats_and_names_an_unknown_row() -> None:
    assert expand_rows(["soft_feature", "students"])[:3] == ("soft_feature", "labels_only", "kd_segresnet8")
    with pytest.raises(ValueError, match="unknown row or row set 'nope'"):
        expand_rows(["nope"])
