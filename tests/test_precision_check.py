"""kd_lab.precision: the float32 / bf16 comparison's table."""

from __future__ import annotations

import pytest

from kd_components.io import replace_between
from kd_lab.demo import DemoSettings
from kd_lab.precision import SECTION_END, SECTION_START, ChainResult, render_section


def test_section_lists_every_chain_and_the_mean_per_precision() -> None:
    results = [
        ChainResult("float32", 1, 0.80, 0.70, 600.0, 300.0),
        ChainResult("bf16 autocast", 1, 0.84, 0.74, 300.0, 150.0),
        ChainResult("float32", 2, 0.90, 0.80, 610.0, 310.0),
        ChainResult("bf16 autocast", 2, 0.86, 0.76, 320.0, 160.0),
    ]
    section = render_section(results, DemoSettings(), "header line")
    lines = section.splitlines()
    assert lines[0] == SECTION_START and lines[-1] == SECTION_END and lines[1] == "header line"
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| precision")]
    assert len(rows) == 6
    assert "| float32 | 1 | 0.800 | 0.700 | 10.0 min | 5.0 min |" in rows
    assert "| **float32, mean** | 2 seeds | 0.850 | 0.750 | | |" in rows
    assert "| **bf16 autocast, mean** | 2 seeds | 0.850 | 0.750 | | |" in rows
    page = f"# Title\n\n{SECTION_START}\nold\n{SECTION_END}\n\nnotes\n"
    assert replace_between(page, section, SECTION_START, SECTION_END) == f"# Title\n\n{section}\n\nnotes\n"


def test_replace_between_names_the_missing_markers() -> None:
    with pytest.raises(ValueError, match="precision-check:start"):
        replace_between("# no markers\n", "x", SECTION_START, SECTION_END)
