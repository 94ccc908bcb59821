"""The scale benchmark's pieces (``kd_lab.training_scale``): datalist subsets, the epoch estimate, the memory
sampler, and the pre-store pipeline it compares against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kd_lab.training_scale import TreeMemory, _in_memory_cache, bundle_parser, epoch_hours, subset_datalist


def test_subset_keeps_the_first_cases_in_folds_of_their_own(tmp_path: Path) -> None:
    entries = [{"case_id": f"BraTS-SYN-{i:05d}-000", "label": f"{i}.nii.gz", "fold": 1} for i in range(12)]
    datalist = tmp_path / "datalist_12.json"
    datalist.write_text(json.dumps({"training": entries[::-1], "testing": [{"image": "x"}]}))
    subset = json.loads(subset_datalist(datalist, 8).read_text())
    assert [e["case_id"] for e in subset["training"]] == [e["case_id"] for e in entries[:8]]
    assert sorted({e["fold"] for e in subset["training"]}) == [0, 1, 2, 3, 4]  # fold 0 validates
    assert subset["testing"] == []


def test_epoch_estimate_overlaps_loading_only_with_workers() -> None:
    assert epoch_hours(2.0, 1800, 0.5, overlapped=True) == 1.0  # the step sets the pace
    assert epoch_hours(0.5, 1800, 2.0, overlapped=True) == 1.0  # the loader does
    assert epoch_hours(2.0, 1800, 0.5, overlapped=False) == 1.25  # loaded in the main process: both, in turn


def test_memory_sampler_sees_an_allocation() -> None:
    with TreeMemory(interval=0.01) as memory:
        block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
        block.sum()
    assert memory.peak > 64 * 1024 * 1024


def test_pre_store_pipeline_is_the_in_memory_cache_without_the_crop(tmp_path: Path) -> None:
    parser = bundle_parser("teacher", tmp_path / "datalist.json", tmp_path / "store")
    targets = [t.get("_target_") for t in parser["base_transforms"]]
    assert "kd_components.transforms.CropToBraind" in targets
    _in_memory_cache(parser)
    assert "kd_components.transforms.CropToBraind" not in [t.get("_target_") for t in parser["base_transforms"]]
    assert len(parser["base_transforms"]) == len(targets) - 1
    for section, data in (("train", "@train_datalist"), ("validate", "@val_datalist")):
        dataset = parser[f"{section}#dataset"]
        assert (dataset["_target_"], dataset["data"], dataset["cache_rate"]) == ("CacheDataset", data, 1.0)
