"""Plausibility of a case: a whole skull-stripped brain, the modalities in their places. Checked on phantoms (which
pass) and on the same phantoms made implausible as a user could: modalities swapped, one file for two, a slice, a
volume far larger than a brain."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from kd_components.cli import main
from kd_components.constants import MODALITIES, case_file_name
from kd_components.data.phantoms.dataset import generate_case
from kd_components.data.plausibility import BRAIN_ML_RANGE, plausibility_problems
from kd_components.geometry import write_training_geometry
from kd_components.networks.student import build_student
from kd_lab.plausibility_survey import PAIRS, swapped
from tests.conftest import PHANTOM_PIXDIM

pytestmark = pytest.mark.phantoms(num_cases=2, unlabelled=0, num_folds=2, teacher=False)


def _case(phantom_data: dict[str, Path], index: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Phantom ``index``'s four scans ``(4, H, W, D)``, its affine and file names."""
    case = [p for p in sorted(phantom_data["data"].iterdir()) if p.is_dir()][index]
    files = [case / case_file_name(case.name, m) for m in MODALITIES]
    image = np.stack([np.asarray(nib.load(f).dataobj, dtype=np.float32) for f in files])
    return image, nib.load(files[0]).affine, [f.name for f in files]


def test_a_phantom_is_plausible(phantom_data: dict[str, Path]) -> None:
    image, affine, names = _case(phantom_data)
    assert plausibility_problems(image, affine, names) == []
    assert plausibility_problems(torch.from_numpy(image), None, names) == []  # a tensor, no volume check


@pytest.mark.parametrize(
    ("first", "second", "expected", "index"),
    [
        ("t1c", "t2f", "does not look", 0),  # --t1c given the FLAIR (and --t2f the t1c)
        ("t2w", "t1n", "or --t2w, another modality?", 0),
        # flagged as "t1n rises with t2w": the T2 scan given as t1c, which falls where both rise, is named too
        ("t1c", "t2w", "are --t1c and --t2w swapped?)", 0),
        ("t1n", "t2w", "are --t1n and --t2w swapped?)", 0),
        # enhancement below t1n, not above: both phantoms have non-enhancing tumours, so the vessels and dura of t1c
        # tell the swap (phantom 0's tails were 1.2:1 before they were made as bright as on real scans)
        ("t1c", "t1n", "are --t1c and --t1n swapped?", 0),
        ("t1c", "t1n", "are --t1c and --t1n swapped?", 1),
        ("t2w", "t2f", "are --t2w and --t2f swapped?", 0),  # CSF suppressed on "t2w", bright on "t2f"
    ],
)
def test_a_modality_in_another_s_place_is_named(
    phantom_data: dict[str, Path], first: str, second: str, expected: str, index: int
) -> None:
    image, affine, names = _case(phantom_data, index)
    problems = plausibility_problems(swapped(image, first, second), affine, names)
    assert len(problems) == 1 and expected in problems[0]


def test_the_flair_swapped_with_a_t1_scan_is_named_where_the_t1_check_passes() -> None:
    """Phantom 5 of seed 0: its FLAIR falls where t2w rises over the whole brain (CSF), so given as t1c or t1n it
    passes the T1 check; away from CSF it is still more like t2w than either T1 scan is."""
    case = generate_case(5, 0, profile="small")
    image = np.stack([case.images[m].astype(np.float32) for m in MODALITIES])
    assert plausibility_problems(image, case.affine) == []
    for t1 in ("t1c", "t1n"):
        problems = plausibility_problems(swapped(image, t1, "t2f"), case.affine)
        assert len(problems) == 1 and f"are --{t1} and --t2f swapped?" in problems[0], problems


@pytest.mark.parametrize(("seed", "index"), [(1, 39), (1, 3)])
def test_the_flair_swap_is_caught_where_bias_fields_outweigh_the_tissue_contrast(seed: int, index: int) -> None:
    """Phantoms whose independent bias fields (up to 25 % per scan) outweighed the contrast of grey and white matter:
    on the raw voxels their FLAIR's lead over a T1 scan was +0.01 to +0.27 as given and the FLAIR swaps passed
    (healthy phantom 39 of seed 1 both, the non-enhancing 3 the t1c one). Less their local mean, the scans keep their
    contrast and the swaps are named; the case as given passes."""
    case = generate_case(index, seed, profile="small", healthy=index % 8 == 7)
    image = np.stack([case.images[m].astype(np.float32) for m in MODALITIES])
    assert plausibility_problems(image, case.affine) == []
    for t1 in ("t1c", "t1n"):
        problems = plausibility_problems(swapped(image, t1, "t2f"), case.affine)
        assert len(problems) == 1 and f"are --{t1} and --t2f swapped?" in problems[0], problems


