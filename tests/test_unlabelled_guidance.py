"""Unlabelled scans: teacher-guided patch sampling (kd_components.data.guidance), the pseudo-label term and the
ramp-up of term weights (kd_components.losses.terms)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.data import MetaTensor

from kd_components.config_checks import BundleSettingError, check_settings
from kd_components.data.guidance import TeacherTumourMaskd, checkpoint_fingerprint
from kd_components.losses import DistillationInputs, DistillationLoss, PseudoLabelTerm, TaskTerm
from tests.conftest import (
    REPO_ROOT,
    STUDENT_BUNDLE_TINY,
    bundle_command,
    bundle_workflow,
    phantom_overrides,
    run_checked,
)

CONFIGS = REPO_ROOT / "bundles" / "distilled_student" / "configs"
SHAPE = (24, 24, 16)

pytestmark = pytest.mark.usefixtures("one_thread")


class BrightTeacher(nn.Module):
    """Logits +10 in every channel where the first modality is above 0.5, -10 elsewhere; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.scale * torch.where(x[:, :1] > 0.5, 1.0, -1.0).repeat(1, 3, 1, 1, 1)


def scan(bright: tuple[slice, ...], case_id: str = "BraTS-GLI-00007-000") -> MetaTensor:
    image = torch.zeros(4, *SHAPE)
    image[(slice(0, 1), *bright)] = 1.0
    return MetaTensor(image, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])), meta={"case_id": case_id})


def test_teacher_mask_is_the_teachers_tumour_cached_by_case_teacher_and_grid(tmp_path: Path) -> None:
    teacher, ckpt = BrightTeacher(), tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), ckpt)
    box = (slice(4, 10), slice(6, 12), slice(2, 8))
    transform = TeacherTumourMaskd("image", teacher, ckpt, tmp_path / "cache", roi_size=(16, 16, 16))
    out = transform({"image": scan(box)})
    expected = np.zeros((1, *SHAPE), np.uint8)
    expected[(slice(None), *box)] = 1
    np.testing.assert_array_equal(out["teacher_tumour"].numpy(), expected)
    (cached,) = (tmp_path / "cache").glob("*.npy")
    assert cached.name.startswith(f"BraTS-GLI-00007-000-{checkpoint_fingerprint(ckpt)}-")
    calls = teacher.calls
    again = transform({"image": scan(box)})  # read from the cache: the teacher is not run
    assert teacher.calls == calls and torch.equal(again["teacher_tumour"], out["teacher_tumour"])
    cached.write_bytes(b"not an array")  # a damaged cache file is segmented again, not read
    torch.testing.assert_close(transform({"image": scan(box)})["teacher_tumour"], out["teacher_tumour"])
    assert teacher.calls > calls
    # another grid (a different affine) or another case is segmented again
    other = scan(box)
    other.affine = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    transform({"image": other})
    transform({"image": scan(box, case_id="BraTS-GLI-00008-000")})
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    # a new teacher checkpoint (other weights) gets its own masks, never the old ones
    with torch.no_grad():
        teacher.scale.fill_(-10.0)  # now the bright box is background and the rest tumour
    torch.save(teacher.state_dict(), ckpt)
    retrained = TeacherTumourMaskd("image", teacher, ckpt, tmp_path / "cache", roi_size=(16, 16, 16))
    assert retrained.fingerprint != transform.fingerprint
    np.testing.assert_array_equal(retrained({"image": scan(box)})["teacher_tumour"].numpy(), 1 - expected)
    with pytest.raises(ValueError, match="no case id"):
        retrained({"image": torch.zeros(4, *SHAPE)})


