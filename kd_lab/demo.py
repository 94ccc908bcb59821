"""The main job on the embedded phantom data: data, teacher, distilled student, inference, evaluation, report.

Each step is a :class:`~kd_lab.stages.Stage` that runs one of the project's own
entry points (``brats-kd phantoms``, ``brats-kd datalist``, the bundles through
``python -m monai.bundle``), so the pipeline does exactly what a user would type, in order:

1. phantoms (labelled + unlabelled) and their preview, 2. the validated datalist with folds,
3. teacher training (demo overlay), 4. its evaluation on the validation fold and 5. its label
maps for the validation cases, 6. student distillation from that teacher on the labelled and
unlabelled cases, 7.-9. the student's evaluation, validation label maps and label maps with
tumour volumes for the unlabelled scans, 10. both networks on healthy (tumour-free) phantoms and on phantoms
of a generator seed never trained on (``brats-kd false-positives``), 11. both networks on the real scans beside
the repository (``../shared/real_dev``, ``scripts/measure_real_scans.py``; skipped with a message where that folder
holds no labelled case), 12. ``report.md`` with curves, overlays, those false positives and the real scans.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from kd_components.data.phantoms import is_healthy_case
from kd_components.handlers.branches import BRANCH_DIAGNOSTICS_FILE
from kd_components.inferers import cpu_bf16_supported
from kd_lab.real_scans import DEFAULT_REAL_SCANS, MEASUREMENT_END, MEASUREMENT_START, NoRealScansError, labelled_cases
from kd_lab.report import ModelRun, write_report
from kd_lab.results_branches import branch_report_section
from kd_lab.stages import Stage, StageRunner, brats_kd_command, python_command

__all__ = ["DemoSettings", "bundle_command", "bundle_parameters", "config_files", "demo_stages", "run_demo"]

REPO_ROOT = Path(__file__).resolve().parents[1]
TEACHER_BUNDLE = REPO_ROOT / "bundles" / "hybrid_teacher"
STUDENT_BUNDLE = REPO_ROOT / "bundles" / "distilled_student"


def _demo_setting(bundle: Path, key: str) -> Any:
    """A value of the bundle's CPU-sized overlay ``configs/demo.json``: the one home of the main job's budgets."""
    return json.loads((bundle / "configs" / "demo.json").read_text())[key]


@dataclass(frozen=True)
class DemoSettings:
    """Size and budget of the demo run (the defaults take about 13 minutes on 2 CPU cores; docs/training_speed.md).

    Args:
        output_dir: everything goes below this folder.
        num_cases: phantom cases in all; the last ``unlabelled`` have no segmentation.
        unlabelled: cases without a segmentation (used by distillation, and predicted at the end).
        healthy_share: probability that a labelled case is a healthy brain (``brats-kd phantoms --healthy-share``):
            it trains in every fold and teaches "no tumour here".
        seed: data-set, fold and training seed.
        teacher_epochs: teacher training epochs (default: the teacher's ``configs/demo.json``).
        student_epochs: student distillation epochs (default: the student's ``configs/demo.json``).
        val_interval: epochs between validations, both bundles (default: the teacher's ``configs/demo.json``).
        overlay_cases: validation cases drawn in the report.
        probe_cases: healthy and unseen-seed phantoms, each, for the false-positive probe (0: no probe).
        real_scans_dir: labelled real scans both networks are measured on after training (``None``: none; a folder
            that is absent or holds no labelled case is skipped with a message).
    """

    output_dir: Path = Path("outputs/demo")
    num_cases: int = 40
    unlabelled: int = 8
    healthy_share: float = 0.06
    seed: int = 0
    teacher_epochs: int = field(default_factory=lambda: _demo_setting(TEACHER_BUNDLE, "epochs"))
    student_epochs: int = field(default_factory=lambda: _demo_setting(STUDENT_BUNDLE, "epochs"))
    val_interval: int = field(default_factory=lambda: _demo_setting(TEACHER_BUNDLE, "val_interval"))
    overlay_cases: int = 3
    probe_cases: int = 4
    real_scans_dir: Path | None = DEFAULT_REAL_SCANS

    def __post_init__(self) -> None:
        if not 0 <= self.unlabelled < self.num_cases:
            raise ValueError(f"unlabelled must be in [0, num_cases), got {self.unlabelled} of {self.num_cases}")
        if not 0.0 <= self.healthy_share < 1.0:
            raise ValueError(f"healthy_share must be in [0, 1), got {self.healthy_share}")
        labelled = self.num_cases - self.unlabelled
        healthy = sum(is_healthy_case(self.seed, i, self.healthy_share) for i in range(labelled))
        if labelled - healthy < 5:
            raise ValueError(
                "at least 5 labelled cases with tumour are needed for 5 cross-validation folds; "
                f"{labelled} labelled cases with {healthy} healthy ones leave fewer"
            )
        for name in ("teacher_epochs", "student_epochs", "val_interval", "overlay_cases"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.probe_cases < 0:
            raise ValueError(f"probe_cases must be at least 0, got {self.probe_cases}")


def _configs(bundle: Path, *names: str) -> str:
    """The ``--config_file`` value for a list of the bundle's configs."""
    return repr([str(bundle / "configs" / name) for name in names])


def config_files(bundle: Path, configs: Sequence[str]) -> tuple[Path, ...]:
    """The config files a bundle command reads (fingerprinted by the stage runner)."""
    return tuple(bundle / "configs" / name for name in configs)


def bundle_command(bundle: Path, runner_id: str | None, configs: Sequence[str], *args: str) -> list[str]:
    head = ["-m", "monai.bundle", "run"] + ([runner_id] if runner_id else [])
    return python_command(*head, "--config_file", _configs(bundle, *configs), "--bundle_root", str(bundle), *args)


def bundle_parameters(bundle: Path, configs: Sequence[str], overrides: dict[str, object] | None = None) -> int:
    """Parameters of the bundle's ``network_def`` as its configs (and overrides) declare it."""
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / name) for name in configs])
    parser["bundle_root"] = str(bundle)
    for key, value in (overrides or {}).items():
        parser[key] = value
    network = parser.get_parsed_content("network_def")
    return sum(p.numel() for p in network.parameters())


