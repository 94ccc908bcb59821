"""The two bundles stay in step: every config section they share is the same in both, by this test.

The comparison of teacher, distilled student and label-only student is only fair when data, transforms,
validation, inference and evaluation are the same in both bundles. A packaged bundle must be
self-contained, so the bundles cannot reference one shared file; instead, every id (``base_transforms#2``,
``validate#inferer``, ...) present in both bundles' configs must hold the same value, except the ids
declared below with the reason they differ. A change to a shared section in one bundle only fails here,
naming the section.
"""

from __future__ import annotations

import configparser
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

TEACHER, STUDENT = "hybrid_teacher", "distilled_student"
CONFIG_FILES = ("train.json", "inference.json", "evaluate.json", "demo.json", "multi_gpu_train.json", "mlflow.json")

#: May differ freely (or exist in one bundle only), with the reason.
OWN = "own"
#: A dict in both; the student's adds keys, the keys of the teacher's hold the same values in both.
EXTENDS = "extends"

#: Per config file: the ids that are not shared, and why. Every other id must be equal in both bundles.
BUNDLE_SPECIFIC: dict[str, dict[str, tuple[str, str]]] = {
    "train.json": {
        "imports": (OWN, "each bundle imports what its expressions use"),
        "network_def": (OWN, "the network each bundle trains"),
        "loss": (OWN, "the teacher trains on task_loss; the student on DistillationLoss over loss_terms"),
        "task_loss#batch": (
            OWN,
            "the teacher's Dice over the batch, the student's per patch (measured: docs/real_scans.md section 3.8)",
        ),
        "train#handlers": (OWN, "the teacher's adds BranchDiagnostics (test_teacher_handlers_add_only_diagnostics)"),
        **{
            key: (OWN, "the teacher's fusion scale logits have a learning rate of their own (parameter_groups)")
            for key in ("fusion_lr_factor", "settings#fusion_lr_factor", "optimizer#params")
        },
        "settings": (EXTENDS, "the student adds the distillation settings"),
        "train#saved_objects": (EXTENDS, "the student also checkpoints the distillation loss (its adapters)"),
        "train#preprocessing#transforms": (OWN, "the student adds train#mask_transforms (the brain mask)"),
        "train#postprocessing": (OWN, "the teacher's training Dice (train#key_metric) needs discrete predictions"),
        "train#key_metric": (OWN, "the teacher's training Dice; the distillation trainer logs its loss terms"),
        "train#trainer": (OWN, "SupervisedTrainer vs DistillationTrainer (teacher, mixed labelled/unlabelled loader)"),
        **{
            key: (OWN, "distillation only")
            for key in (
                "alpha",
                "beta",
                "temperature",
                "feature_distance",
                "feature_scale_weights",
                "feature_sources",
                "feature_pairs",
                "use_unlabelled",
                "unlabelled_split",
                "unlabelled_mixing",
                "unlabelled_sampling",
                "unlabelled_tumour_share",
                "teacher_guidance_cache",
                "pseudo_weight",
                "pseudo_threshold",
                "pseudo_weighting",
                "unlabelled_ramp_up",
                "distill",
                "unlabelled_enabled",
                "teacher_ckpt",
                "teacher_def",
                "teacher",
                "soft_loss",
                "feature_loss",
                "loss_terms",
                "unlabelled_datalist",
                "unlabelled_base_transforms",
                "train#mask_transforms",
                "train#unlabelled",
                "train#mixed_loader",
            )
        },
    },
    "inference.json": {
        "network_def": (OWN, "the network each bundle runs"),
        "teacher_config": (OWN, "the teacher's network definition"),
        **{
            key: (OWN, "each network's post-processing thresholds, chosen on its own validation predictions")
            for key in ("postprocess_min_mm3", "postprocess_et_to_netc_mm3")
        },
    },
    "evaluate.json": {
        "postprocess_min_mm3": (OWN, "each bundle's post-processing thresholds, those of its inference.json"),
    },
    "demo.json": {
        "epochs": (OWN, "the main job's budgets (DemoSettings reads them): the teacher trains twice as long")
    },
    "multi_gpu_train.json": {
        key: (OWN, "the student's unlabelled loader is distributed too")
        for key in (
            "train#unlabelled#sampler",
            "train#unlabelled#dataloader#sampler",
            "train#unlabelled#dataloader#shuffle",
        )
    },
    "mlflow.json": {
        "configs#run_name#prefix": (OWN, "the bundle's name"),
        "configs#mlflow_params#bundle": (OWN, "the bundle's name"),
        "configs#mlflow_params#extra": (OWN, "the student's width"),
        "configs#mlflow_params#teacher": (OWN, "the distillation teacher's size"),
    },
}


def load_config(bundle: str, name: str) -> dict[str, Any]:
    """A bundle's config file as parsed JSON."""
    return json.loads((REPO_ROOT / "bundles" / bundle / "configs" / name).read_text())


def _join(path: str, key: object) -> str:
    return f"{path}#{key}" if path else str(key)


