"""The hybrid_teacher bundle: metadata, workflow properties, a short train + inference + evaluate run, export."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_net_in_out
from monai.data import load_net_with_metadata

from kd_components.constants import ET_LABEL, MODALITIES, REGIONS
from tests.conftest import REPO_ROOT, write_phantom_datalist

BUNDLE = REPO_ROOT / "bundles" / "hybrid_teacher"
CONFIGS = BUNDLE / "configs"
#: A teacher small enough for a CPU test: the demo configuration, thinner and shallower.
TINY = {
    "teacher_config": "demo",
    "network_def#vgg_width": 4,
    "network_def#vit_hidden_size": 48,
    "network_def#vit_mlp_dim": 96,
    "network_def#vit_num_layers": 4,
    "network_def#vit_num_heads": 2,
    "network_def#vit_out_layers": [1, 2, 3, 4],
    "network_def#fusion_channels": [4, 8, 8, 16],
    "network_def#decoder_channels": [4, 8, 8, 16],
    "patch_size": [32, 32, 32],
    "num_workers": 0,
    "sw_batch_size": 8,
    "sw_overlap": 0.0,
}


def _cli_overrides(values: dict) -> list[str]:
    return [arg for k, v in values.items() for arg in (f"--{k}", json.dumps(v) if not isinstance(v, str) else v)]


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four small phantoms (three labelled, one unlabelled) and their datalist with three folds."""
    root = tmp_path_factory.mktemp("teacher")
    data, datalist = write_phantom_datalist(root, 4, unlabelled=1, num_folds=3, seed=3)
    return {"root": root, "data": data, "datalist": datalist, "bundle": root / "bundle"}


@pytest.mark.parametrize(
    "files, workflow_type",
    [(["train.json"], "train"), (["train.json", "demo.json"], "train"), (["inference.json"], "infer")],
)
def test_workflow_properties_are_complete(
    files: list[str], workflow_type: str, phantom_data: dict[str, Path], tmp_path: Path
) -> None:
    # checking a property instantiates it, so the data must exist
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(tmp_path),
        dataset_dir=str(phantom_data["data"]),
        data_list_file_path=str(phantom_data["datalist"]),
        **TINY,
    )
    workflow.initialize()
    assert workflow.check_properties() in (None, [])


def test_train_infer_evaluate_on_phantoms(phantom_data: dict[str, Path]) -> None:
    bundle_root = phantom_data["bundle"]
    common = {
        "bundle_root": str(bundle_root),
        "dataset_dir": str(phantom_data["data"]),
        "data_list_file_path": str(phantom_data["datalist"]),
        **TINY,
    }
    train = [str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", json.dumps(train)]
    cmd += _cli_overrides({**common, "epochs": 1, "val_interval": 1, "num_samples": 1, "batch_size": 2})
    cmd += ["--logging_file", str(CONFIGS / "logging.conf")]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    models = bundle_root / "models"
    assert (models / "model.pt").is_file()
    assert len(list(models.glob("latest*.pt"))) == 1
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("fusion.fuse.0") for k in state)

    infer = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        workflow_type="infer",
        logging_file=False,
        meta_file=str(CONFIGS / "metadata.json"),
        **common,
    )
    infer.initialize()
    infer.run()
    infer.finalize()
    out_dir = bundle_root / "eval"
    test_case = json.loads(phantom_data["datalist"].read_text())["testing"][0]
    saved = nib.load(out_dir / f"{test_case['case_id']}.nii.gz")
    source = nib.load(phantom_data["data"] / test_case["image"][0])
    assert saved.shape == source.shape
    np.testing.assert_allclose(saved.affine, source.affine, atol=1e-5)
    assert set(np.unique(np.asarray(saved.dataobj)).tolist()) <= {0, 1, 2, ET_LABEL}
    with open(out_dir / "volumes.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == [test_case["case_id"]]
    assert set(rows[0]) == {"case_id", *(f"{r}_ml" for r in REGIONS)}
    assert float(rows[0]["WT_ml"]) >= float(rows[0]["TC_ml"]) >= float(rows[0]["ET_ml"]) >= 0

    evaluate = ConfigWorkflow(
        config_file=[*train, str(CONFIGS / "evaluate.json")],
        workflow_type="eval",
        logging_file=False,
        meta_file=str(CONFIGS / "metadata.json"),
        **common,
    )
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    with open(out_dir / "metrics.csv") as f:
        metrics = dict(csv.reader(f))
    for name in ("val_mean_dice", "val_dice_tc", "val_dice_wt", "val_dice_et", "val_hd95_tc", "val_hd95_wt"):
        assert name in metrics
    assert 0.0 <= float(metrics["val_dice_wt"]) <= 1.0
    with open(out_dir / "val_hd95_wt_raw.csv") as f:
        raw = list(csv.reader(f))
    val_ids = [e["case_id"] for e in json.loads(phantom_data["datalist"].read_text())["training"] if e["fold"] == 0]
    assert [r[0] for r in raw[1:]] == val_ids


def test_verify_net_in_out_and_torchscript_export(phantom_data: dict[str, Path], tmp_path: Path) -> None:
    overrides = {k: v for k, v in TINY.items() if k.startswith(("network_def", "teacher_config"))}
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
