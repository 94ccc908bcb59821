"""Bundle settings: wrong override types are named before training; flags typed on the command line are read right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from kd_components.config_checks import SETTING_RULES, BundleSettingError, as_bool, check_settings
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


def test_store_of_preprocessed_cases_must_be_a_folder_that_can_be(tmp_path: Path) -> None:
    for good in ("", str(tmp_path), str(tmp_path / "new" / "store")):
        assert check_settings(preprocessed_dir=good) == {"preprocessed_dir": good}
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    expected = r"--preprocessed_dir .*expected a folder, or one that can be made"
    for bad in (str(blocker), str(blocker / "store")):
        with pytest.raises(BundleSettingError, match=expected):
            check_settings(preprocessed_dir=bad)


def test_unknown_settings_pass_unchecked() -> None:
    assert check_settings(anything="goes") == {"anything": "goes"}


@pytest.mark.parametrize("bundle", ["hybrid_teacher", "distilled_student"])
def test_every_bundle_setting_is_listed_once_and_has_a_rule(bundle: str) -> None:
    """A setting's value lives at the top of ``train.json``; ``settings`` lists it (checked and tracked from
    there) and ``SETTING_RULES`` says what it may hold. Adding a setting and forgetting either fails here."""
    config = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "train.json").read_text())
    settings = config["settings"]
    assert all(value == f"@{name}" for name, value in settings.items()), settings
    assert not [name for name in settings if name not in SETTING_RULES], "settings without a rule in SETTING_RULES"

    def is_value(value: object) -> bool:  # a number, a flag, a text or a list of them: not an expression or component
        if isinstance(value, list):
            return all(is_value(v) for v in value)
        return isinstance(value, bool | int | float) or (isinstance(value, str) and value[:1] not in "$@")

    literals = {name for name, value in config.items() if is_value(value)}
    assert literals - {"bundle_root"} <= set(settings), f"top-level values not in settings: {literals - set(settings)}"
    mlflow = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "mlflow.json").read_text())
    assert mlflow["configs"]["mlflow_params"]["values"] == "@settings"


@pytest.mark.parametrize("bundle", ["hybrid_teacher", "distilled_student"])
def test_the_bundle_defaults_pass_the_checks(bundle: str) -> None:
    parser = ConfigParser()
    parser.read_config(REPO_ROOT / "bundles" / bundle / "configs" / "train.json")
    settings = parser.get_parsed_content("settings")
    assert check_settings(settings) == settings
