"""A bundle run that this project refuses ends in one line naming the problem, not MONAI's wrapped traceback."""

from __future__ import annotations

import os
import subprocess

import pytest

from kd_components.bundle_errors import TRACEBACK_ENV, user_error
from kd_components.config_checks import BundleSettingError
from tests.conftest import REPO_ROOT, bundle_command

CONFIGS = REPO_ROOT / "bundles" / "distilled_student" / "configs"


def test_the_user_error_is_found_below_the_wrappers_and_a_bug_is_not_one() -> None:
    try:
        try:
            raise BundleSettingError("invalid bundle settings: --epochs -1")
        except BundleSettingError as err:
            raise RuntimeError("Failed to instantiate component") from err
    except RuntimeError as wrapped:
        assert isinstance(user_error(wrapped), BundleSettingError)
    assert user_error(RuntimeError("a bug")) is None
    try:
        try:
            raise BundleSettingError("a setting")
        except BundleSettingError:
            raise KeyError("a bug while handling it")  # noqa: B904 (its context only, not its cause)
    except KeyError as bug:
        assert user_error(bug) is None
    assert user_error(ValueError("a plain ValueError is not one of ours")) is None


@pytest.mark.parametrize("traceback", [False, True])
def test_a_refused_setting_ends_the_run_in_one_line(traceback: bool) -> None:
    """``--epochs -1``: 59 lines of traceback whose last was MONAI's ``RuntimeError: Failed to instantiate component
    ...``; now ``error: invalid bundle settings:`` and the setting, exit status 1 (the traceback on request)."""
    cmd = bundle_command([CONFIGS / "train.json", CONFIGS / "demo.json"], {"epochs": -1})
    env = {**os.environ, "OMP_NUM_THREADS": "1", TRACEBACK_ENV: "1" if traceback else ""}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert result.returncode == 1
    assert "--epochs -1 (int): expected a positive integer" in result.stderr
    if traceback:
        assert "Traceback" in result.stderr and "Failed to instantiate component" in result.stderr
    else:
        assert "Traceback" not in result.stderr
        assert result.stderr.splitlines()[-3:-1] == [
            "error: invalid bundle settings:",
            "  --epochs -1 (int): expected a positive integer",
        ]
