"""Scans as they come: any voxel size and orientation (the bundles bring each scan to their ``orientation`` and
``pixdim`` and write every output back on the input's grid) and real scanners' intensity quirks (float64, small
negative values, a background of noise or an offset instead of zeros, other intensity scales)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import NormalizeIntensity
from nibabel.processing import resample_from_to

from kd_components.constants import MODALITIES, case_file_name
from kd_components.data.brats import case_from_directory
from kd_components.data.phantoms import make_phantom_dataset
from kd_components.deploy import read_exported
from kd_components.geometry import GEOMETRY_FILE, read_training_geometry, write_training_geometry
from kd_components.handlers.metrics import label_map_dice
from kd_components.intensity import BACKGROUND_SHARE, brain_foreground, normalize_brain, quantiles
from kd_components.networks.student import build_student
from kd_components.segment import Segmentation, Segmenter
from tests.conftest import REPO_ROOT, fit_student_to_case, run_checked

pytestmark = pytest.mark.usefixtures("one_thread")

#: The demo bundles' voxel size: a 2 mm phantom runs at its own spacing.
DEMO = {"pixdim": [2.0, 2.0, 2.0], "patch_size": [32, 32, 32], "sw_batch_size": 4}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2 mm phantom case folder."""
    root = tmp_path_factory.mktemp("geometry")
    make_phantom_dataset(root / "data", 1, seed=4, profile="small", workers=1, progress=False)
    (case,) = sorted(p for p in (root / "data").iterdir() if p.is_dir())
    return case


