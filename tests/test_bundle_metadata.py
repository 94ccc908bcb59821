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


@pytest.mark.parametrize("bundle", ["hybrid_teacher", "distilled_student"])
def test_metadata_states_the_pinned_torch(bundle: str) -> None:
    """``pytorch_version`` follows the one pin, ``requirements-torch.txt``."""
    pins = [
        line for line in (REPO_ROOT / "requirements-torch.txt").read_text().splitlines() if line.startswith("torch")
    ]
    assert len(pins) == 1 and pins[0].startswith("torch==")
    meta = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())
    assert meta["pytorch_version"] == pins[0].removeprefix("torch==")


def test_student_metadata_states_the_students_parameter_count() -> None:
    """The description's "N M parameters" is the network_def of the student's inference.json, rounded."""
    import re

    from monai.bundle import ConfigParser

    from kd_components.tracking import count_parameters

    bundle = REPO_ROOT / "bundles" / "distilled_student"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    stated = re.findall(r"([\d.]+) M parameters", meta["description"])
    config = ConfigParser()
    config.read_config(str(bundle / "configs" / "inference.json"))
    assert len(stated) == 1
    assert float(stated[0]) == round(count_parameters(config.get_parsed_content("network_def")) / 1e6, 2)
