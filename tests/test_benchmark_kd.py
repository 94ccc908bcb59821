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
    REGIMES,
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
    regime_results,
    row_schedule,
    run_dir,
    schedule,
    selected_rows,
    split_cases,
    student_cases,
    teacher_seed_for,
    training_datalist,
)
from kd_lab.benchmark.rows import DEFAULT_ROWS
from kd_lab.results import plot_dice_vs_time, plot_region_bars, render_results
from kd_lab.statistics import Interval


def test_split_cases_is_disjoint_and_ordered_and_the_regimes_take_the_teachers_cases() -> None:
    settings = BenchmarkSettings(teacher_labelled=5, labelled=3, validation=1, unlabelled=4, test=2)
    ids = [f"BraTS-SYN-{i:05d}-000" for i in reversed(range(12))]
    roles = split_cases(ids, settings)
    assert [len(roles[k]) for k in ("teacher", "validation", "unlabelled", "test")] == [5, 1, 4, 2]
    assert [c for k in ("teacher", "validation", "unlabelled", "test") for c in roles[k]] == sorted(ids)
    assert student_cases(roles, settings, "scarce") == roles["teacher"][:3]
    assert student_cases(roles, settings, "compression") == roles["teacher"]
    with pytest.raises(ValueError, match="needs 12 cases, found 11"):
        split_cases(ids[:11], settings)
    with pytest.raises(ValueError, match="teacher_labelled must be at least labelled"):
        BenchmarkSettings(teacher_labelled=2, labelled=3)
    with pytest.raises(ValueError, match="regimes"):
        BenchmarkSettings(regimes=("plenty",))
    with pytest.raises(ValueError, match="unlabelled scans need"):
        BenchmarkSettings(unlabelled=0, regimes=("compression",))  # the teacher-guided row reads them


def test_the_teachers_datalist_has_every_label_and_each_regime_its_own(tmp_path: Path) -> None:
    from kd_components.data.phantoms import make_phantom_dataset
    from kd_lab.benchmark.graph import write_datalists, write_teacher_datalist

    settings = BenchmarkSettings(
        output_dir=tmp_path, teacher_labelled=3, labelled=1, validation=1, unlabelled=1, test=1
    )
    make_phantom_dataset(tmp_path / "data", settings.num_cases, seed=3, progress=False, workers=1)
    write_teacher_datalist(settings)
    write_datalists(settings)
    ids = [f"BraTS-SYN-{i:05d}-000" for i in range(6)]

    def folds(regime: str | None) -> tuple[list[str], list[str], list[str]]:
        datalist = json.loads(training_datalist(settings, regime).read_text())
        train = [e["case_id"] for e in datalist["training"] if e["fold"] == 1]
        validation = [e["case_id"] for e in datalist["training"] if e["fold"] == 0]
        assert all("label" not in e for e in datalist["testing"])  # the unlabelled scans' labels are never listed
        return train, validation, [e["case_id"] for e in datalist["testing"]]

    assert folds(None) == (ids[:3], [ids[3]], [])  # a teacher never reads the unlabelled scans
    assert folds("scarce") == (ids[:1], [ids[3]], [ids[4]])
    assert folds("compression") == (ids[:3], [ids[3]], [ids[4]])
    test = json.loads((tmp_path / "test_datalist.json").read_text())["training"]
    assert [e["case_id"] for e in test] == [ids[5]]


@pytest.mark.parametrize(("steps", "per_epoch", "validations"), [(72, 3, 4), (72, 9, 4), (120, 3, 4), (10, 3, 4)])
def test_schedule_validates_the_last_epoch_and_meets_the_budget(steps: int, per_epoch: int, validations: int) -> None:
    epochs, interval = schedule(steps, per_epoch, validations)
    assert epochs % interval == 0
    assert epochs * per_epoch >= steps
    assert (epochs - interval) * per_epoch < steps  # never a whole validation period more than asked


