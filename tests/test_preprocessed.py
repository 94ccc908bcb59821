"""The store of preprocessed training cases (``kd_components.data.preprocessed``): compact files of brain-cropped
cases, read back as computed, keyed by the files and the preprocessing, shared by both bundles, safe to lose."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Lambdad

from kd_components.data.preprocessed import (
    PREPROCESSED_ENV,
    PreprocessedDataset,
    case_fingerprint,
    default_preprocessed_root,
    preprocessed_cache_dir,
)
from kd_components.segment.crop import brain_box
from kd_components.transforms import CropToBraind
from tests.conftest import REPO_ROOT, phantom_overrides

BUNDLES = {name: REPO_ROOT / "bundles" / name for name in ("hybrid_teacher", "distilled_student")}


def _parser(bundle: Path, phantoms: Mapping[str, Path], store: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    for key, value in {**phantom_overrides(phantoms, bundle), "preprocessed_dir": str(store)}.items():
        parser[key] = value
    return parser


class _Counted:
    """A deterministic transform that counts its calls (how often a case is preprocessed)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return data


def _synthetic(item: Mapping[str, Any]) -> dict[str, Any]:
    """A case as the bundles' base transforms leave it: a float32 image with a zero background, 0/1 regions."""
    rng = np.random.default_rng(int(item["seed"]))
    image = torch.zeros(4, 12, 10, 8)
    image[:, 2:10, 1:9, 1:7] = torch.as_tensor(rng.normal(size=(4, 8, 8, 6)), dtype=torch.float32)
    label = (image[:3] > 1.0).float()
    affine = torch.diag(torch.tensor([-2.0, -2.0, 2.0, 1.0], dtype=torch.float64))
    meta = {"affine": affine, "case_id": item["case_id"], "space": "LPS", "spatial_shape": np.array([12, 10, 8])}
    return {**item, "image": MetaTensor(image, meta=dict(meta)), "label": MetaTensor(label, meta=dict(meta))}


def _dataset(tmp_path: Path, items: list[dict[str, Any]], counter: _Counted) -> PreprocessedDataset:
    transforms = [Lambdad(keys="seed", func=lambda s: s), counter, _synthetic]
    return PreprocessedDataset(items, transforms, tmp_path / "store", cache_n_trans=3)


def test_case_is_stored_compactly_and_read_back_as_computed(tmp_path: Path) -> None:
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(b"x")
    items = [{"case_id": "BraTS-GLI-00001-000", "seed": 1, "image": str(source), "fold": 0}]
    counter = _Counted()
    first = _dataset(tmp_path, items, counter)
    computed = first[0]
    assert counter.calls == 1
    files = list((tmp_path / "store").glob("*.pt"))
    assert [f.name for f in files] == [first.cache_path(items[0]).name]
    stored = torch.load(files[0], weights_only=True)["case"]
    assert stored["image"]["tensor"].dtype == torch.float16 and stored["label"]["tensor"].dtype == torch.uint8

    again = _dataset(tmp_path, items, second := _Counted())[0]  # a rerun: read, not computed
    assert second.calls == 0
    reference = _synthetic(items[0])
    for case in (computed, again):  # the first epoch sees what later reads see
        assert case["image"].dtype == torch.float32 and case["label"].dtype == torch.float32
        torch.testing.assert_close(case["image"].as_tensor(), reference["image"].as_tensor(), rtol=1e-3, atol=1e-3)
        assert torch.equal(case["label"].as_tensor(), reference["label"].as_tensor())
        assert torch.equal(case["image"].affine, reference["image"].affine)
        assert case["image"].meta["case_id"] == "BraTS-GLI-00001-000" and case["fold"] == 0
    assert torch.equal(computed["image"], again["image"])


def test_key_follows_the_files_not_the_fold(tmp_path: Path) -> None:
    scan = tmp_path / "t1c.nii.gz"
    scan.write_bytes(b"one")
    item = {"image": [str(scan)], "label": str(scan), "fold": 0}
    assert case_fingerprint(item) == case_fingerprint({**item, "fold": 3})
    before = case_fingerprint(item)
    scan.write_bytes(b"edited")  # another size (and time): the case is preprocessed again
    assert case_fingerprint(item) != before