def demo_stages(settings: DemoSettings) -> list[Stage]:
    """The stages of the main job, in order (see the module docstring)."""
    out = settings.output_dir
    data, datalist = out / "data", out / "datalist.json"
    common = ["--dataset_dir", str(data), "--data_list_file_path", str(datalist), "--seed", str(settings.seed)]
    store = ["--preprocessed_dir", str(out / "preprocessed")]  # shared by both trainings, inside the job's folder
    teacher, student = out / "hybrid_teacher", out / "distilled_student"
    teacher_model = teacher / "models" / "model.pt"
    train_cfg = ("train.json", "demo.json")
    teacher_train_args = [
        *common,
        *store,
        "--epochs",
        str(settings.teacher_epochs),
        "--val_interval",
        str(settings.val_interval),
    ]
    student_train_args = [
        *common,
        *store,
        "--epochs",
        str(settings.student_epochs),
        "--val_interval",
        str(settings.val_interval),
        "--teacher_ckpt",
        str(teacher_model),
    ]
    stages = [
        Stage(
            "phantoms",
            command=brats_kd_command(
                "phantoms",
                *("--output-dir", str(data), "--num-cases", str(settings.num_cases)),
                *("--unlabelled", str(settings.unlabelled), "--seed", str(settings.seed), "--profile", "small"),
                *("--healthy-share", str(settings.healthy_share)),
                "--preview",
            ),
            outputs=(data / "preview.png",),
            owned_dirs=(data,),
            description=f"{settings.num_cases} phantom cases ({settings.unlabelled} unlabelled) -> {data}",
        ),
        Stage(
            "datalist",
            command=brats_kd_command(
                "datalist",
                *("--dataset-dir", str(data), "--output", str(datalist), "--seed", str(settings.seed)),
            ),
            outputs=(datalist,),
            depends_on=("phantoms",),
            description=f"validating every case, datalist with 5 folds -> {datalist}",
        ),
    ]
    for name, bundle, folder, train_args, train_deps in (
        ("teacher", TEACHER_BUNDLE, teacher, teacher_train_args, ("datalist",)),
        ("student", STUDENT_BUNDLE, student, student_train_args, ("datalist", "teacher_train")),
    ):
        models = folder / "models"
        model_args = ["--ckpt_dir", str(models)]
        stages += [
            Stage(
                f"{name}_train",
                command=bundle_command(
                    bundle, "training", train_cfg, *train_args, *model_args, "--output_dir", str(folder / "runs")
                ),
                inputs=config_files(bundle, train_cfg),
                outputs=(models / "model.pt",),
                owned_dirs=(models, folder / "runs"),
                depends_on=train_deps,
                resume_dir=models,
                description=f"training the {name} ({bundle.name} bundle, demo overlay) -> {models}",
            ),
            Stage(
                f"{name}_evaluate",
                command=bundle_command(
                    bundle,
                    None,
                    (*train_cfg, "evaluate.json"),
                    *train_args,
                    *model_args,
                    "--output_dir",
                    str(folder / "evaluation"),
                ),
                inputs=config_files(bundle, (*train_cfg, "evaluate.json")),
                outputs=(folder / "evaluation" / "metrics.csv",),
                owned_dirs=(folder / "evaluation",),
                depends_on=(f"{name}_train",),
                description=f"{name}: Dice and HD95 per region on the validation fold",
            ),
            Stage(
                f"{name}_predict_validation",
                command=bundle_command(
                    bundle,
                    None,
                    ("inference.json", "demo.json"),
                    *common,
                    *model_args,
                    "--infer_split",
                    "validation",
                    "--output_dir",
                    str(folder / "predictions" / "validation"),
                ),
                inputs=config_files(bundle, ("inference.json", "demo.json")),
                outputs=(folder / "predictions" / "validation" / "volumes.csv",),
                owned_dirs=(folder / "predictions" / "validation",),
                depends_on=(f"{name}_train",),
                description=f"{name}: label maps of the validation cases",
            ),
        ]
    if settings.unlabelled:
        stages.append(
            Stage(
                "student_predict_unlabelled",
                command=bundle_command(
                    STUDENT_BUNDLE,
                    None,
                    ("inference.json", "demo.json"),
                    *common,
                    "--ckpt_dir",
                    str(student / "models"),
                    "--infer_split",
                    "testing",
                    "--output_dir",
                    str(student / "predictions" / "unlabelled"),
                ),
                inputs=config_files(STUDENT_BUNDLE, ("inference.json", "demo.json")),
                outputs=(student / "predictions" / "unlabelled" / "volumes.csv",),
                owned_dirs=(student / "predictions" / "unlabelled",),
                depends_on=("student_train",),
                description="student: label maps and tumour volumes of the unlabelled scans",
            )
        )
    if settings.probe_cases:
        probe = out / "false_positives"
        stages.append(
            Stage(
                "false_positives",
                command=brats_kd_command(
                    "false-positives",
                    *("--ckpt", f"teacher={teacher_model}", "--bundle", f"teacher={TEACHER_BUNDLE}"),
                    *("--overlay", f"teacher={TEACHER_BUNDLE / 'configs' / 'demo.json'}"),
                    *("--ckpt", f"student={student / 'models' / 'model.pt'}", "--bundle", f"student={STUDENT_BUNDLE}"),
                    *("--overlay", f"student={STUDENT_BUNDLE / 'configs' / 'demo.json'}"),
                    *("--cases", str(settings.probe_cases), "--output-dir", str(probe)),
                    *("--output", str(probe / "false_positives.md")),
                ),
                inputs=config_files(TEACHER_BUNDLE, ("demo.json",)) + config_files(STUDENT_BUNDLE, ("demo.json",)),
                outputs=(probe / "false_positives.md",),
                owned_dirs=(probe,),
                depends_on=("teacher_train", "student_train"),
                description=f"both networks on {settings.probe_cases} healthy and {settings.probe_cases} "
                "unseen-seed phantoms",
            )
        )
    if real_scans_problem(settings) is None:
        assert settings.real_scans_dir is not None
        stages.append(
            Stage(
                "real_scans",
                command=python_command(
                    str(REPO_ROOT / "scripts" / "measure_real_scans.py"),
                    *("--demo-dir", str(out), "--data-dir", str(settings.real_scans_dir)),
                    *("--output-dir", str(out / "real_scans"), "--image-dir", str(out / "real_scans")),
                    *("--page", str(out / "real_scans.md")),
                ),
                inputs=config_files(TEACHER_BUNDLE, ("inference.json", "demo.json"))
                + config_files(STUDENT_BUNDLE, ("inference.json",)),
                outputs=(out / "real_scans.md",),
                owned_dirs=(out / "real_scans",),
                depends_on=("teacher_train", "student_train"),
                description=f"both networks on the real scans of {settings.real_scans_dir}",
            )
        )
    return stages


