"""Export for deployment: ``ckpt_export`` TorchScript with embedded configs (both bundles), the MONAI Deploy
contract of that file, and ONNX export of the student with dynamic sizes checked with onnxruntime."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, load_net_with_metadata

from kd_components.constants import ET_LABEL, MODALITIES, REGIONS
from kd_components.data.brats import find_cases
from kd_components.data.phantoms import make_phantom_dataset
from kd_components.deploy import ExportedModelError, find_model_file, load_deployed_bundle, read_exported
from kd_components.export import ONNX_ATOL, compare_onnx_with_torch, export_onnx
from kd_components.networks.init import init_output_prior
from kd_components.networks.student import build_student
from kd_components.segment import Segmenter
from tests.conftest import PHANTOM_PIXDIM, REPO_ROOT, brats_kd, cli_overrides, run_checked, tiny_teacher_overrides

#: Tolerance of the TorchScript export against the eager network (float32, CPU).
TS_ATOL, TS_RTOL = 1e-5, 1e-4
#: Per bundle: ``network_def`` overrides giving a CPU-sized network, and an input shape it accepts.
BUNDLES: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "distilled_student": ({"network_def#init_filters": 8}, (1, len(MODALITIES), 48, 32, 64)),
    "hybrid_teacher": (tiny_teacher_overrides("network_def"), (1, len(MODALITIES), 64, 64, 32)),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _network(bundle: Path, overrides: dict[str, Any]) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("network_def")


@pytest.fixture(scope="module", params=sorted(BUNDLES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``model.ts`` of a bundle made with the documented ``ckpt_export`` command line, from random weights."""
    name = request.param
    bundle = REPO_ROOT / "bundles" / name
    overrides, shape = BUNDLES[name]
    root = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    network = _network(bundle, overrides).eval()
    torch.save(network.state_dict(), root / "model.pt")
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(root / "model.ts")]
    cmd += ["--ckpt_file", str(root / "model.pt"), "--meta_file", "configs/metadata.json"]
    cmd += ["--config_file", "configs/inference.json", *cli_overrides(overrides)]
    run_checked(cmd, cwd=bundle, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return {"bundle": bundle, "ts": root / "model.ts", "network": network, "shape": shape, "root": root}


def test_ckpt_export_embeds_both_configs_and_equals_the_eager_network(exported: dict[str, Any]) -> None:
    bundle = exported["bundle"]
    scripted, meta, extra = load_net_with_metadata(
        str(exported["ts"]), more_extra_files=["inference.json", "metadata.json"]
    )
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert {k: meta[k] for k in metadata} == metadata  # plus the versions ckpt_export records
    assert json.loads(extra["inference.json"]) == json.loads((bundle / "configs" / "inference.json").read_text())
    x = torch.randn(*exported["shape"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = exported["network"](x)
        actual = scripted(x)
    assert actual.shape == (x.shape[0], len(REGIONS), *x.shape[2:])
    torch.testing.assert_close(actual, expected, atol=TS_ATOL, rtol=TS_RTOL)


def test_model_ts_alone_segments_a_phantom_as_monai_deploy_would(exported: dict[str, Any]) -> None:
    """The App SDK's contract: embedded configs, LoadImage/SaveImage removed, an in-memory channel-first case."""
    data = exported["root"] / "data"
    make_phantom_dataset(data, 1, seed=2, profile="small", workers=1, progress=False)
    (case,) = sorted(p for p in data.iterdir() if p.is_dir())
    images = [nib.load(case / f"{case.name}-{m}.nii.gz") for m in MODALITIES]
    array = np.stack([np.asarray(img.dataobj, dtype=np.float32) for img in images])
    image = MetaTensor(torch.from_numpy(array), affine=torch.as_tensor(images[0].affine))

    deployed = load_deployed_bundle(
        exported["ts"], device="cpu", overrides={"patch_size": [32, 32, 32], "sw_batch_size": 8, "sw_overlap": 0.0}
    )
    names = [type(t).__name__ for t in (*deployed.preprocessing.transforms, *deployed.postprocessing.transforms)]
    assert not any(n.startswith(("LoadImage", "SaveImage")) for n in names) and "RegionsToBratsLabelsd" in names
    labels = deployed(image)
    assert tuple(labels.shape) == (1, *array.shape[1:])
    assert set(torch.unique(labels).tolist()) <= {0, 1, 2, ET_LABEL}
    np.testing.assert_allclose(np.asarray(labels.affine), images[0].affine, atol=1e-5)


def test_onnx_export_of_the_student_has_dynamic_sizes_and_matches_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = build_student().eval()
    ckpt = tmp_path / "model.pt"
    torch.save(student.state_dict(), ckpt)
    path = tmp_path / "model.onnx"
    args = ["--bundle", str(REPO_ROOT / "bundles" / "distilled_student"), "--ckpt", str(ckpt), "--output", str(path)]
    assert brats_kd("export", *args, "--check-size", "64", "64", "64") == 0

    graph = onnx.load(str(path)).graph
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*graph.input, *graph.output)]
    assert [v.name for v in graph.input] == ["image"] and [v.name for v in graph.output] == ["pred"]
    assert dims[0][1] == len(MODALITIES) and dims[1][1] == len(REGIONS)
    assert all(isinstance(d, str) for io in dims for d in (io[0], *io[2:]))  # batch and H, W, D are symbolic
    # two batch sizes and two spatial sizes, one of them not the traced one
    differences = compare_onnx_with_torch(student, path, [(1, 4, 64, 64, 64), (2, 4, 96, 80, 64)])
    assert max(differences) <= ONNX_ATOL, differences


def test_onnx_export_rejects_example_sizes_that_are_not_multiples(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        export_onnx(build_student(), tmp_path / "m.onnx", (1, 4, 60, 64, 64))


def test_read_exported_refuses_files_monai_deploy_would_run_wrongly(exported: dict[str, Any], tmp_path: Path) -> None:
    model = exported["ts"]
    assert read_exported(model).config == load_deployed_bundle(model, device="cpu").config
    plain = tmp_path / "plain.ts"
    torch.jit.save(torch.jit.load(model), plain)  # the network without the embedded configs
    renamed = tmp_path / "renamed.ts"
    shutil.copy(model, renamed)  # configs still under "model/": the SDK would not find inference.json
    text = tmp_path / "model.txt"
    text.write_text("not a model")
    for path, reason in [
        (plain, "no embedded metadata.json and inference.json"),
        (renamed, "embedded under 'model/'"),
        (text, "not a TorchScript archive"),
        (tmp_path / "absent.ts", "no such model file"),
    ]:
        with pytest.raises(ExportedModelError, match=re.escape(reason)) as caught:
            read_exported(path)
        assert str(path) in str(caught.value)


def test_find_model_file_takes_a_file_a_models_folder_or_a_map_layout(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "model.ts").write_bytes(b"")
    (tmp_path / "flat" / "other.ts").write_bytes(b"")
    assert find_model_file(tmp_path / "flat") == tmp_path / "flat" / "model.ts"
    assert find_model_file(tmp_path / "flat" / "other.ts") == tmp_path / "flat" / "other.ts"
    (tmp_path / "map" / "student").mkdir(parents=True)
    (tmp_path / "map" / "student" / "student.ts").write_bytes(b"")
    assert find_model_file(tmp_path / "map") == tmp_path / "map" / "student" / "student.ts"
    (tmp_path / "map" / "teacher.ts").write_bytes(b"")
    with pytest.raises(ExportedModelError, match=r"exactly one \*\.ts file \(found: student/student.ts, teacher.ts"):
        find_model_file(tmp_path / "map")
    with pytest.raises(ExportedModelError, match="no such model file or folder"):
        find_model_file(tmp_path / "absent")


def test_a_segmenter_from_model_ts_alone_segments_as_the_bundles_own(tmp_path: Path) -> None:
    """``Segmenter.from_exported`` (the Deploy app's OpenVINO engine): the embedded configs and the file's weights
    give the label map of ``Segmenter(bundle, model.pt)``; weights that do not fit the embedded network_def are an
    error naming the file."""
    bundle = REPO_ROOT / "bundles" / "distilled_student"
    make_phantom_dataset(tmp_path / "data", 1, seed=3, profile="small", workers=1, progress=False)
    (case,) = find_cases(tmp_path / "data").cases
    small = {"patch_size": [32, 32, 32], "sw_batch_size": 4, "pixdim": list(PHANTOM_PIXDIM)}
    for filters in (8, 16):
        torch.manual_seed(0)
        network = build_student(init_filters=filters)
        init_output_prior(network.conv_final, 0.5)  # random weights that label about half of the voxels
        torch.save(network.state_dict(), tmp_path / f"model{filters}.pt")
        cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def"]
        cmd += ["--filepath", str(tmp_path / f"model{filters}.ts"), "--ckpt_file", str(tmp_path / f"model{filters}.pt")]
        cmd += ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json"]
        run_checked([*cmd, "--network_def#init_filters", str(filters)], cwd=bundle)
    options = {"engine": "torch", "device": "cpu", "overrides": small, "log": lambda line: None}
    expected = Segmenter(bundle, tmp_path / "model8.pt", **options).segment(case)
    actual = Segmenter.from_exported(tmp_path / "model8.ts", **options).segment(case)
    assert 0 < (expected.labels > 0).mean() < 1
    np.testing.assert_array_equal(actual.labels, expected.labels)
    np.testing.assert_array_equal(actual.affine, expected.affine)
    # ckpt_export embeds configs/inference.json as it is (init_filters 8), not the command line's override
    with pytest.raises(ExportedModelError, match=r"model16\.ts: its weights do not fit the embedded"):
        Segmenter.from_exported(tmp_path / "model16.ts", **options)


def test_torchscript_export_embeds_the_training_grid_and_warns_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``brats-kd export --format torchscript`` embeds the ``training_geometry.json`` beside the weights (a model.ts
    exported without it ran at the bundle's 1 mm instead of the 2 mm it was trained at, without a word); without
    the file the export, and a segmenter built from the export, say which grid it runs at."""
    from kd_components.geometry import write_training_geometry

    bundle = REPO_ROOT / "bundles" / "distilled_student"
    torch.manual_seed(0)
    with_grid, without = tmp_path / "trained", tmp_path / "copied"
    for folder in (with_grid, without):
        folder.mkdir()
        torch.save(build_student().state_dict(), folder / "model.pt")
    write_training_geometry(with_grid, PHANTOM_PIXDIM, "LPS")
    for folder in (with_grid, without):
        args = ["--format", "torchscript", "--bundle", str(bundle), "--ckpt", str(folder / "model.pt")]
        assert brats_kd("export", *args, "--output", str(folder / "model.ts")) == 0
    assert read_exported(with_grid / "model.ts").geometry == {"pixdim": list(PHANTOM_PIXDIM), "orientation": "LPS"}
    assert read_exported(without / "model.ts").geometry is None
    assert "training_geometry.json is not beside the weights" in capsys.readouterr().err
    assert sorted(p.name for p in without.iterdir()) == ["model.pt", "model.ts"]  # no staging folder left

    lines: list[str] = []
    Segmenter.from_exported(without / "model.ts", engine="torch", device="cpu", log=lines.append)
    assert any("has no training_geometry.json embedded" in line and "pixdim [1.0, 1.0, 1.0]" in line for line in lines)
    lines.clear()
    Segmenter(bundle, without / "model.pt", engine="torch", device="cpu", log=lines.append)
    assert any(f"{without / 'training_geometry.json'} is not beside the weights" in line for line in lines)
    lines.clear()
    Segmenter(bundle, with_grid / "model.pt", engine="torch", device="cpu", log=lines.append)
    assert not any("warning" in line for line in lines)
