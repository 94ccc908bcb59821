"""The benchmark's pure parts: case roles, step budgets, stage plan, gap closed, and the generated page."""

from __future__ import annotations

from pathlib import Path

import pytest

from kd_components.networks.student import build_student
from kd_components.pipeline.benchmark import (
    ROWS,
    BenchmarkSettings,
    benchmark_stages,
    network_sizes,
    row_schedule,
    schedule,
    split_cases,
)
from kd_components.pipeline.results import gap_closed, plot_dice_vs_time, plot_region_bars, render_results


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


def test_one_shared_teacher_by_default(tmp_path: Path) -> None:
    stages = {s.name: s for s in benchmark_stages(BenchmarkSettings(output_dir=tmp_path, seeds=(0, 1, 2)))}
    assert [n for n in stages if n.startswith("teacher_") and n.endswith("_train")] == ["teacher_seed0_train"]
    assert "teacher_seed0_train" in stages["soft_feature_unlabelled_seed2_train"].depends_on
    assert "--use_unlabelled" in stages["soft_feature_unlabelled_seed2_train"].command
    paired = stages["soft_feature_paired_seed1_train"].command
    assert paired[paired.index("--unlabelled_mixing") + 1] == "paired"


def _row(kind: str, network: str, dice: float, seeds: tuple[int, ...] = (0, 1)) -> dict:
    keys = ["val_dice_tc", "val_dice_wt", "val_dice_et", "val_mean_dice", "val_hd95_tc", "val_hd95_wt", "val_hd95_et"]
    std = 0.01 if len(seeds) > 1 else None
    summary = {k: {"mean": dice, "std": std, "values": [dice] * len(seeds)} for k in keys}
    row = {"label": f"{kind} {network}", "kind": kind, "network": network, "steps": 72, "summary": summary}
    return row | {"seeds": list(seeds)}


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
    settings = BenchmarkSettings()
    return {
        "settings": {
            "data_seed": 1,
            "labelled": settings.labelled,
            "validation": 2,
            "unlabelled": 12,
            "test": 8,
            "seeds": [0, 1],
            "teacher_seeds": [0],
            "teacher_steps": 120,
            "student_steps": 72,
            "batch_size": 2,
            "timing_roi": 96,
            "timing_overlap": 0.25,
            "timing_shape": [240, 240, 155],
        },
        "rows": rows,
        "cost": cost,
        "stage_seconds": {"a": 61.0, "b": 0.0},
        "stage_seconds_recorded": {"a": 61.0, "b": 120.0},
    }


def test_gap_closed() -> None:
    rows = _results()["rows"]
    assert gap_closed(rows, "soft") == pytest.approx(0.75)
    assert gap_closed(rows, "labels_only") is None and gap_closed(rows, "teacher") is None


def test_results_page_and_plots(tmp_path: Path) -> None:
    results = _results()
    plot_dice_vs_time(results, tmp_path / "a.png")
    plot_region_bars(results, tmp_path / "b.png")
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0
    page = render_results(results, "python scripts/benchmark_kd.py", {"dice_vs_time": "a.png", "regions": "b.png"})
    assert "| student student | 72 | 1,000,000 |" in page
    assert "0.700 ± 0.010" in page and "75 %" in page
    assert "0.800 (1 run)" in page  # the teacher was trained once
    assert "| teacher demo | 0.800 |  |" in page  # per-seed table: no value for seed 1
    assert "as recorded when each ran: 3 min 01 s; of the stages this invocation ran: 1 min 01 s." in page
    assert "50.0x faster" in page  # student 2 s against the default teacher's 100 s
    assert "![Dice vs inference time](a.png)" in page


def test_page_without_timing_still_has_sizes_and_says_cost_was_not_measured(tmp_path: Path) -> None:
    results = {**_results(), "cost": [], "sizes": network_sizes(["student"], 32)}
    assert results["sizes"]["student"]["params"] == sum(p.numel() for p in build_student().parameters())
    assert results["sizes"]["student"]["gflops_patch"] > 0
    page = render_results(results, "python scripts/benchmark_kd.py --no-timing", {"regions": "b.png"})
    params = f"{results['sizes']['student']['params']:,}"
    assert f"| student student | 72 | {params} |" in page  # sizes are counted, not timed
    assert "*Not measured*: this page was made with `--no-timing`" in page and "| network |" not in page
    assert "Dice vs inference time" not in page
