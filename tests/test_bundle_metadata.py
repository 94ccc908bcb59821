"""Both bundles: metadata valid against MONAI's schema and consistent with the project's conventions."""

from __future__ import annotations

import json

import pytest
from monai.bundle import verify_metadata

from kd_components.constants import MODALITIES, REGIONS
from tests.conftest import METADATA_SCHEMA, REPO_ROOT


@pytest.mark.parametrize("bundle", ["hybrid_teacher", "distilled_student"])
def test_metadata_is_valid_and_matches_the_conventions(bundle: str) -> None:
    meta_file = REPO_ROOT / "bundles" / bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]["image"]["channel_def"].values()) == list(MODALITIES)
    assert list(fmt["outputs"]["pred"]["channel_def"].values()) == list(REGIONS)
    assert fmt["inputs"]["image"]["num_channels"] == len(MODALITIES)
    assert fmt["outputs"]["pred"]["num_channels"] == len(REGIONS)
    if not METADATA_SCHEMA.exists():
        pytest.skip(f"local MONAI metadata schema not found at {METADATA_SCHEMA}")
    verify_metadata(meta_file=str(meta_file), filepath=str(METADATA_SCHEMA))