def config_differences(
    teacher: Any, student: Any, rules: dict[str, tuple[str, str]], path: str = "", target: str = ""
) -> Iterator[str]:
    """The ids at which ``teacher`` and ``student`` differ against ``rules``, one line each, naming the section.

    Args:
        teacher: the teacher bundle's config (or a part of it, at ``path``).
        student: the student bundle's config (or the same part).
        rules: id -> (``OWN`` or ``EXTENDS``, reason) for the ids that are not shared.
        path: the id of ``teacher``/``student`` in their configs (``""`` at the root).
        target: the ``_target_`` of the nearest enclosing component, to say what the section is.
    """
    kind = rules.get(path, ("shared", ""))[0]
    if kind == OWN:
        return
    where = f"'{path}'" + (f" (in {target})" if target else "")
    if isinstance(teacher, dict) and isinstance(student, dict):
        inner = student.get("_target_", target) if isinstance(student.get("_target_"), str) else target
        for key in [*teacher, *(k for k in student if k not in teacher)]:
            sub = _join(path, key)
            if key in teacher and key in student:
                yield from config_differences(teacher[key], student[key], rules, sub, inner)
            elif rules.get(sub, ("",))[0] == OWN or (kind == EXTENDS and key in student):
                continue
            else:
                only, missing = (TEACHER, STUDENT) if key in teacher else (STUDENT, TEACHER)
                yield f"'{sub}' is in {only} but not in {missing}"
    elif isinstance(teacher, list) and isinstance(student, list) and len(teacher) == len(student):
        for i, (a, b) in enumerate(zip(teacher, student, strict=True)):
            yield from config_differences(a, b, rules, _join(path, i), target)
    elif teacher != student:
        yield f"{where} differs: {TEACHER} {json.dumps(teacher)} vs {STUDENT} {json.dumps(student)}"


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_shared_sections_are_the_same_in_both_bundles(name: str) -> None:
    problems = list(config_differences(load_config(TEACHER, name), load_config(STUDENT, name), BUNDLE_SPECIFIC[name]))
    assert not problems, (
        f"configs/{name}: the bundles' shared sections differ (change both bundles, or declare the id in "
        f"BUNDLE_SPECIFIC of {Path(__file__).name} with the reason):\n  " + "\n  ".join(problems)
    )


def test_logging_conf_is_the_same_in_both_bundles() -> None:
    confs = []
    for bundle in (TEACHER, STUDENT):
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(REPO_ROOT / "bundles" / bundle / "configs" / "logging.conf")
        confs.append({section: dict(parser[section]) for section in parser.sections()})
    assert confs[0] == confs[1], "configs/logging.conf differs between the bundles"


def test_every_declared_exception_exists_in_a_bundle() -> None:
    # a stale entry would silently widen what may differ
    def has(config: Any, path: str) -> bool:
        node = config
        for part in path.split("#"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and path in node:  # an overlay key such as "train#unlabelled#sampler"
                return True
            else:
                return False
        return True

    stale = [
        f"{name}: {path}"
        for name, rules in BUNDLE_SPECIFIC.items()
        for path in rules
        if not any(has(load_config(b, name), path) for b in (TEACHER, STUDENT))
    ]
    assert not stale, f"BUNDLE_SPECIFIC names ids that no bundle has: {stale}"


def test_a_change_to_a_shared_section_in_one_bundle_is_named() -> None:
    teacher, student = load_config(TEACHER, "train.json"), copy.deepcopy(load_config(STUDENT, "train.json"))
    spacing = next(i for i, t in enumerate(student["base_transforms"]) if t["_target_"] == "Spacingd")
    student["base_transforms"][spacing]["mode"] = ["nearest", "nearest"]
    student["validate"]["inferer"]["inferer"]["overlap"] = 0.75
    del student["train"]["augmentation"][-1]
    problems = list(config_differences(teacher, student, BUNDLE_SPECIFIC["train.json"]))
    assert any(f"'base_transforms#{spacing}#mode#0' (in Spacingd) differs" in p for p in problems)
    assert any("'validate#inferer#inferer#overlap' (in SlidingWindowInferer) differs" in p for p in problems)
    assert any("'train#augmentation' differs" in p for p in problems)
    assert len(problems) == 3, problems
    # what a bundle may add or change is not reported
    student["alpha"], student["settings"]["new_setting"] = 0.5, "@alpha"
    student["network_def"]["init_filters"] = 16
    assert len(list(config_differences(teacher, student, BUNDLE_SPECIFIC["train.json"]))) == 3


@pytest.mark.parametrize("bundle", [TEACHER, STUDENT])
def test_evaluate_json_scores_with_the_post_processing_of_inference_json(bundle: str) -> None:
    # evaluate.json repeats inference.json's thresholds (it overlays train.json, not inference.json)
    inference, evaluate = load_config(bundle, "inference.json"), load_config(bundle, "evaluate.json")
    for key in ("postprocess_min_mm3", "postprocess_et_to_netc_mm3"):
        assert evaluate[key] == inference[key], f"{bundle}: {key} of evaluate.json differs from inference.json"
    post = evaluate["validate#additional_metrics"]["lesion_wise_post"]["postprocess"]
    assert post["min_component_mm3"] == "@postprocess_min_mm3"
    assert post["et_to_netc_mm3"] == "@postprocess_et_to_netc_mm3"


def test_teacher_handlers_add_only_diagnostics() -> None:
    teacher = load_config(TEACHER, "train.json")["train"]["handlers"]
    student = load_config(STUDENT, "train.json")["train"]["handlers"]
    added = [h for h in teacher if h["_target_"] == "kd_components.handlers.BranchDiagnostics"]
    assert len(added) == 1
    assert [h for h in teacher if h not in added] == student
