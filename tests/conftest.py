"""The tests' one harness: tiny hand-made BraTS-layout cases, shared phantom datasets (``phantom_data``), the tiny
teacher (``TINY_TEACHER``, ``build_tiny_teacher`` and its bundle overrides), and running a bundle the way a user
does (``bundle_command``, ``cli_overrides``, ``run_checked``, ``bundle_workflow``) with checks of what it writes.

Test modules import these from here, never from one another.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from kd_components.constants import ET_LABEL, MODALITIES, SEG_SUFFIX, case_file_name
from kd_components.data.preprocessed import PREPROCESSED_ENV
from kd_components.io import save_nifti_atomic
from kd_components.networks import HybridTeacher, build_teacher

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))  # the lab's page writers: thin CLIs with a main(argv)
#: MONAI's bundle metadata schema, where the shared folder holds a copy.
METADATA_SCHEMA = REPO_ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"

TINY_SHAPE = (12, 10, 8)
#: Voxel size of the phantoms the tests make (``profile="small"``), the demo bundles' ``pixdim``.
PHANTOM_PIXDIM = (2.0, 2.0, 2.0)

#: A teacher small enough for CPU tests: ``build_teacher("demo", **TINY_TEACHER)``, the demo configuration thinner
#: and shallower. Lists, not tuples: the same values go into bundle overrides and JSON command lines.
TINY_TEACHER: dict[str, Any] = {
    "vgg_width": 4,
    "vit_hidden_size": 48,
    "vit_mlp_dim": 96,
    "vit_num_layers": 4,
    "vit_num_heads": 2,
    "vit_out_layers": [1, 2, 3, 4],
    "fusion_channels": [4, 8, 8, 16],
    "decoder_channels": [4, 8, 8, 16],
}
#: Small patches and sliding windows, no loader workers: overrides both bundles' configs accept.
SMALL_PATCHES: dict[str, Any] = {"patch_size": [32, 32, 32], "num_workers": 0, "sw_batch_size": 8, "sw_overlap": 0.0}


def brats_kd(verb: str, *args: str) -> int:
    """``brats-kd VERB ARGS...`` in this process; its exit status (argparse's usage errors included)."""
    from kd_components.cli import main

    try:
        return main([verb, *args])
    except SystemExit as exit_:
        return int(exit_.code or 0)


def build_tiny_teacher(**overrides: Any) -> HybridTeacher:
    """The tiny teacher (``TINY_TEACHER``); ``overrides`` change single arguments, e.g. ``vgg_width=8``."""
    return build_teacher("demo", **{**TINY_TEACHER, **overrides})


def tiny_teacher_overrides(network_id: str) -> dict[str, Any]:
    """The tiny teacher as bundle config overrides of ``network_id``: ``"network_def"`` in hybrid_teacher,
    ``"teacher_def"`` in distilled_student's train.json."""
    return {"teacher_config": "demo", **{f"{network_id}#{k}": v for k, v in TINY_TEACHER.items()}}


#: hybrid_teacher overrides (any of its configs): the tiny teacher with small patches.
TEACHER_BUNDLE_TINY: dict[str, Any] = {**tiny_teacher_overrides("network_def"), **SMALL_PATCHES}
#: distilled_student train.json overrides: the tiny teacher and small patches (inference.json takes SMALL_PATCHES).
STUDENT_BUNDLE_TINY: dict[str, Any] = {**tiny_teacher_overrides("teacher_def"), **SMALL_PATCHES}


def cli_overrides(values: Mapping[str, Any]) -> list[str]:
    """``--key value`` arguments for ``python -m monai.bundle run``: strings as they are, anything else as JSON."""
    return [arg for k, v in values.items() for arg in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]


def bundle_command(
    config_files: Sequence[str | Path],
    overrides: Mapping[str, Any],
    *,
    run_id: str | None = "training",
    logging_file: str | Path | None = None,
    launcher: Sequence[str] = (sys.executable,),
) -> list[str]:
    """``python -m monai.bundle run [run_id] --config_file FILES --key value ... [--logging_file FILE]`` as a user
    types it: one config file as its path, several as a JSON list; ``launcher`` replaces ``python``, e.g. with
    ``python -m torch.distributed.run ...``."""
    files = [str(f) for f in config_files]
    cmd = [*launcher, "-m", "monai.bundle", "run", *([run_id] if run_id else [])]
    cmd += ["--config_file", files[0] if len(files) == 1 else json.dumps(files), *cli_overrides(overrides)]
    return [*cmd, "--logging_file", str(logging_file)] if logging_file else cmd


def run_checked(
    cmd: Sequence[str], *, cwd: Path = REPO_ROOT, env: Mapping[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` capturing its text output; unless it exits 0, fail showing the ends of its stdout and stderr."""
    result = subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def bundle_workflow(
    configs: Path,
    config_files: Sequence[str | Path],
    workflow_type: str,
    *,
    logging_file: str | bool = False,
    **overrides: Any,
) -> ConfigWorkflow:
    """An initialised ``ConfigWorkflow`` of ``config_files`` (names in ``configs``, or paths) with the bundle's
    ``configs/metadata.json``; ``overrides`` as on the command line."""
    workflow = ConfigWorkflow(
        config_file=[str(configs / f) for f in config_files],
        meta_file=str(configs / "metadata.json"),
        logging_file=logging_file,
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    return workflow


def assert_label_map_of(saved: Path, source: Path) -> nib.Nifti1Image:
    """The label map an inference wrote for the scan ``source``: on its grid (shape, affine), BraTS labels only.
    Returns the loaded label map for further checks."""
    image, scan = nib.load(saved), nib.load(source)
    assert image.shape == scan.shape
    np.testing.assert_allclose(image.affine, scan.affine, atol=1e-5)
    assert set(np.unique(np.asarray(image.dataobj)).tolist()) <= {0, 1, 2, ET_LABEL}
    return image


def assert_evaluation_metrics(out_dir: Path) -> dict[str, str]:
    """``metrics.csv`` of an evaluate run in ``out_dir``: Dice (mean and per region) and HD95 of TC and WT, the
    WT Dice in [0, 1]; returns ``{name: value}``."""
    with open(out_dir / "metrics.csv") as f:
        metrics = dict(csv.reader(f))
    for name in ("val_mean_dice", "val_dice_tc", "val_dice_wt", "val_dice_et", "val_hd95_tc", "val_hd95_wt"):
        assert name in metrics
    assert 0.0 <= float(metrics["val_dice_wt"]) <= 1.0
    return metrics


def tiny_label(shape: tuple[int, ...] = TINY_SHAPE, et: int = 3) -> np.ndarray:
    """A nested lesion: SNFH shell, ET rim, NETC core: ``(H, W, D)`` uint8."""
    seg = np.zeros(shape, np.uint8)
    seg[2:10, 2:8, 1:7] = 2
    seg[3:9, 3:7, 2:6] = et
    seg[4:8, 4:6, 3:5] = 1
    return seg


@pytest.fixture
def make_case(tmp_path: Path) -> Callable[..., Path]:
    """Write one tiny case ``<tmp>/data/<cid>/`` and return its folder; keyword arguments break it on purpose."""

    def _make(
        cid: str = "BraTS-GLI-00001-000",
        labelled: bool = True,
        shape: tuple[int, ...] = TINY_SHAPE,
        seg: np.ndarray | None = None,
        affine: np.ndarray | None = None,
        overrides: dict[str, np.ndarray] | None = None,
        root: Path | None = None,
        seed: int = 0,
    ) -> Path:
        root = root or tmp_path / "data"
        folder = root / cid
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) if affine is None else affine
        rng = np.random.default_rng(seed)
        for modality in MODALITIES:
            data = rng.uniform(1, 100, shape).astype(np.float32)
            save_nifti_atomic(data, affine, folder / case_file_name(cid, modality))
        if labelled:
            label = tiny_label(shape) if seg is None else seg
            save_nifti_atomic(label, affine, folder / case_file_name(cid, SEG_SUFFIX))
        for suffix, data in (overrides or {}).items():
            save_nifti_atomic(data, affine, folder / case_file_name(cid, suffix))
        return folder

    return _make


def write_phantom_datalist(root: Path, num_cases: int, unlabelled: int, num_folds: int, seed: int) -> tuple[Path, Path]:
    """Small phantoms in ``root/data`` (the last ``unlabelled`` without labels) and ``root/datalist.json``
    written by ``brats-kd datalist``; returns ``(data, datalist)``."""
    from kd_components.data.phantoms import make_phantom_dataset

    data, datalist = root / "data", root / "datalist.json"
    make_phantom_dataset(data, num_cases, seed=seed, profile="small", unlabelled=unlabelled, workers=1, progress=False)
    args = ["--dataset-dir", str(data), "--output", str(datalist), "--num-folds", str(num_folds), "--quiet"]
    assert brats_kd("datalist", *args, "--workers", "1") == 0
    return data, datalist


#: Steps and patch of :func:`fit_student_to_case` (random weights segment nothing; this gives a tumour to find).
FIT_STEPS = 40
FIT_PATCH = 64


def fit_student_to_case(case_dir: Path, steps: int = FIT_STEPS) -> torch.nn.Module:
    """The default student fitted for a few steps to one phantom at its own voxel size (a patch around its
    tumour): a network whose label map has every label, so that comparing label maps compares something."""
    from monai.losses import DiceCELoss

    from kd_components.data.brats import case_from_directory
    from kd_components.intensity import normalize_brain
    from kd_components.networks.student import build_student
    from kd_components.segment.inputs import read_case_image
    from kd_components.transforms import BratsLabelsToRegions

    case = case_from_directory(case_dir)
    image = normalize_brain(read_case_image(case))
    regions = BratsLabelsToRegions()(torch.as_tensor(np.asarray(nib.load(case.label).dataobj))[None]).float()
    centre = np.argwhere(regions[1].numpy() > 0).mean(axis=0).round().astype(int)
    starts = [int(np.clip(c - FIT_PATCH // 2, 0, s - FIT_PATCH)) for c, s in zip(centre, image.shape[1:], strict=True)]
    window = (slice(None), *(slice(s, s + FIT_PATCH) for s in starts))
    x, y = image[window][None], torch.as_tensor(regions[window])[None]
    torch.manual_seed(0)
    network = build_student()
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    loss = DiceCELoss(sigmoid=True)
    for _ in range(steps):
        optimiser.zero_grad()
        loss(network(x), y).backward()
        optimiser.step()
    return network.eval()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "phantoms(**kwargs): the phantom_data of a module, as phantom_datasets' keyword arguments"
    )


@pytest.fixture(scope="session", autouse=True)
def preprocessed_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bundles' store of preprocessed cases (``$BRATS_KD_PREPROCESSED``) in a temporary folder of the session,
    for the tests and the bundle commands they start, never the user's cache; restored after."""
    store = tmp_path_factory.mktemp("preprocessed")
    previous = os.environ.get(PREPROCESSED_ENV)
    os.environ[PREPROCESSED_ENV] = str(store)
    yield store
    if previous is None:
        os.environ.pop(PREPROCESSED_ENV, None)
    else:
        os.environ[PREPROCESSED_ENV] = previous


@pytest.fixture(scope="session")
def phantom_datasets(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Path]]:
    """Small phantoms, their datalist (``write_phantom_datalist``) and, with ``teacher``, a tiny teacher's
    checkpoint ``teacher_ckpt``: ``{"root", "data", "datalist"[, "teacher_ckpt"]}``, written once a session for
    the same arguments, so tests read these files and write elsewhere."""
    made: dict[tuple[Any, ...], dict[str, Path]] = {}

    def _make(
        num_cases: int = 4, unlabelled: int = 1, num_folds: int = 3, seed: int = 5, teacher: bool = True
    ) -> dict[str, Path]:
        key = (num_cases, unlabelled, num_folds, seed, teacher)
        if key not in made:
            root = tmp_path_factory.mktemp(f"phantoms{num_cases}_{unlabelled}_{num_folds}_seed{seed}")
            data, datalist = write_phantom_datalist(root, num_cases, unlabelled, num_folds, seed)
            made[key] = {"root": root, "data": data, "datalist": datalist}
            if teacher:
                ckpt = root / "teacher" / "model.pt"
                ckpt.parent.mkdir()
                torch.save(build_tiny_teacher().state_dict(), ckpt)
                made[key]["teacher_ckpt"] = ckpt
        return dict(made[key])

    return _make


@pytest.fixture(scope="module")
def phantom_data(
    request: pytest.FixtureRequest,
    phantom_datasets: Callable[..., dict[str, Path]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """A module's phantoms and ``bundle``, a bundle root of the module's own (not created).

    By default four phantoms (three labelled in three folds, one unlabelled, seed 5) and a tiny teacher
    checkpoint; a module asks for others with ``pytestmark = pytest.mark.phantoms(...)`` (``phantom_datasets``'
    arguments). Modules that ask for the same phantoms share them.
    """
    marker = request.node.get_closest_marker("phantoms")
    name = request.module.__name__.rsplit(".", 1)[-1]
    return {**phantom_datasets(**(marker.kwargs if marker else {})), "bundle": tmp_path_factory.mktemp(name) / "bundle"}


def phantom_overrides(phantoms: Mapping[str, Path], bundle_root: Path | None = None) -> dict[str, str]:
    """Bundle overrides reading ``phantoms`` (a ``phantom_data``): ``dataset_dir``, ``data_list_file_path``, the
    phantoms' own voxel size ``pixdim`` (2 mm, as the demo overlay) and, given, ``bundle_root``."""
    root = {"bundle_root": str(bundle_root)} if bundle_root is not None else {}
    data = {"dataset_dir": str(phantoms["data"]), "data_list_file_path": str(phantoms["datalist"])}
    return {**root, **data, "pixdim": list(PHANTOM_PIXDIM)}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors on a shared 2-core machine: one intra-op thread avoids OpenMP oversubscription; restored after.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
