"""Bundle settings: wrong override types are named before training; flags typed on the command line are read right."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser

from kd_components.config_checks import BundleSettingError, as_bool, check_settings
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *((True, True), (False, False), (1, True), (0, False), ("false", False), ("False", False), ("TRUE", True)),
        *(("no", False), ("yes", True), ("0", False), ("1", True), ("off", False), ("on", True)),
    ],
)
def test_as_bool_reads_command_line_spellings(value: object, expected: bool) -> None:
    assert as_bool(value, "flag") is expected


@pytest.mark.parametrize("value", ["maybe", 2, 0.5, None, [True]])
def test_as_bool_rejects_other_values_by_name(value: object) -> None:
    with pytest.raises(BundleSettingError, match="'use_unlabelled' must be true or false"):
        as_bool(value, "use_unlabelled")


def test_student_reads_use_unlabelled_false_from_the_command_line_as_false() -> None:
    """Fire passes ``--use_unlabelled false`` as the string "false", which Python would take as true."""
    for value, expected in (("false", False), ("true", True), (False, False)):
        parser = ConfigParser()
        parser.read_config(REPO_ROOT / "bundles" / "distilled_student" / "configs" / "train.json")
        parser["use_unlabelled"] = value
        assert parser.get_parsed_content("unlabelled_enabled") is expected


def test_check_settings_accepts_and_returns_good_settings() -> None:
    good = {"epochs": 3, "learning_rate": 1e-3, "patch_size": [64, 64, 64], "seed": 0, "use_unlabelled": "false"}
    assert check_settings(**good) == good


def test_check_settings_lists_every_wrong_setting() -> None:
    bad = {"epochs": "abc", "learning_rate": -1.0, "patch_size": 64, "fold": 1.5, "seed": True, "beta": float("nan")}
    with pytest.raises(BundleSettingError) as info:
        check_settings(**bad, batch_size=2)
    message = str(info.value)
    for name in bad:
        assert f"--{name} " in message
    assert "--batch_size" not in message
    assert "'abc' (str): expected a positive integer" in message
    assert "expected a list of three positive integers" in message


def test_unknown_settings_pass_unchecked() -> None:
    assert check_settings(anything="goes") == {"anything": "goes"}