def test_a_strong_bias_field_on_one_scan_changes_no_verdict(phantom_data: dict[str, Path]) -> None:
    """A smooth field from 0.5 to 1.5 across the brain on the FLAIR only (stronger than the phantoms' own): the case
    still passes, and its FLAIR swaps are still refused, naming the T1 scan's option, as read and as a z-scored
    tensor without an affine."""
    image, affine, names = _case(phantom_data)
    ramp = np.linspace(0.5, 1.5, image.shape[1], dtype=np.float32)[:, None, None]
    biased = image.copy()
    biased[MODALITIES.index("t2f")] *= ramp
    assert plausibility_problems(biased, affine, names) == []
    brain = np.all(biased != 0, axis=0)
    zscored = np.where(brain, (biased - biased[:, brain].mean(1)[:, None, None, None]), 0).astype(np.float32)
    zscored /= biased[:, brain].std(1)[:, None, None, None]
    for t1 in ("t1c", "t1n"):
        for volume, grid in ((biased, affine), (zscored, None)):
            problems = plausibility_problems(swapped(volume, t1, "t2f"), grid, names)
            assert len(problems) == 1 and f"--{t1}" in problems[0], problems  # the swap, or the FLAIR as no T1


def test_a_tumour_bright_on_t2w_and_on_t1c_is_not_refused(phantom_data: dict[str, Path]) -> None:
    """A large enhancing tumour among the brightest t2w voxels is bright on t1c too; the t2w check looks at t1n only
    (a BraTS-size glioma phantom was refused as "t2w does not look T2-weighted")."""
    image, affine, names = _case(phantom_data)
    t1c, t1n, t2w = (MODALITIES.index(m) for m in ("t1c", "t1n", "t2w"))
    brain = np.all(image != 0, axis=0)
    bright = brain & (image[t2w] >= np.quantile(image[t2w][brain], 0.985))
    enhanced = image.copy()
    enhanced[t1c][bright] = np.quantile(image[t1c][brain], 0.999)  # as bright as the brightest t1c voxels
    assert plausibility_problems(enhanced, affine, names) == []
    enhanced[t1n][bright] = np.quantile(image[t1n][brain], 0.999)  # on t1n too: not a T2 scan's CSF
    assert "does not look T2-weighted" in plausibility_problems(enhanced, affine, names)[0]


def test_one_file_for_two_modalities_a_slice_and_a_volume_too_large(phantom_data: dict[str, Path]) -> None:
    image, affine, names = _case(phantom_data)
    same = image.copy()
    same[MODALITIES.index("t2f")] = same[MODALITIES.index("t1c")]
    assert "hold the same image: one file given for two modalities?" in plausibility_problems(same, affine, names)[0]
    middle = image.shape[-1] // 2
    assert "less than the" in plausibility_problems(image[..., middle : middle + 1], affine, names)[0]
    noise = np.random.default_rng(0).uniform(1, 100, (4, 150, 150, 150)).astype(np.float32)  # 3.4 L at 1 mm
    assert "is the scan skull-stripped" in plausibility_problems(noise, np.eye(4), names)[0]
    assert BRAIN_ML_RANGE[1] < 150**3 / 1000


def test_segment_refuses_an_implausible_case_unless_told(phantom_data: dict[str, Path], tmp_path: Path) -> None:
    """The four-file mode with --t1c given the FLAIR (ET Dice 0.95 -> 0.61 before, exit 0): refused and named;
    --no-plausibility-check segments it."""
    case = next(p for p in sorted(phantom_data["data"].iterdir()) if p.is_dir())
    files = {m: case / case_file_name(case.name, m) for m in MODALITIES}
    files["t1c"], files["t2f"] = files["t2f"], files["t1c"]
    torch.manual_seed(0)
    weights = tmp_path / "weights" / "model.pt"
    weights.parent.mkdir()
    torch.save(build_student().state_dict(), weights)
    write_training_geometry(weights.parent, PHANTOM_PIXDIM, "LPS")
    argv = ["segment", "--no-progress", "--engine", "torch", "--device", "cpu", "--ckpt", str(weights)]
    argv += [arg for m in MODALITIES for arg in (f"--{m}", str(files[m]))]
    assert main([*argv, "-o", str(tmp_path / "refused")]) == 1
    assert not list((tmp_path / "refused").glob("*.nii.gz"))
    assert main([*argv, "-o", str(tmp_path / "told"), "--no-plausibility-check"]) == 0
    assert len(list((tmp_path / "told").glob("*.nii.gz"))) == 1


