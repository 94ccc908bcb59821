"""Checks of bundle settings: a wrong override is an error that names the setting, before anything trains.

Each bundle's ``train.json`` lists its settings once, under ``settings`` (``{"epochs": "@epochs", ...}``):
``checked_settings`` checks them with :func:`check_settings` and ``configs/mlflow.json`` records them as the
run's parameters. :data:`SETTING_RULES` is the one home of what each setting may hold; a test fails when a
bundle setting has no rule here.

``python -m monai.bundle run ... --epochs abc`` hands the bundle the string ``"abc"``; Python Fire turns
``--use_unlabelled false`` into the string ``"false"``, which is true in Python. Without a check such
values surface much later as an obscure error deep in Ignite, or are silently misread. Bundle configs
call :func:`check_settings` first in ``training``/``run`` and :func:`as_bool` wherever a flag is read.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import torch

from kd_components.data.guidance import UNLABELLED_SAMPLING
from kd_components.data.mixing import MIXING_MODES
from kd_components.losses.feature import FEATURE_DISTANCES
from kd_components.losses.terms import PSEUDO_LABEL_WEIGHTINGS, SCALE_WEIGHT_SOURCES
from kd_components.networks.hybrid import FEATURE_SOURCES

__all__ = ["SETTING_RULES", "BundleSettingError", "as_bool", "check_settings"]

_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off", ""})

logger = logging.getLogger(__name__)


class BundleSettingError(ValueError):
    """A bundle setting (a config value or a command-line override) has the wrong type or value."""


def as_bool(value: Any, name: str = "value") -> bool:
    """``value`` as a bool: ``True``/``False``, 0/1, or the strings true/false, yes/no, on/off, 1/0 (any case).

    Raises:
        BundleSettingError: for anything else (e.g. ``"maybe"`` or ``2``), naming ``name``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise BundleSettingError(f"setting {name!r} must be true or false, got {value!r} ({type(value).__name__})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _non_negative_int(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _positive_number(value: Any) -> bool:
    return _is_number(value) and value > 0


def _non_negative_number(value: Any) -> bool:
    return _is_number(value) and value >= 0


def _fraction(value: Any) -> bool:
    return _is_number(value) and 0 <= value < 1


def _patch(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 3 and all(_positive_int(v) for v in value)


def _flag(value: Any) -> bool:
    try:
        as_bool(value)
    except BundleSettingError:
        return False
    return True


def _auto_or_flag(value: Any) -> bool:
    """``"auto"`` (resolved per device by the bundle) or a flag."""
    return value == "auto" or _flag(value)


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _folder_to_be(value: Any) -> bool:
    """A folder, or a path whose nearest existing parent is a folder that can be written (so it can be made);
    ``""`` (a default elsewhere) passes."""
    if not isinstance(value, str):
        return False
    path = Path(value).expanduser().absolute()
    if not value or path.is_dir():
        return True
    while not path.exists():
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK)


def _region_volumes(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and set(value) <= {"TC", "WT", "ET"}
        and all(_non_negative_number(v) for v in value.values())
    )


def _one_of(choices: Sequence[str]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), " or ".join(repr(c) for c in choices)


def _available_device(value: Any) -> bool:
    try:
        device = torch.device(value)
    except (TypeError, RuntimeError, ValueError):
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    return device.type == "cpu" or (device.type == "mps" and torch.backends.mps.is_available())


def _module_pairs(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) > 0
        and all(isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(m, str) for m in p) for p in value)
    )


