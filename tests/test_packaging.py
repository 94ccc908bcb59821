"""Bundle packaging: the zip's layout and metadata, bad input, and a packed bundle installed by MONAI and run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import download, verify_metadata

from kd_components.packaging import BundlePackagingError, bundle_files, package_bundle, packaged_metadata
from tests.conftest import (
    METADATA_SCHEMA,
    REPO_ROOT,
    TEACHER_BUNDLE_TINY,
    assert_label_map_of,
    brats_kd,
    build_tiny_teacher,
    bundle_command,
    run_checked,
    write_phantom_datalist,
)

BUNDLES = REPO_ROOT / "bundles"


def _copy_bundle(name: str, dst: Path) -> Path:
    """A copy of a repository bundle without models or outputs, which a test may add weights to."""
    return Path(shutil.copytree(BUNDLES / name, dst / name, ignore=shutil.ignore_patterns("models", "eval")))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["hybrid_teacher", "distilled_student"])
def test_zip_has_monai_layout_and_valid_versioned_metadata(name: str, tmp_path: Path) -> None:
    bundle = BUNDLES / name
    meta_before = (bundle / "configs" / "metadata.json").read_bytes()
    own_version = json.loads(meta_before)["version"]
    args = ["--bundle", str(bundle), "--output-dir", str(tmp_path / "dist"), "--version", "9.0.0"]
    assert brats_kd("package", *args, "--changelog", "packaged for a test") == 0
    path = tmp_path / "dist" / f"{name}_v9.0.0.zip"
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        meta = json.loads(zf.read(f"{name}/configs/metadata.json"))
        zf.extractall(tmp_path / "unzipped")
    expected = {f"{name}/{p.relative_to(bundle).as_posix()}" for p in (bundle / "configs").iterdir()}
    expected |= {f"{name}/docs/README.md", f"{name}/LICENSE"}
    assert set(names) == expected and not any("/models/" in n for n in names)
    assert meta["version"] == "9.0.0"
    assert next(iter(meta["changelog"].items())) == ("9.0.0", "packaged for a test")
    assert own_version in meta["changelog"]  # earlier entries are kept
    assert (bundle / "configs" / "metadata.json").read_bytes() == meta_before  # the bundle is not changed
    if METADATA_SCHEMA.exists():
        meta_file = tmp_path / "unzipped" / name / "configs" / "metadata.json"
        verify_metadata(meta_file=str(meta_file), filepath=str(METADATA_SCHEMA))
    # the same bundle gives the same bytes; the default version is the metadata's
    assert (
        brats_kd("package", *args, "--changelog", "packaged for a test", "--output-dir", str(tmp_path / "again")) == 0
    )
    assert _sha256(path) == _sha256(tmp_path / "again" / path.name)
    assert package_bundle(bundle, tmp_path / "dist").name == f"{name}_v{own_version}.zip"


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BundlePackagingError, match="no bundle folder"):
        package_bundle(tmp_path / "absent", tmp_path / "dist")
    (tmp_path / "not_a_bundle" / "configs").mkdir(parents=True)
    with pytest.raises(BundlePackagingError, match=r"not a MONAI bundle: .*metadata\.json is missing"):
        package_bundle(tmp_path / "not_a_bundle", tmp_path / "dist")
    (tmp_path / "not_a_bundle" / "configs" / "metadata.json").write_text("{")
    with pytest.raises(BundlePackagingError, match="not valid JSON"):
        package_bundle(tmp_path / "not_a_bundle", tmp_path / "dist")
    bundle = _copy_bundle("hybrid_teacher", tmp_path)
    with pytest.raises(BundlePackagingError, match=r"--with-weights needs trained weights at .*models/model\.pt"):
        bundle_files(bundle, with_weights=True)
    with pytest.raises(BundlePackagingError, match="no changelog entry"):
        packaged_metadata({"version": "0.1.0", "changelog": {"0.1.0": "first"}}, "0.3.0")
    with pytest.raises(BundlePackagingError, match=r"MAJOR\.MINOR\.PATCH"):
        packaged_metadata({"version": "0.1.0", "changelog": {}}, "v1", changelog="x")
    (bundle / "LICENSE").unlink()
    with pytest.raises(BundlePackagingError, match="lacks LICENSE"):
        bundle_files(bundle)
    assert brats_kd("package", "--bundle", str(tmp_path / "absent"), "--output-dir", str(tmp_path / "dist")) == 1
    assert "error: no bundle folder" in capsys.readouterr().err
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())  # nothing half-written


def test_packed_teacher_with_weights_installs_with_monai_download_and_runs_inference(tmp_path: Path) -> None:
    # a trained bundle's stand-in: the repository bundle plus a freshly initialised tiny teacher's weights
    bundle = _copy_bundle("hybrid_teacher", tmp_path / "src")
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    network = build_tiny_teacher()
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    (bundle / "models" / "latest_epoch=1.pt").write_bytes(b"training state, not for packages")
    args = ["--bundle", str(bundle), "--output-dir", str(tmp_path / "dist"), "--with-weights"]
    assert brats_kd("package", *args) == 0
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    zip_path = tmp_path / "dist" / f"hybrid_teacher_v{version}.zip"
    with zipfile.ZipFile(zip_path) as zf:
        assert [n for n in zf.namelist() if "/models/" in n] == ["hybrid_teacher/models/model.pt"]

    installed = tmp_path / "installed"
    download(name="hybrid_teacher", url=zip_path.resolve().as_uri(), bundle_dir=str(installed))
    root = installed / "hybrid_teacher"
    assert (root / "configs" / "inference.json").is_file() and (root / "models" / "model.pt").is_file()

    data, datalist = write_phantom_datalist(tmp_path, 3, unlabelled=1, num_folds=2, seed=7)
    overrides = {
        **TEACHER_BUNDLE_TINY,
        "bundle_root": str(root),
        "dataset_dir": str(data),
        "data_list_file_path": str(datalist),
    }
    configs = root / "configs"
    cmd = bundle_command([configs / "inference.json"], overrides, run_id=None, logging_file=configs / "logging.conf")
    # run outside the repository: the installed bundle needs only the installed kd_components package
    run_checked(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})

    (case,) = json.loads(datalist.read_text())["testing"]
    saved = assert_label_map_of(root / "eval" / f"{case['case_id']}.nii.gz", data / case["image"][0])
    assert saved.get_data_dtype() == np.uint8
    assert (root / "eval" / "volumes.csv").is_file()