def real_scans_problem(settings: DemoSettings) -> str | None:
    """Why the real-scan stage is not part of the run (``None``: it is)."""
    if settings.real_scans_dir is None:
        return "switched off"
    try:
        labelled_cases(settings.real_scans_dir)
    except NoRealScansError as err:
        return str(err)
    return None


def _model_runs(settings: DemoSettings) -> list[ModelRun]:
    runs = []
    for name, bundle in (("teacher", TEACHER_BUNDLE), ("student", STUDENT_BUNDLE)):
        folder = settings.output_dir / ("hybrid_teacher" if name == "teacher" else "distilled_student")
        runs.append(
            ModelRun(
                name=name,
                runs_dir=folder / "runs",
                evaluation_dir=folder / "evaluation",
                predictions_dir=folder / "predictions" / "validation",
                parameters=bundle_parameters(bundle, ("train.json", "demo.json")),
            )
        )
    return runs


def _validation_cases(settings: DemoSettings, count: int) -> list[str]:
    """The first ``count`` validation cases (fold 0) of the datalist."""
    entries = json.loads((settings.output_dir / "datalist.json").read_text())["training"]
    return [e["case_id"] for e in entries if e["fold"] == 0][:count]


def run_demo(settings: DemoSettings, fresh: bool = False) -> Path:
    """Run (or continue) the main job; return the path of the report."""
    out = settings.output_dir
    runner = StageRunner(out / ".stages", fresh=fresh)
    stages = demo_stages(settings)
    skipped = real_scans_problem(settings)
    if skipped is not None:
        runner.log(f"[real_scans] skipped: {skipped}")
    for stage in stages:
        runner.run(stage)
    report_stage = Stage(
        "report",
        action=lambda: _write_demo_report(settings, runner.timings),
        outputs=(out / "report.md",),
        depends_on=tuple(s.name for s in stages),
        params=asdict(settings) | {"output_dir": str(out)},
        description="report: metrics, training curves, prediction overlays",
    )
    runner.run(report_stage)
    return out / "report.md"