@pytest.mark.parametrize("regime", REGIMES)
def test_every_student_row_gets_the_same_steps_in_each_regime(regime: str) -> None:
    settings = BenchmarkSettings()
    rows = [r for r in ROWS if r.kind != "teacher"]
    steps = {r.key: (lambda e, _i, b: e * b)(*row_schedule(settings, r, regime)) for r in rows}
    # the budget, rounded up to whole epochs (the interleaved row's epochs have unlabelled batches of their own)
    interleaved = steps.pop("soft_feature_unlabelled")
    assert (
        len(set(steps.values())) == 1 and settings.student_steps <= steps["labels_only"] < settings.student_steps + 24
    )
    assert settings.student_steps <= interleaved < settings.student_steps + 24 + settings.unlabelled // 2
    epochs = {key: row_schedule(settings, ROWS_BY_KEY[key], regime)[0] for key in ("labels_only", "guided_paired")}
    # paired: every step also takes an unlabelled batch, so the epochs (labelled batches seen) are the same
    assert epochs["labels_only"] == epochs["guided_paired"]
    assert row_schedule(settings, ROWS_BY_KEY["soft_feature_unlabelled"], regime)[0] < epochs["labels_only"]
    with pytest.raises(ValueError, match="regime"):
        row_schedule(settings, ROWS_BY_KEY["labels_only"])


def test_the_teacher_trains_ten_times_the_students_budget_on_every_label_and_shows_its_curve() -> None:
    settings = BenchmarkSettings()
    assert settings.teacher_labelled >= 48 and settings.teacher_labelled > settings.labelled
    epochs, interval, per_epoch = row_schedule(settings, ROWS_BY_KEY["teacher"])
    assert per_epoch == settings.teacher_labelled // settings.batch_size
    assert epochs * per_epoch >= 10 * settings.student_steps
    assert epochs // interval >= settings.teacher_validations > 1  # a validation curve, not one point


def test_stage_plan_chains_students_to_their_seed_teacher_in_each_regime(tmp_path: Path) -> None:
    settings = BenchmarkSettings(output_dir=tmp_path, seeds=(0, 1), teacher_seeds=(0, 1), rows=("labels_only", "soft"))
    stages = {s.name: s for s in benchmark_stages(settings)}
    assert "teacher_seed1_train" in stages and "scarce_segresnet16_seed0_train" not in stages
    # one teacher per seed, trained on the teachers' datalist, shared by both regimes
    teacher = stages["teacher_seed1_train"]
    assert teacher.depends_on == ("teacher_datalist",)
    assert str(training_datalist(settings, None)) in teacher.command
    for regime in REGIMES:
        soft = stages[f"{regime}_soft_seed1_train"]
        assert "teacher_seed1_train" in soft.depends_on
        assert str(tmp_path / "runs" / "teacher_seed1" / "models" / "model.pt") in soft.command
        assert str(training_datalist(settings, regime)) in soft.command
        assert str(run_dir(settings, ROWS_BY_KEY["soft"], 1, regime) / "models") in soft.command
        assert "teacher_seed0_train" not in stages[f"{regime}_labels_only_seed0_train"].depends_on  # no teacher
        test = stages[f"{regime}_soft_seed1_test"].command
        assert str(tmp_path / "test_datalist.json") in test and "evaluate.json" in " ".join(test)
    assert run_dir(settings, ROWS_BY_KEY["soft"], 1, "scarce") != run_dir(
        settings, ROWS_BY_KEY["soft"], 1, "compression"
    )
    only = BenchmarkSettings(output_dir=tmp_path, regimes=("compression",), rows=("labels_only",))
    assert not any(name.startswith("scarce_") for name in (s.name for s in benchmark_stages(only)))


def test_every_run_is_probed_after_its_training_with_its_overrides(tmp_path: Path) -> None:
    settings = BenchmarkSettings(
        output_dir=tmp_path, seeds=(0,), teacher_seeds=(0,), rows=("segresnet16",), regimes=("scarce",)
    )
    stages = {s.name: s for s in benchmark_stages(settings)}
    probe = stages["scarce_segresnet16_seed0_probe"]
    assert probe.depends_on == ("scarce_segresnet16_seed0_train",) and probe.action is not None
    segresnet = ROWS_BY_KEY["segresnet16"]
    assert probe.outputs == (run_dir(settings, segresnet, 0, "scarce") / "probe" / "probe.json",)
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
    assert names.index("teacher_seed1_test") < names.index("scarce_labels_only_seed0_train")  # teachers first
    assert "teacher_seed1_train" in stages["scarce_soft_seed3_train"].depends_on
    assert "teacher_seed0_train" in stages["compression_guided_paired_seed4_train"].depends_on
    assert "scarce_soft_feature_unlabelled_seed0_train" not in stages  # interleaved: not a default row (``--rows``)
    assert {n.split("_seed")[0].split("_", 1)[1] for n in names if n.startswith("scarce_")} == set(DEFAULT_ROWS)
    # teacher seeds need not be student seeds
    other = BenchmarkSettings(output_dir=tmp_path, seeds=(0, 1), teacher_seeds=(7,), rows=("soft",))
    plan = [s.name for s in benchmark_stages(other)]
    assert plan.index("teacher_seed7_train") < plan.index("scarce_soft_seed0_train")