@pytest.fixture(scope="module")
def segmenter(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    """The student bundle's segmenter at 2 mm with a student fitted to the phantom (every label found)."""
    ckpt = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(fit_student_to_case(phantom).state_dict(), ckpt)
    return Segmenter(ckpt=ckpt, engine="torch", device="cpu", overrides=DEMO, log=lambda line: None)


def _rewrite(case: Path, folder: Path, change: callable) -> Path:
    """A copy of ``case`` in ``folder`` with every modality's image replaced by ``change(image)``."""
    out = folder / case.name
    out.mkdir(parents=True)
    for modality in MODALITIES:
        name = case_file_name(case.name, modality)
        nib.save(change(nib.load(case / name)), out / name)
    return out


def _at_1mm(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """``image`` resampled (trilinear) to half its voxel size, the first voxel's centre kept (as MONAI's ``Spacing``
    keeps it): ``2n - 1`` voxels per axis of ``n``."""
    affine = image.affine.copy()
    affine[:3, :3] /= 2
    return resample_from_to(image, (tuple(2 * s - 1 for s in image.shape), affine), order=1)


def _reoriented(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same scan stored in another voxel order: the first axis flipped, the last two swapped."""
    data = np.flip(np.asarray(image.dataobj), 0).transpose(0, 2, 1)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, image.shape[0] - 1
    swap = np.eye(4)[[0, 2, 1, 3]]
    return nib.Nifti1Image(np.ascontiguousarray(data), image.affine @ flip @ swap)


def _on_grid_of(result: Segmentation, reference: nib.Nifti1Image) -> np.ndarray:
    """``result``'s label map resampled (nearest) onto ``reference``'s grid."""
    labels = nib.Nifti1Image(result.labels, result.affine)
    return np.asarray(resample_from_to(labels, reference, order=0).dataobj)


def test_1mm_2mm_and_another_orientation_give_agreeing_label_maps_each_on_its_input_grid(
    phantom: Path, segmenter: Segmenter, tmp_path: Path
) -> None:
    inputs = {
        "2 mm": phantom,
        "1 mm": _rewrite(phantom, tmp_path / "1mm", _at_1mm),
        "reoriented": _rewrite(phantom, tmp_path / "reoriented", _reoriented),
    }
    results = {name: segmenter.segment(case_from_directory(case)) for name, case in inputs.items()}
    for name, case in inputs.items():  # each output on its input's grid
        source = nib.load(case / case_file_name(case.name, "t1c"))
        assert results[name].labels.shape == source.shape, name
        np.testing.assert_allclose(results[name].affine, source.affine, atol=1e-5, err_msg=name)
    reference = nib.load(phantom / case_file_name(phantom.name, "t1c"))
    base = results["2 mm"].labels
    assert set(np.unique(base)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(_on_grid_of(results["reoriented"], reference), base)  # a permutation: exact
    assert min(label_map_dice(_on_grid_of(results["1 mm"], reference), base)) >= 0.95
    # at 1 mm the network saw the scan resampled to its 2 mm: the volumes agree
    assert results["1 mm"].volumes["WT_ml"] == pytest.approx(results["2 mm"].volumes["WT_ml"], rel=0.05)


def test_float64_negative_values_and_a_noisy_background_segment_like_the_clean_scan(
    phantom: Path, segmenter: Segmenter, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)

    def quirky(image: nib.Nifti1Image) -> nib.Nifti1Image:
        data = np.asarray(image.dataobj, dtype=np.float64)
        background = data == 0
        noise = rng.normal(0.0, 2.0, data.shape)  # registration leaves small values, negative ones too
        data[background] = noise[background]
        return nib.Nifti1Image(data, image.affine)  # float64 on disk

    quirks = _rewrite(phantom, tmp_path / "quirks", quirky)
    assert nib.load(quirks / case_file_name(quirks.name, "t2f")).get_data_dtype() == np.float64
    clean = segmenter.segment(case_from_directory(phantom))
    noisy = segmenter.segment(case_from_directory(quirks))
    np.testing.assert_array_equal(noisy.labels, clean.labels)
    scaled = segmenter.segment(
        case_from_directory(
            _rewrite(phantom, tmp_path / "scaled", lambda i: nib.Nifti1Image(np.asarray(i.dataobj) * 37.5, i.affine))
        )
    )
    np.testing.assert_array_equal(scaled.labels, clean.labels)  # another scanner's intensity scale


def test_normalize_brain_is_monais_on_clean_scans_and_ignores_the_background_otherwise() -> None:
    rng = np.random.default_rng(1)
    clean = np.zeros((4, 30, 28, 24), np.float32)
    clean[:, 6:24, 5:22, 4:20] = rng.uniform(100, 900, (4, 18, 17, 16))
    expected = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.tensor(clean))
    torch.testing.assert_close(normalize_brain(clean), torch.as_tensor(expected), atol=1e-5, rtol=1e-5)
    brain = clean[0] > 0
    assert torch.equal(brain_foreground(torch.as_tensor(clean)), torch.as_tensor(brain))
    offset = clean + 40.0 * (clean == 0) + rng.normal(0, 1.0, clean.shape) * (clean == 0)
    torch.testing.assert_close(normalize_brain(offset), normalize_brain(clean), atol=1e-5, rtol=1e-5)
    assert not normalize_brain(np.full((4, 10, 10, 10), 7.0, np.float32)).any()  # refused later as constant
    nan = clean.copy()
    nan[1, 10, 10, 10] = np.nan
    normalised = normalize_brain(nan)
    assert torch.isnan(normalised[1, 10, 10, 10]) and torch.isfinite(normalised[0]).all()  # left for the checks


def test_quantiles_are_torch_quantile_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 1000, 12_345, 1_000_001):
        for scale in (1e-3, 1.0, 1e4):
            values = torch.randn(n, generator=gen) * scale
            for data in (values, values.round(), values[::3]):
                q = (BACKGROUND_SHARE, 0.999)
                assert torch.equal(quantiles(data, q), torch.quantile(data, torch.tensor(q))), (n, scale)


def test_the_training_grid_travels_with_the_weights(phantom: Path, tmp_path: Path) -> None:
    """Training writes ``training_geometry.json`` beside the weights; ``inference.json``, ``brats-kd segment``'s
    segmenter and an exported ``model.ts`` (with the file embedded) run at that grid without being told."""
    bundle = REPO_ROOT / "bundles" / "distilled_student"
    weights = tmp_path / "models" / "model.pt"
    weights.parent.mkdir()
    torch.save(build_student().state_dict(), weights)
    case = case_from_directory(phantom)
    quiet = {"engine": "torch", "device": "cpu", "log": lambda line: None}
    assert Segmenter(bundle, weights, **quiet).load(case).shape[1:] == (239, 239, 155)  # no file: 1 mm
    write_training_geometry(weights.parent, [2.0, 2.0, 2.0], "LPS")
    assert read_training_geometry(weights) == {"pixdim": [2.0, 2.0, 2.0], "orientation": "LPS"}
    assert Segmenter(bundle, weights, **quiet).load(case).shape[1:] == (120, 120, 78)  # trained at 2 mm: 2 mm
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["ckpt_dir"] = str(weights.parent)
    assert parser.get_parsed_content("pixdim") == [2.0, 2.0, 2.0]
    # exported with the file embedded beside inference.json (docs/deploy.md)
    configs = f"['configs/inference.json', '{weights.parent / GEOMETRY_FILE}']"
    command = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(tmp_path / "m.ts")]
    command += ["--ckpt_file", str(weights), "--meta_file", "configs/metadata.json", "--config_file", configs]
    run_checked(command, cwd=bundle)
    assert read_exported(tmp_path / "m.ts").geometry == {"pixdim": [2.0, 2.0, 2.0], "orientation": "LPS"}
    exported = Segmenter.from_exported(tmp_path / "m.ts", **quiet)
    assert exported.load(case).shape[1:] == (120, 120, 78)
    (weights.parent / GEOMETRY_FILE).write_text("[2, 2, 2]")
    with pytest.raises(ValueError, match="expected a JSON object with pixdim, orientation"):
        read_training_geometry(weights)


def test_false_positive_probe_measures_healthy_volumes_and_unseen_dice(tmp_path: Path) -> None:
    from kd_components.evaluation.false_positives import make_probe_data, measure, render

    folders = make_probe_data(tmp_path, 1)
    assert not np.asarray(nib.load(next(folders["healthy"].glob("*/*-seg.nii.gz"))).dataobj).any()
    weights = tmp_path / "model.pt"
    torch.save(build_student().state_dict(), weights)
    segmenter = Segmenter(ckpt=weights, engine="torch", device="cpu", overrides=DEMO, log=lambda line: None)
    # a "network" that labels every brain voxel tumour
    segmenter.engine = lambda x: torch.where((x != 0).any(1, keepdim=True), 10.0, -10.0).repeat(1, 3, 1, 1, 1)
    row = measure(segmenter, folders, log=lambda line: None)
    brain_ml = float(np.count_nonzero(nib.load(next(folders["healthy"].glob("*/*-t1c.nii.gz"))).dataobj)) * 8 / 1000
    assert row["healthy_wt_ml"] == [pytest.approx(brain_ml, rel=0.05)]  # every brain voxel a false positive
    assert len(row["unseen_dice"]) == 1 and 0 < row["unseen_dice_mean"]["WT"] < 0.5
    assert "| everything | " in render({"everything": row}, 1, "cmd", "today")