def _write_demo_report(settings: DemoSettings, timings: dict[str, float]) -> Path:
    out = settings.output_dir
    runs = _model_runs(settings)
    teacher, student = runs
    size = teacher.parameters / student.parameters
    precision = "CUDA AMP" if torch.cuda.is_available() else "bf16 autocast" if cpu_bf16_supported() else "float32"
    intro = (
        f"The main job on {settings.num_cases} phantom cases ({settings.num_cases - settings.unlabelled} labelled, "
        f"{settings.unlabelled} unlabelled; seed {settings.seed}): the demo hybrid teacher "
        f"({teacher.parameters:,} parameters) trained for {settings.teacher_epochs} epochs, then the student "
        f"({student.parameters:,} parameters, {size:.1f}x fewer) distilled from it for {settings.student_epochs} "
        "epochs on the labelled training folds plus the unlabelled scans. Validation is fold 0 of "
        f"`{out / 'datalist.json'}`. The data preview is `{out / 'data' / 'preview.png'}`; the student's label "
        f"maps and tumour volumes for the unlabelled scans are in `{out / 'distilled_student' / 'predictions'}"
        f"/unlabelled`. Both trainings ran the networks in {precision} (the bundles' `cpu_bf16: auto`) with "
        "glibc's malloc tuned (`kd_components.allocator`); evaluation runs float32."
        "\n\nThis is a short CPU demo: its numbers show that the pipeline works, not how well the method works. "
        "The comparison of teacher, distilled students, label-only student and the model-zoo SegResNet is "
        "`docs/results_scarce.md` and `docs/results_compression.md` (`scripts/benchmark_kd.py`)."
    )
    extra = [_false_positive_section(out / "false_positives" / "false_positives.md")] if settings.probe_cases else []
    branches = branch_report_section(teacher.runs_dir / BRANCH_DIAGNOSTICS_FILE, out / "branches.png")
    extra += [branches] if branches else []
    real_scans = out / "real_scans.md"
    if real_scans_problem(settings) is None and real_scans.is_file():
        extra.append(_real_scans_section(real_scans))
    cases = _validation_cases(settings, settings.overlay_cases)
    return write_report(out, runs, out / "data", cases, intro, timings, extra_sections=extra)


def _false_positive_section(page: Path) -> str:
    """The report's section on normal anatomy: the probe's table (its page without the title)."""
    table = "\n".join(line for line in page.read_text().splitlines() if not line.startswith("# ")).strip()
    return (
        "## Normal anatomy and unseen phantoms\n\n"
        "Every tumour voxel predicted on a healthy phantom is a false positive; the unseen seed shows how the "
        "networks do on phantoms they were not trained or validated on (`docs/false_positives.md` explains "
        f"the probe).\n\n{table}"
    )


def _real_scans_section(page: Path) -> str:
    """The report's section on real scans: the marked part of the measurement's page (its links are relative to
    the report's folder, where the page lies)."""
    text = page.read_text()
    start, end = text.find(MEASUREMENT_START), text.find(MEASUREMENT_END)
    body = text[start + len(MEASUREMENT_START) : end].strip() if 0 <= start < end else text.strip()
    return f"## Real scans\n\n{body}"