def test_last_checkpoint_rule_validates_once_after_the_last_epoch(tmp_path: Path) -> None:
    settings = BenchmarkSettings(output_dir=tmp_path)
    assert settings.selection == "last" and settings.validations_per_run == 1
    epochs, interval, _ = row_schedule(settings, ROWS_BY_KEY["labels_only"], "scarce")
    assert interval == epochs  # one validation, at the end: model.pt holds the last weights
    best = BenchmarkSettings(output_dir=tmp_path, selection="best", validations=4)
    epochs, interval, _ = row_schedule(best, ROWS_BY_KEY["labels_only"], "scarce")
    assert epochs // interval == 4
    with pytest.raises(ValueError, match="selection"):
        BenchmarkSettings(selection="first")
    with pytest.raises(ValueError, match="repeat"):
        BenchmarkSettings(seeds=(0, 0))


def test_the_default_regime_is_estimated_at_a_few_hours_on_two_cores() -> None:
    estimate = estimate_seconds(BenchmarkSettings())
    assert estimate["total"] == pytest.approx(sum(v for k, v in estimate.items() if k != "total"))
    assert 2 * 3600 < estimate["total"] <= 4 * 3600
    one = estimate_seconds(BenchmarkSettings(regimes=("scarce",)))
    assert one["total"] < estimate["total"]
    # the teacher segments the unlabelled scans once per teacher for the teacher-guided rows, whatever the regimes
    unguided = BenchmarkSettings(rows=("labels_only", "soft_feature_paired"))
    guided = BenchmarkSettings(rows=("labels_only", "soft_feature_paired", "guided_paired"))
    paired = (
        estimate_seconds(unguided)["training"] - estimate_seconds(BenchmarkSettings(rows=("labels_only",)))["training"]
    )
    extra = estimate_seconds(guided)["training"] - estimate_seconds(unguided)["training"]
    assert extra == pytest.approx(paired + 2 * 24 * GUIDANCE_SECONDS)  # its own runs, as the paired row's, + masks
    assert estimate_seconds(BenchmarkSettings(probe_cases=0))["testing"] < estimate["testing"]