def test_bundle_inference_skips_an_implausible_case_and_runs_the_others(
    phantom_data: dict[str, Path], tmp_path: Path
) -> None:
    """The bundles' inference.json screens every case: one with t1c and t2f swapped is skipped and named in the
    summary, the other is segmented; ``--plausibility_check false`` runs both."""
    import json
    import shutil
    import subprocess

    from tests.conftest import SMALL_PATCHES, bundle_command

    data = tmp_path / "data"
    shutil.copytree(phantom_data["data"], data)
    swapped = sorted(p for p in data.iterdir() if p.is_dir())[0]
    t1c, t2f = (swapped / case_file_name(swapped.name, m) for m in ("t1c", "t2f"))
    t1c.rename(tmp_path / "t1c"), t2f.rename(t1c), (tmp_path / "t1c").rename(t2f)
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_student().state_dict(), bundle / "models" / "model.pt")
    write_training_geometry(bundle / "models", PHANTOM_PIXDIM, "LPS")
    configs = Path(__file__).parents[1] / "bundles" / "distilled_student" / "configs"
    for check, written in ((True, 1), (False, 2)):
        out = tmp_path / f"out_{check}"
        values = {"bundle_root": str(bundle), "dataset_dir": str(data), "output_dir": str(out), **SMALL_PATCHES}
        values |= {"plausibility_check": check, "data_list_file_path": ""}
        cmd = bundle_command([configs / "inference.json"], values, run_id=None)
        subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        summary = json.loads((out / "inference_summary.json").read_text())
        assert len(summary["written"]) == written
        if check:
            assert summary["skipped"][0]["case_id"] == swapped.name
            assert "does not look" in summary["skipped"][0]["problem"]


def test_check_values_on_a_plain_tensor_skips_only_the_volume_check(phantom_data: dict[str, Path]) -> None:
    """A plain tensor (no affine) is checked for contrasts without a volume (computing one from a missing affine
    raised a TypeError)."""
    from kd_components.segment import CaseFailed, Segmenter

    image, _, names = _case(phantom_data)
    Segmenter.check_values("c", torch.from_numpy(image), names)
    with pytest.raises(CaseFailed, match="hold the same image"):
        Segmenter.check_values("c", torch.from_numpy(np.stack([image[0]] * 4)), names)


def test_the_survey_script_counts_passes_and_caught_swaps(
    phantom_data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``scripts/measure_plausibility.py`` on a folder of real-layout cases (here two phantoms, at 2 mm too) and on
    a generated set; a missing real-scan folder is said and the phantoms still measured."""
    spec = importlib.util.spec_from_file_location(
        "measure_plausibility", Path(__file__).parents[1] / "scripts" / "measure_plausibility.py"
    )
    script = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(script)
    assert script.main(["--phantoms", "--at-2mm", "real", "--real", str(phantom_data["data"])]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| real")]
    assert [r.split(" | ")[1:3] for r in rows] == [["2", "2"], ["2", "2"]]  # two cases, both pass as given
    images = [_case(phantom_data, index)[:2] for index in range(2)]
    caught = [sum(bool(plausibility_problems(swapped(i, *pair), a)) for i, a in images) for pair in PAIRS]
    assert [c.strip(" |") for c in rows[0].split(" | ")[3:]] == [str(c) for c in caught]  # as the checks say
    assert caught[PAIRS.index(("t1c", "t2w"))] == caught[PAIRS.index(("t2w", "t2f"))] == 2
    assert script.main(["--phantoms", "small:2:1", "--at-2mm", "--real", str(tmp_path / "absent")]) == 0
    out, err = capsys.readouterr()
    assert "no real scans" in err and "absent" in err
    assert "| phantoms small:2:1 | 1 | 1 |" in out
    for bad in ("small:x", "foo:0:2"):  # not PROFILE:SEED:COUNT, an unknown profile: refused before any work
        with pytest.raises(SystemExit) as exit_info:
            script.main(["--phantoms", bad])
        assert exit_info.value.code == 2 and repr(bad) in capsys.readouterr().err