def _spacing(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 3 and all(_positive_number(v) for v in value)


def _axcodes(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 3
        and sorted(next((i for i, pair in enumerate(("LR", "PA", "IS")) if c in pair), -1) for c in value.upper())
        == [0, 1, 2]
    )


#: Setting name -> (test, what is expected). Settings a bundle does not pass are not checked.
SETTING_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (_positive_int, "a positive integer"),
    "val_interval": (_positive_int, "a positive integer"),
    "batch_size": (_positive_int, "a positive integer"),
    "num_samples": (_positive_int, "a positive integer"),
    "num_workers": (_non_negative_int, "a non-negative integer"),
    "sw_batch_size": (_positive_int, "a positive integer"),
    "log_interval": (_positive_int, "a positive integer"),
    "fold": (_non_negative_int, "a non-negative integer"),
    "seed": (_non_negative_int, "a non-negative integer"),
    "learning_rate": (_positive_number, "a positive number"),
    "weight_decay": (_non_negative_number, "a non-negative number"),
    "fusion_lr_factor": (_positive_number, "a positive number (the fusion scale logits' learning rate over the base)"),
    "alpha": (_non_negative_number, "a non-negative number"),
    "beta": (_non_negative_number, "a non-negative number"),
    "temperature": (_positive_number, "a positive number"),
    "preprocessed_dir": (_folder_to_be, "a folder, or one that can be made there (empty: the default store)"),
    "sw_overlap": (_fraction, "a number in [0, 1)"),
    "patch_size": (_patch, "a list of three positive integers, e.g. [96, 96, 96]"),
    "pixdim": (_spacing, "a list of three positive voxel sizes in mm, e.g. [1.0, 1.0, 1.0]"),
    "orientation": (_axcodes, "three axis codes, one of L/R, one of P/A, one of I/S in any order, e.g. 'LPS'"),
    "plausibility_check": (_flag, "true or false"),
    "use_unlabelled": (lambda v: _flag(v) or str(v).strip().lower() == "auto", "true, false or auto"),
    "unlabelled_mixing": _one_of(MIXING_MODES),
    "unlabelled_split": (_text, "the name of a datalist split, e.g. 'testing' (a string)"),
    "unlabelled_sampling": _one_of(UNLABELLED_SAMPLING),
    "unlabelled_tumour_share": (lambda v: _is_number(v) and 0 <= v <= 1, "a number between 0 and 1"),
    "teacher_guidance_cache": (_text, "a folder (a string)"),
    "pseudo_weight": (_non_negative_number, "a non-negative number"),
    "pseudo_threshold": (lambda v: _is_number(v) and 0.5 < v <= 1, "a number in (0.5, 1]"),
    "pseudo_weighting": _one_of(PSEUDO_LABEL_WEIGHTINGS),
    "unlabelled_ramp_up": (_non_negative_int, "a non-negative integer (iterations)"),
    "feature_distance": _one_of(tuple(FEATURE_DISTANCES)),
    "feature_scale_weights": _one_of(SCALE_WEIGHT_SOURCES),
    "feature_sources": (
        lambda v: isinstance(v, list | tuple) and 0 < len(v) == len(set(v)) and all(x in FEATURE_SOURCES for x in v),
        f"a non-empty list of distinct feature sources among {list(FEATURE_SOURCES)}",
    ),
    "feature_pairs": (_module_pairs, "a non-empty list of [teacher_module_path, student_module_path] pairs"),
    "data_list_file_path": (_text, "a path (a string)"),
    "output_dir": (_text, "a path (a string)"),
    "infer_split": (_text, "the name of a datalist split, e.g. 'testing' (a string)"),
    "device": (
        _available_device,
        f"an available device, e.g. 'cpu' or 'cuda:0' (CUDA devices here: {torch.cuda.device_count()})",
    ),
    "dataset_dir": (_text, "a path (a string)"),
    "amp": (_flag, "true or false"),
    "cpu_bf16": (_auto_or_flag, "'auto', true or false"),
    "channels_last": (_auto_or_flag, "'auto', true or false"),
    "resume_from": (_text, "a path, 'latest' or '' (a string)"),
    "teacher_ckpt": (_text, "a path (a string)"),
    "teacher_config": (_text, "the name of a teacher configuration (a string)"),
    "postprocess": (_flag, "true or false"),
    "postprocess_min_mm3": (
        _region_volumes,
        "volumes in mm³ >= 0 by region, e.g. {'TC': 0, 'WT': 100, 'ET': 20} (regions TC, WT, ET)",
    ),
    "postprocess_et_to_netc_mm3": (_non_negative_number, "a volume in mm³ >= 0"),
}


def check_settings(settings: Mapping[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """Check bundle settings against :data:`SETTING_RULES`, log them, and return them unchanged.

    Every wrong setting is reported at once. In a bundle config::

        "settings": {"epochs": "@epochs", "seed": "@seed", ...},
        "checked_settings": {"_target_": "kd_components.config_checks.check_settings", "settings": "@settings"},
        "training": ["@checked_settings", "$monai.utils.set_determinism(seed=@seed)", "$@train#trainer.run()"]

    Args:
        settings: setting name -> value.
        more: further settings as keyword arguments.

    Raises:
        BundleSettingError: listing each setting with a wrong type or value, what it got and what is expected.
    """
    settings = {**(settings or {}), **more}
    problems = []
    for name, value in settings.items():
        rule = SETTING_RULES.get(name)
        if rule is not None and not rule[0](value):
            problems.append(f"  --{name} {value!r} ({type(value).__name__}): expected {rule[1]}")
    if problems:
        raise BundleSettingError("invalid bundle settings:\n" + "\n".join(problems))
    logger.info("settings: %s", _describe(settings))
    return settings


def _describe(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())