def test_one_shared_teacher_when_one_teacher_seed(tmp_path: Path) -> None:
    rows = tuple(r.key for r in ROWS if r.key not in BRANCH_ROWS)
    settings = BenchmarkSettings(output_dir=tmp_path, seeds=(0, 1, 2), teacher_seeds=(0,), rows=rows)
    stages = {s.name: s for s in benchmark_stages(settings)}
    assert [n for n in stages if n.startswith("teacher_") and n.endswith("_train")] == ["teacher_seed0_train"]
    assert "teacher_seed0_train" in stages["scarce_soft_feature_unlabelled_seed2_train"].depends_on
    assert "--use_unlabelled" in stages["scarce_soft_feature_unlabelled_seed2_train"].command
    paired = stages["compression_soft_feature_paired_seed1_train"].command
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
        "teacher": _row("teacher", "demo", 0.8, seeds=(0,)) | {"validation_curve": [[[8, 0.6], [16, 0.75]]]},
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
    results = {
        "settings": {
            "data_seed": 1,
            "labelled": settings.labelled,
            "teacher_labelled": 48,
            "validation": 4,
            "unlabelled": 24,
            "test": len(_CASES),
            "seeds": [0, 1],
            "teacher_seeds": [0],
            "teacher_steps": 1200,
            "teacher_validations": 6,
            "student_steps": 72,
            "regimes": ["scarce"],
            "selection": "last",
            "batch_size": 2,
            "bootstrap_resamples": 1000,
            "bootstrap_seed": 0,
            "timing_roi": 96,
            "timing_overlap": 0.25,
            "timing_shape": [240, 240, 155],
            "probe_cases": 3,
        },
        "regimes": {"scarce": add_statistics(rows, resamples=1000, seed=0)},
        "cost": cost,
        "estimate_seconds": estimate_seconds(settings),
        "stage_seconds": {"a": 61.0, "b": 0.0},
        "stage_seconds_recorded": {"a": 61.0, "b": 120.0},
    }
    return regime_results(results, "scarce")  # what the scarce regime's page shows


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
        output_dir=tmp_path,
        seeds=(0, 1),
        teacher_seeds=(0,),
        rows=("labels_only", "soft"),
        regimes=("scarce",),
        bootstrap_resamples=500,
    )
    datalist = {"training": [{"case_id": c} for c in _CASES]}
    (tmp_path / "test_datalist.json").write_text(json.dumps(datalist))
    rng = np.random.default_rng(0)
    base = {s: rng.uniform(0.3, 0.6, size=(len(_CASES), 3)) for s in (0, 1)}
    for s in (0, 1):
        base[s][2, 2] = np.nan  # case 2 has no ET in its ground truth
        _write_evaluation(run_dir(settings, ROWS_BY_KEY["labels_only"], s, "scarce") / "test", base[s])
        _write_evaluation(run_dir(settings, ROWS_BY_KEY["soft"], s, "scarce") / "test", base[s] + 0.1)
    _write_evaluation(run_dir(settings, ROWS[0], 0) / "test", np.full((len(_CASES), 3), 0.9))
    students = (ROWS_BY_KEY["labels_only"], ROWS_BY_KEY["soft"])
    for row, seed in [(ROWS[0], 0), *((r, s) for r in students for s in (0, 1))]:
        folder = run_dir(settings, row, seed, "scarce")
        _write_brats_scores(folder / "test", lesion_dice=0.5 + 0.1 * seed)
        probe = {"healthy_wt_ml_mean": 1.0 + seed, "healthy_wt_ml_max": 2.0, "unseen_dice_mean": {}}
        (folder / "probe").mkdir()
        (folder / "probe" / "probe.json").write_text(json.dumps(probe))
    rows = collect_results(settings, "scarce")
    assert rows["teacher"]["validation_curve"] == [[]] and rows["soft"]["validation_curve"] is None
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
    assert "| student student | 0.700 [0.700, 0.700] | +0.300 [+0.300, +0.300] | 75 % [75, 75] | 2 of 2 |" in page
    assert "| teacher demo | 0.800 |  |" in page  # per-seed table: no value for seed 1
    assert "student seed -> teacher seed: 0 -> 0, 1 -> 0" in page
    assert "4 held-out labelled test cases" in page and "the weights after the last epoch" in page
    assert "**Determinism.**" in page and "floating-point" in page
    assert "1,000 resamples" in page and "**Cost and commands.** A fresh run (every regime, sharing" in page
    # the regime: the teacher trained once on every label, the students' share of them
    assert "# Results, scarce regime:" in page and "48 labelled training cases" in page
    assert "**Scarce labels.** A student has the first 6 of the teacher's labelled cases and 24 unlabelled" in page
    assert "| teacher demo | 0.800 [0.800, 0.800] | lead +0.400 [+0.400, +0.400] |" in page
    assert "| teacher | seed | epoch 8 | epoch 16 |" in page and "| teacher demo | 0 | 0.600 | 0.750 |" in page
    assert "as recorded when each ran: 3 min 01 s; of the stages this invocation ran: 1 min 01 s." in page
    assert "50.0x faster" in page  # student 2 s against the default teacher's 100 s
    assert "![Dice vs inference time](a.png)" in page
    # BraTS challenge metrics, the lesion-wise comparison, the post-processing effect, the false-positive probe
    assert "## BraTS challenge metrics" in page
    assert "## Against the label-only student (mean lesion-wise Dice, 2023 ranking form;" in page
    assert "| student student | 0.750 [0.750, 0.750] | +0.050 [+0.050, +0.050] |" in page
    # and the same after the post-processing, the label maps the bundles deliver and the ranking scores
    delivered = page.split("(mean lesion-wise Dice, 2023 ranking form, post-processed; paired")
    assert len(delivered) == 2
    assert "| student student | 0.750 [0.750, 0.750] | +0.300 [+0.300, +0.300] |" in delivered[1]
    assert "| teacher demo | 0.850 [0.850, 0.850] | lead +0.400 [+0.400, +0.400] |" in delivered[1]
    assert "| student student | 15.0 (10.0-20.0) | 30.0 | 0.700 (0.700-0.700) |" in page
    assert "| teacher demo | 10.0 | 30.0 | 0.800 |" in page


