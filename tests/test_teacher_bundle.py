"""The hybrid_teacher bundle: metadata, workflow properties, a short train + inference + evaluate run, export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out
from monai.data import load_net_with_metadata

from kd_components.constants import MODALITIES, REGIONS
from kd_components.handlers.branches import BRANCH_DIAGNOSTICS_FILE
from tests.conftest import (
    REPO_ROOT,
    TEACHER_BUNDLE_TINY,
    assert_evaluation_metrics,
    assert_label_map_of,
    bundle_command,
    bundle_workflow,
    phantom_overrides,
    run_checked,
    tiny_teacher_overrides,
)

BUNDLE = REPO_ROOT / "bundles" / "hybrid_teacher"
CONFIGS = BUNDLE / "configs"

#: Four small phantoms (three labelled in three folds, one unlabelled); the teacher is trained here, not loaded.
pytestmark = pytest.mark.phantoms(seed=3, teacher=False)


@pytest.mark.parametrize(
    "files, workflow_type",
    [(["train.json"], "train"), (["train.json", "demo.json"], "train"), (["inference.json"], "infer")],
)
def test_workflow_properties_are_complete(
    files: list[str], workflow_type: str, phantom_data: dict[str, Path], tmp_path: Path
) -> None:
    # checking a property instantiates it, so the data must exist
    workflow = bundle_workflow(
        CONFIGS,
        files,
        workflow_type,
        logging_file=str(CONFIGS / "logging.conf"),
        **phantom_overrides(phantom_data, tmp_path),
        **TEACHER_BUNDLE_TINY,
    )
    assert workflow.check_properties() in (None, [])


def test_the_task_loss_penalises_enhancing_tumour_in_a_patch_without_it() -> None:
    """The teacher's Dice term is a Dice over the batch (nnU-Net's batch Dice). Per patch, with no smoothing of the
    numerator, a patch without ET scores ET Dice 0 whatever is predicted there, so ET predicted in it cost nothing
    in the Dice term (its gradient is 0) and the teacher labelled non-enhancing cores ET. Over the batch, a false ET
    in one patch lowers the batch's ET Dice."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    loss = parser.get_parsed_content("task_loss")
    label = torch.zeros(2, len(REGIONS), 8, 8, 8)
    label[0, :, 2:6, 2:6, 2:6] = 1  # patch 0: TC, WT and ET; patch 1: no tumour
    logits = torch.where(label > 0, 6.0, -6.0)
    false_et = logits.clone()
    false_et[1, REGIONS.index("ET"), 2:6, 2:6, 2:6] = 6.0
    assert loss.dice(false_et, label) > loss.dice(logits, label) + 0.05
    logits.requires_grad_(True)
    loss.dice(logits, label).backward()
    assert logits.grad[1, REGIONS.index("ET")].abs().sum() > 0


def test_train_infer_evaluate_on_phantoms(phantom_data: dict[str, Path]) -> None:
    bundle_root = phantom_data["bundle"]
    common = {**phantom_overrides(phantom_data, bundle_root), **TEACHER_BUNDLE_TINY}
    train = [str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")]
    run = {"epochs": 1, "val_interval": 1, "num_samples": 1, "batch_size": 2}
    run_checked(bundle_command(train, {**common, **run}, logging_file=CONFIGS / "logging.conf"))
    models = bundle_root / "models"
    assert (models / "model.pt").is_file()
    assert len(list(models.glob("latest*.pt"))) == 1
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("fusion.fuse.0") for k in state)
    # the branch diagnostics of the one epoch: scale weights, the gates of the validation, the branch ablation
    diagnostics = json.loads((bundle_root / "eval" / BRANCH_DIAGNOSTICS_FILE).read_text())
    assert [e["epoch"] for e in diagnostics["scale_weights"]] == [1]
    assert sum(diagnostics["scale_weights"][0]["weights"]) == pytest.approx(1, abs=1e-4)
    assert [e["epoch"] for e in diagnostics["gates"]] == [1] and len(diagnostics["gates"][0]["scales"]) == 4
    dice = diagnostics["ablation"]["dice"]
    assert set(dice) == {"full", "vit", "cnn"}
    assert all(len(v) == 4 and all(0 <= d <= 1 for d in v) for v in dice.values())

    infer = bundle_workflow(CONFIGS, ["inference.json"], "infer", **common)
    infer.run()
    infer.finalize()
    out_dir = bundle_root / "eval"
    test_case = json.loads(phantom_data["datalist"].read_text())["testing"][0]
    assert_label_map_of(out_dir / f"{test_case['case_id']}.nii.gz", phantom_data["data"] / test_case["image"][0])
    with open(out_dir / "volumes.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == [test_case["case_id"]]
    assert set(rows[0]) == {"case_id", *(f"{r}_ml" for r in ("NETC", "SNFH", *REGIONS))}
    assert float(rows[0]["WT_ml"]) >= float(rows[0]["TC_ml"]) >= float(rows[0]["ET_ml"]) >= 0

    evaluate = bundle_workflow(CONFIGS, [*train, "evaluate.json"], "eval", **common)
    evaluate.run()
    evaluate.finalize()
    assert_evaluation_metrics(out_dir)
    with open(out_dir / "val_hd95_wt_raw.csv") as f:
        raw = list(csv.reader(f))
    val_ids = [e["case_id"] for e in json.loads(phantom_data["datalist"].read_text())["training"] if e["fold"] == 0]
    assert [r[0] for r in raw[1:]] == val_ids


def test_verify_net_in_out_and_torchscript_export(phantom_data: dict[str, Path], tmp_path: Path) -> None:
    overrides = tiny_teacher_overrides("network_def")
    config = [str(CONFIGS / "inference.json")]
    verify_net_in_out(
        net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=config, n=2, any=1, **overrides
    )
    net = ConfigWorkflow(
        config_file=config,
        workflow_type="infer",
        logging_file=False,
        meta_file=str(CONFIGS / "metadata.json"),
        **overrides,
    ).parser.get_parsed_content("network_def")
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    ts_path = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(ckpt),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=config[0],
        **overrides,
    )
    scripted, meta, extra = load_net_with_metadata(str(ts_path), more_extra_files=["inference.json"])
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == len(MODALITIES)
    assert "inference.json" in extra
    x = torch.randn(1, len(MODALITIES), 64, 64, 32)
    net.eval()
    with torch.no_grad():
        expected = net(x)
        actual = scripted(x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)