def test_unreadable_file_is_preprocessed_again_and_replaced(tmp_path: Path) -> None:
    items = [{"case_id": "BraTS-GLI-00002-000", "seed": 2}]
    dataset = _dataset(tmp_path, items, counter := _Counted())
    path = dataset.cache_path(items[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a torch file")  # a disk error, a foreign file
    with pytest.warns(UserWarning, match=f"preprocessed case {path} cannot be read"):
        case = dataset[0]
    assert counter.calls == 1 and case["image"].shape == (4, 12, 10, 8)
    assert torch.load(path, weights_only=True)["format"] == "brats-kd-preprocessed"


def test_store_that_cannot_be_written_trains_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    items = [{"case_id": "BraTS-GLI-00003-000", "seed": 3}]
    dataset = _dataset(tmp_path, items, counter := _Counted())

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    assert dataset[0]["image"].shape == (4, 12, 10, 8) and dataset[0]["label"].shape == (3, 12, 10, 8)
    assert counter.calls == 2  # nothing stored: every read preprocesses
    assert "cannot write preprocessed cases" in caplog.text and "No space left" in caplog.text
    assert not list((tmp_path / "store").iterdir())  # no temporary left behind


def test_store_folder_is_keyed_by_the_preprocessing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    one_mm = preprocessed_cache_dir(tmp_path, [1.0, 1.0, 1.0], "LPS", 3)
    assert Path(one_mm).parent == tmp_path and "LPS-1x1x1mm-et3" in one_mm
    others = {
        preprocessed_cache_dir(tmp_path, [2.0, 2.0, 2.0], "LPS", 3),
        preprocessed_cache_dir(tmp_path, [1.0, 1.0, 1.0], "RAS", 3),
        preprocessed_cache_dir(tmp_path, [1.0, 1.0, 1.0], "LPS", 4),
    }
    assert one_mm not in others and len(others) == 3
    monkeypatch.setenv(PREPROCESSED_ENV, str(tmp_path / "elsewhere"))
    assert default_preprocessed_root() == str(tmp_path / "elsewhere")
    assert preprocessed_cache_dir("", [1, 1, 1], "LPS", 3).startswith(str(tmp_path / "elsewhere"))


def test_crop_is_the_box_inference_slides_over() -> None:
    image = torch.zeros(4, 40, 30, 20)
    image[1, 10:20, 5:25, 3:9] = 1.5  # one channel is enough to be brain
    cropped = CropToBraind(["image", "label"])({"image": MetaTensor(image), "label": MetaTensor(image[:3].clone())})
    box = brain_box(image)
    assert box is not None
    assert torch.equal(cropped["image"].as_tensor(), image[(slice(None), *box)])
    assert cropped["label"].shape[1:] == cropped["image"].shape[1:]
    assert cropped["image"].affine[:3, 3].tolist() == [float(s.start) for s in box]  # the grid moves with the crop


def test_bundles_share_one_store_of_cropped_cases(phantom_data: dict[str, Path], tmp_path: Path) -> None:
    teacher, student = (_parser(BUNDLES[name], phantom_data, tmp_path) for name in BUNDLES)
    folder = teacher.get_parsed_content("preprocessed_cache")
    assert folder == student.get_parsed_content("preprocessed_cache")
    assert Path(folder).parent == tmp_path

    teacher_set = teacher.get_parsed_content("validate#dataset")
    case = teacher_set[0]
    written = sorted(Path(folder).glob("*.pt"))
    assert len(written) == 1
    box = brain_box(case["image"])
    assert box is not None  # already cropped: the box with its margin is the whole grid
    assert [(s.start, s.stop) for s in box] == [(0, n) for n in case["image"].shape[1:]]

    student_set = student.get_parsed_content("validate#dataset")
    assert student_set.cache_path(student_set.data[0]) == written[0]  # the student reads the teacher's file
    mtime = os.stat(written[0]).st_mtime_ns
    assert torch.equal(student_set[0]["image"], case["image"]) and os.stat(written[0]).st_mtime_ns == mtime


def test_values_that_do_not_fit_the_compact_dtypes_are_stored_as_computed(tmp_path: Path) -> None:
    def unusual(item: dict[str, Any]) -> dict[str, Any]:
        image = torch.full((4, 3, 3, 3), 1.0e6)  # raw intensities, beyond float16's 65504
        label = torch.full((3, 3, 3, 3), 0.5)  # soft labels, not 0/1
        return {**item, "image": MetaTensor(image), "label": MetaTensor(label)}

    items = [{"case_id": "BraTS-GLI-00004-000"}]
    dataset = PreprocessedDataset(items, [Lambdad(keys="case_id", func=str), unusual], tmp_path, cache_n_trans=2)
    case = dataset[0]
    stored = torch.load(dataset.cache_path(items[0]), weights_only=True)["case"]
    assert stored["image"]["tensor"].dtype == torch.float32 and stored["label"]["tensor"].dtype == torch.float32
    assert float(case["image"].max()) == 1.0e6 and float(case["label"].max()) == 0.5


def test_a_store_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=f"store of preprocessed cases {blocker / 'store'} cannot be created"):
        PreprocessedDataset([], [Lambdad(keys="x", func=str)], blocker / "store", cache_n_trans=1)