def test_no_gap_closed_where_the_teacher_does_not_lead(tmp_path: Path) -> None:
    results = _results()
    rows = {k: v for k, v in results["rows"].items() if k != "teacher"}
    rows["teacher"] = _row("teacher", "demo", 0.5, seeds=(0,))
    rows["teacher"]["per_case"]["val_mean_dice"] = [[0.1, 0.3, 0.5, 0.7]]  # 0.4 on average, as label-only
    page = render_results(
        regime_results(results | {"regimes": {"scarce": add_statistics(rows, 1000, 0)}}, "scarce"),
        "cmd",
        {"regions": "b.png"},
    )
    table = page.split("## Against the label-only student (mean Dice")[1].split("##")[0]
    assert "| student student | 0.700 [0.700, 0.700] | +0.300 [+0.300, +0.300] | n/a | 2 of 2 |" in table
    assert "the teacher's lead over the label-only student is not resolved" in table


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


def test_render_from_a_saved_results_file_keeps_its_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_kd", Path(__file__).parents[1] / "scripts/benchmark_kd.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = {k: v for k, v in _results().items() if k not in ("rows", "regime")}  # results.json: every regime
    results["command"] = "python scripts/benchmark_kd.py --jobs 4"
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(results))
    notes = tmp_path / "notes.md"
    notes.write_text("These are the notes.")
    page = tmp_path / "docs" / "page.md"
    assert script.main(["--render-from", str(saved), "--notes", str(notes), "--results-md", str(page)]) == 0
    text = page.read_text()  # a run of one regime: the page named
    assert "Generated by `python scripts/benchmark_kd.py --jobs 4`" in text and text.rstrip().endswith("notes.")
    assert (tmp_path / "docs" / "img" / "page_regions.png").exists()
    # a run made elsewhere without the cost table, and the table of a CPU --timing-only run carried into it
    measured = results["cost"]
    saved.write_text(json.dumps(results | {"cost": []}))
    assert script.main(["--render-from", str(saved), "--results-md", str(tmp_path / "docs" / "page.md")]) == 0
    assert "*Not measured*" in page.read_text()
    cost_file = tmp_path / "inference_cost.json"
    cost_file.write_text(json.dumps(measured))
    argv = ["--render-from", str(saved), "--cost-from", str(cost_file), "--results-md", str(tmp_path / "docs/page.md")]
    assert script.main(argv) == 0
    assert json.loads(saved.read_text())["cost"] == measured  # the file holds what the page shows
    assert "| student | 1,000,000 |" in page.read_text().split("## Inference cost")[1]
    # a run of both regimes: one page each, named after its regime
    both = results | {"regimes": results["regimes"] | {"compression": results["regimes"]["scarce"]}}
    saved.write_text(json.dumps(both))
    assert script.main(["--render-from", str(saved), "--results-md", str(page)]) == 0
    compression = (tmp_path / "docs" / "page_compression.md").read_text()
    assert "# Results, compression regime:" in compression and "**Compression.** A student has every one" in compression
    assert "# Results, scarce regime:" in (tmp_path / "docs" / "page_scarce.md").read_text()
    # notes for every page, and for one regime's page only
    only = tmp_path / "compression_notes.md"
    only.write_text("Compression alone.")
    assert (
        script.main(
            ["--render-from", str(saved), "--results-md", str(page), "--notes", str(notes), f"compression={only}"]
        )
        == 0
    )
    compression = (tmp_path / "docs" / "page_compression.md").read_text()
    assert compression.rstrip().endswith("These are the notes.\n\nCompression alone.")
    assert "Compression alone." not in (tmp_path / "docs" / "page_scarce.md").read_text()
    before = saved.read_text()
    for bad, message in ((f"typo={only}", "has no regime 'typo'"), (str(tmp_path / "absent.md"), "cannot read")):
        with pytest.raises(SystemExit):
            argv = ["--render-from", str(saved), "--cost-from", str(cost_file), "--results-md", str(page)]
            script.main([*argv, "--notes", bad])
        assert message in capsys.readouterr().err
        assert saved.read_text() == before  # a refused call writes nothing


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
    student = stages["scarce_soft_feature_from_vit_seed1_train"]
    assert "teacher_vit_seed1_train" in student.depends_on
    command = student.command
    assert command[command.index("--teacher_config") + 1] == "demo_vit"
    assert command[command.index("--teacher_ckpt") + 1] == str(tmp_path / "runs/teacher_vit_seed1/models/model.pt")
    sources = cli_overrides(ROWS_BY_KEY["features_fused_vit"].overrides)["feature_sources"]
    assert sources == ["fused", "vit"]
    assert "teacher_seed0_train" in stages["compression_features_fused_vit_seed0_train"].depends_on  # the hybrid's


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
    assert "\nThe VGG-only teacher (`demo_cnn`: no ViT; each fused map is the projected VGG stage), each" in page
    assert "fusion_lr_factor" not in page  # the intro names only the ablations the run has
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
