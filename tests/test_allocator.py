"""kd_components.allocator: glibc keeps freed training-sized blocks instead of returning them to the kernel."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from kd_components.allocator import tune_malloc

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
REPO = Path(__file__).resolve().parents[1]

# Eight 16 MB arrays made and freed, five times after two warm-up cycles: the minor page faults of the five.
_CYCLES = """
import json, resource, sys
import numpy as np
from kd_components.allocator import tune_malloc
applied = tune_malloc() if sys.argv[1] == "tuned" else False
def cycle():
    blocks = [np.ones(2 * 1024 * 1024) for _ in range(8)]
    del blocks
cycle(); cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(setting: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _CYCLES, setting], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt settings exist in glibc only")
def test_tuned_malloc_reuses_freed_memory_without_page_faults() -> None:
    default, tuned = _faults("default"), _faults("tuned")
    assert tuned["applied"] is True
    # with glibc's defaults the freed blocks at the heap's top are trimmed and faulted in again (tens of MB)
    assert default["faults"] > 5000
    assert tuned["faults"] < default["faults"] / 20


def test_tune_malloc_off_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRATS_KD_MALLOC", "default")
    assert tune_malloc() is False


@pytest.mark.parametrize("bundle", ["hybrid_teacher", "distilled_student"])
def test_training_configs_tune_malloc_first(bundle: str) -> None:
    config = json.loads((REPO / "bundles" / bundle / "configs" / "train.json").read_text())
    assert "$tune_malloc()" in config["initialize"]
