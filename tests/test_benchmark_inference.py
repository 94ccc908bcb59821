"""The inference-cost page: ratios against the default teacher, estimated whole-volume times marked, notes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "benchmark_inference", Path(__file__).parents[1] / "scripts" / "benchmark_inference.py"
)
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def _row(network: str, patch_s: float, volume: float | None) -> dict:
    return {
        "network": network,
        "engine": "openvino",
        "precision": "fp32",
        "gflops_patch": 32.0,
        "patch_s": patch_s,
        "volume_crop_s": volume,
        "volume_full_s": volume,
        "windows": {"crop": 10, "full": 20},
        "peak_rss_gib": 1.0,
        "load_s": 0.5,
    }


def test_page_compares_with_the_default_teacher_and_marks_estimates() -> None:
    results = {
        "environment": {
            "cpu": "CPU X, 2 cores",
            "python": "3.11",
            "torch": "2.13",
            "openvino": "2026",
            "onnxruntime": "1.32",
            "nncf": "3.4",
            "date": "today",
            "command": "python scripts/benchmark_inference.py",
            "weights": "random",
        },
        "flop_rate": {"torch_gflops": 100.0, "openvino_gflops": 150.0},
        "load": [[1.0, 1.0, 1.0], [1.5, 1.0, 1.0]],
        "roi": 96,
        "overlap": 0.5,
        "shape": [4, 240, 240, 155],
        "rows": [_row("student", 0.1, 1.5), _row("default", 3.0, None)],
        "errors": ["default onnxruntime fp32: MemoryError: out of memory"],
        "end_to_end": [
            {"engine": "openvino", "precision": "fp32", "crop": True, "overlap": None, "case_s": 1.8}
            | {"first_case_s": 2.5, "command_s": 12.0, "peak_rss_gib": 1.2}
        ],
    }
    page = script.render(results, "These are the notes.")
    assert "| student | openvino | fp32 | 32.0 | 0.100 | 320 | 30.0x | 1.50 | 1.50 | 10 / 20 |" in page
    assert "| default | openvino | fp32 | 32.0 | 3.000 | 11 |  | est. 30.0 | est. 60.0 | 10 / 20 |" in page
    assert "| openvino | fp32 | on | 0.5 | 1.80 | 2.50 | 12.0 | 1.20 |" in page
    assert "## Not measured\n\n- default onnxruntime fp32: MemoryError" in page
    assert page.rstrip().endswith("These are the notes.") and "Load average (1 min) 1.00 before, 1.50 after" in page


def test_measure_config_times_one_network_and_reuses_its_export(tmp_path: Path) -> None:
    """A (network, engine, precision) row from a small volume: windows over the brain box and the whole grid, both
    timed; measuring again writes the same seeded weights, so the export cached by their hash is reused."""
    import torch

    from kd_lab.inference_benchmark import EngineConfig, measure_config

    torch.manual_seed(0)
    image = torch.zeros(4, 96, 80, 64)
    image[:, 20:60, 16:56, 8:40] = torch.randn(4, 40, 40, 32)
    volume = tmp_path / "volume.pt"
    torch.save(image, volume)
    cache = tmp_path / "cache"
    cache.mkdir()
    args = (EngineConfig("student", "openvino", "fp32"), str(volume), 32, 0.25, 1, str(cache), 60.0)
    row = measure_config(*args)
    assert row["windows"]["crop"] < row["windows"]["full"]
    assert row["patch_s"] > 0 and row["volume_crop_s"] > 0 and row["volume_full_s"] > 0
    exports = sorted(cache.glob("*.onnx"))
    assert len(exports) == 1
    measure_config(*args)
    assert sorted(cache.glob("*.onnx")) == exports


def test_deploy_timing_goes_between_the_markers_of_its_page_and_nowhere_else() -> None:
    from kd_lab.deploy_benchmark import SECTION_END, SECTION_START, render_section, replace_section

    app = {"command_s": 12.0, "setup_s": 0.4, "segment_s": 4.0, "per_case_s": 4.0, "runs": 3}
    results = {
        "shape": [4, 240, 240, 155],
        "repeats": 3,
        "folder_cases": 10,
        "first_export_s": 5.0,
        "load": [[0.1, 0.1, 0.1], [0.2, 0.2, 0.2]],
        "environment": {"command": "python scripts/benchmark_deploy.py", "date": "d", "cpu": "c", "weights": "w"},
        "app": {
            "torchscript (default)": {**app, "segment_s": 8.0, "dice_vs_reference": [1.0, 1.0, 1.0]},
            "openvino fp32": {**app, "dice_vs_reference": [0.95, 0.98, 0.96]},
        },
        "app_folder": {
            "torchscript (default)": {**app, "per_case_s": 1.5, "dice_vs_reference": None},
            "openvino fp32": {**app, "per_case_s": 0.9, "dice_vs_reference": None},
        },
        "segment": {
            "openvino fp32, brain crop": {
                "app": "openvino fp32",
                "case_s": 2.0,
                "startup_s": 7.5,
                "folder_wall_s": 15.0,
                "folder_per_case_s": 0.75,
            }
        },
    }
    section = render_section(results)
    assert section.startswith(SECTION_START) and section.endswith(SECTION_END)
    # no agreement of the reference with itself
    assert "| torchscript (default) | 12.0 | 0.4 | 8.00 | 1.50 |  |" in section
    assert "| openvino fp32 | 12.0 | 0.4 | 4.00 | 0.90 | 0.9500 / 0.9800 / 0.9600 |" in section
    assert "| openvino fp32, brain crop | 2.00 | 7.5 | 0.75 | 2.00 | 1.20 |" in section  # the app over segment
    page = f"# Title\nbefore\n{SECTION_START}\nold numbers\n{SECTION_END}\nafter\n"
    assert replace_section(page, section) == f"# Title\nbefore\n{section}\nafter\n"
    with pytest.raises(ValueError, match="has no generated part"):
        replace_section("# Title\n", section)


def test_segment_sections_give_the_ratio_to_the_path_before_and_the_start_up() -> None:
    one = {"engine": "openvino fp32", "read_s": 0.3, "network_s": 0.1, "postprocess_s": 0.1, "write_s": 0.05}
    student = {
        "this": {**one, "total_s": 0.6},
        "before": {**one, "read_s": 0.9, "postprocess_s": 1.0, "total_s": 2.1},
        "startup": {"wall_s": 9.6, "case_s": 0.6, "startup_s": 9.0},
        "folder": {"cases": 20, "wall_s": 21.0, "case_sum_s": 13.0, "walls": [21.0]},
        "agreement": {
            "3 real": [{"dice": [1.0, 0.999, 1.0], "differing_voxels": 4}, {"dice": [1.0] * 3, "differing_voxels": 0}]
        },
    }
    page = "\n".join(script.render_segment({"2 mm": student}, [4, 240, 240, 155]))
    assert "| 2 mm | openvino fp32 | this | 0.300 | — | 0.100 | 0.100 | 0.050 | 0.600 | 3.5x |" in page  # no check_s
    student["this"]["check_s"] = 0.05
    page = "\n".join(script.render_segment({"2 mm": student}, [4, 240, 240, 155]))
    assert "| 2 mm | openvino fp32 | this | 0.300 | 0.050 | 0.100 | 0.100 | 0.050 | 0.600 | 3.5x |" in page
    assert "| 2 mm | 20 | 21.0 | 0.60 | 13.0 | 9.6 | 9.0 |" in page  # (21.0 - 9.0) / 20 per case in the folder
    assert "| 2 mm | 3 real | 1.0000 / 0.9995 / 1.0000 | 0.9990 | 4 |" in page
    assert script.render_segment({}, [4, 1, 1, 1]) == []