def _patch_centre(patch: MetaTensor, source: MetaTensor) -> tuple[int, ...]:
    """The voxel of ``source`` at the centre of the crop ``patch`` (voxel ``start + n // 2`` of a crop of side
    ``n``), from the two affines; also for a flipped patch, whose affine runs the other way."""
    middle = [(n - 1) / 2 for n in patch.shape[1:]]
    world = np.asarray(patch.affine, dtype=np.float64) @ np.array([*middle, 1.0])
    index = np.linalg.solve(np.asarray(source.affine, dtype=np.float64), world)[:3]
    return tuple(int(np.floor(i + 0.5)) for i in index)


@pytest.mark.parametrize("share", [1.0, 0.0])
def test_bundle_centres_unlabelled_patches_in_the_teachers_tumour_when_asked(
    share: float, phantom_data: dict[str, Path], tmp_path: Path
) -> None:
    common = {**phantom_overrides(phantom_data, tmp_path), "cache_rate": 0.0, **STUDENT_BUNDLE_TINY}
    workflow = bundle_workflow(
        CONFIGS,
        ["train.json"],
        "train",
        teacher_ckpt=str(phantom_data["teacher_ckpt"]),
        unlabelled_sampling="teacher",
        unlabelled_tumour_share=share,
        teacher_guidance_cache=str(tmp_path / "guidance"),
        num_samples=6,
        **common,
    )
    parser = workflow.parser
    base = parser.get_parsed_content("unlabelled_base_transforms") + parser.get_parsed_content("train#mask_transforms")
    (entry,) = parser.get_parsed_content("unlabelled_datalist")
    data = entry
    for transform in base:
        data = transform(data)
    # the teacher's mask for this scan, written where the sampler's cache looks: a box the tiny teacher never drew
    guide = next(t for t in parser.get_parsed_content("train#unlabelled#random_transforms") if hasattr(t, "cache_path"))
    mask = np.zeros((1, *data["image"].shape[1:]), np.uint8)
    box = tuple(slice(n // 2 - 4, n // 2 + 4) for n in data["image"].shape[1:])
    mask[(slice(None), *box)] = 1
    path = guide.cache_path(entry["case_id"], data["image"])
    path.parent.mkdir(parents=True)
    np.save(path, mask)
    patches = parser.get_parsed_content("train#unlabelled#preprocessing")(entry)
    assert len(patches) == 6 and all(set(p) >= {"image", "brain_mask"} for p in patches)
    assert not any("teacher_tumour" in key for p in patches for key in p)  # nothing left to collate
    inside = [bool(mask[(0, *_patch_centre(p["image"], data["image"]))]) for p in patches]
    assert inside == [share == 1.0] * 6


def test_sampling_settings_are_checked() -> None:
    with pytest.raises(BundleSettingError, match="unlabelled_sampling"):
        check_settings(unlabelled_sampling="tumour")
    with pytest.raises(BundleSettingError, match="pseudo_threshold"):
        check_settings(pseudo_threshold=0.4)


def _inputs(num_labelled: int | None, label: bool = True, iteration: int | None = None) -> DistillationInputs:
    torch.manual_seed(0)
    student = torch.randn(4, 3, 6, 6, 6, requires_grad=True)
    teacher = 3 * torch.randn(4, 3, 6, 6, 6)
    mask = torch.rand(4, 1, 6, 6, 6) > 0.3
    labels = (torch.rand(num_labelled or 4, 3, 6, 6, 6) > 0.5).float() if label else None
    return DistillationInputs(student, teacher, labels, num_labelled, mask, iteration=iteration)


@pytest.mark.parametrize("weighting", ["threshold", "entropy"])
def test_pseudo_label_term_against_a_direct_computation(weighting: str) -> None:
    inputs = _inputs(num_labelled=1)
    term = PseudoLabelTerm(threshold=0.9, weighting=weighting)
    value = term(inputs)
    s, t = inputs.student_logits[1:].detach().double(), inputs.teacher_logits[1:].double()
    p = torch.sigmoid(t)
    if weighting == "threshold":
        w = ((p >= 0.9) | (p <= 0.1)).double()
    else:
        w = 1 + p * torch.log2(p) + (1 - p) * torch.log2(1 - p)
    w = w * inputs.mask[1:].double()
    target = (p > 0.5).double()
    bce = -(target * torch.log(torch.sigmoid(s)) + (1 - target) * torch.log(1 - torch.sigmoid(s)))
    assert value.item() == pytest.approx(((w * bce).sum() / w.sum()).item(), rel=1e-4)
    value.backward()
    assert inputs.student_logits.grad[:1].abs().sum() == 0  # the labelled sample is the task term's
    assert inputs.student_logits.grad[1:].abs().sum() > 0


def test_pseudo_label_term_on_batches_with_and_without_labels() -> None:
    term = PseudoLabelTerm(threshold=0.95)
    assert term(_inputs(num_labelled=None)).item() == 0.0  # every sample has its label
    everything = term(_inputs(num_labelled=None, label=False))  # an unlabelled batch: all four samples
    assert everything.item() > 0
    nobody = PseudoLabelTerm(threshold=1.0)(_inputs(num_labelled=None, label=False))
    assert nobody.item() == 0.0  # no voxel is that confident
    with pytest.raises(ValueError, match="threshold"):
        PseudoLabelTerm(threshold=0.5)
    with pytest.raises(ValueError, match="weighting"):
        PseudoLabelTerm(weighting="margin")


def test_ramp_up_rises_to_the_weight_and_scales_the_term_in_the_total() -> None:
    term = PseudoLabelTerm(weight=2.0, ramp_up=10)
    assert term.weight_at(0) == pytest.approx(2.0 * math.exp(-5.0))
    assert term.weight_at(5) == pytest.approx(2.0 * math.exp(-5.0 * 0.25))
    assert term.weight_at(10) == term.weight_at(50) == term.weight_at(None) == 2.0
    assert PseudoLabelTerm(weight=2.0).weight_at(1) == 2.0
    with pytest.raises(ValueError, match="ramp_up"):
        PseudoLabelTerm(ramp_up=-1)
    loss = DistillationLoss({"task": TaskTerm(nn.BCEWithLogitsLoss()), "pseudo": term})
    for iteration in (1, 5, 20):
        inputs = _inputs(num_labelled=2, iteration=iteration)
        out = loss(inputs)
        task = nn.BCEWithLogitsLoss()(inputs.student_logits[:2], inputs.label)
        expected = task + term.weight_at(iteration) * out["loss_pseudo"]
        assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_student_bundle_trains_with_teacher_guided_patches_and_pseudo_labels(
    phantom_data: dict[str, Path], tmp_path: Path
) -> None:
    train = [str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")]
    overrides = {
        **phantom_overrides(phantom_data, tmp_path),
        **STUDENT_BUNDLE_TINY,
        "teacher_ckpt": str(phantom_data["teacher_ckpt"]),
        "teacher_guidance_cache": str(tmp_path / "guidance"),
        **{"epochs": 1, "val_interval": 1, "num_samples": 1, "batch_size": 1, "log_interval": 1},
        **{"unlabelled_mixing": "paired", "unlabelled_sampling": "teacher", "unlabelled_tumour_share": 0.5},
        **{"pseudo_weight": 1.0, "pseudo_threshold": 0.51, "unlabelled_ramp_up": 4},
    }
    result = run_checked(
        bundle_command(train, overrides, logging_file=CONFIGS / "logging.conf"),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    iterations = [line for line in result.stdout.splitlines() if "Iter:" in line and "loss_pseudo" in line]
    assert len(iterations) == 2, result.stdout[-3000:]  # 2 labelled cases, each paired with the unlabelled scan
    pseudo = [float(re.search(r"loss_pseudo: ([0-9.]+)", line).group(1)) for line in iterations]
    assert all(value > 0 for value in pseudo), iterations
    assert (tmp_path / "models" / "model.pt").exists()
    assert len(list((tmp_path / "guidance").glob("*.npy"))) == 1  # the one unlabelled scan, segmented once
