"""Shared fixtures: tiny hand-made BraTS-layout cases written to a temporary folder."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_components.constants import MODALITIES, SEG_SUFFIX, case_file_name
from kd_components.io import save_nifti_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))  # scripts are thin CLIs with a main(argv)

TINY_SHAPE = (12, 10, 8)


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
    written by ``scripts/prepare_datalist.py``; returns ``(data, datalist)``."""
    import prepare_datalist

    from kd_components.data.phantoms import make_phantom_dataset

    data, datalist = root / "data", root / "datalist.json"
    make_phantom_dataset(data, num_cases, seed=seed, profile="small", unlabelled=unlabelled, workers=1, progress=False)
    args = ["--dataset-dir", str(data), "--output", str(datalist), "--num-folds", str(num_folds), "--quiet"]
    assert prepare_datalist.main([*args, "--workers", "1"]) == 0
    return data, datalist


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors on a shared 2-core machine: one intra-op thread avoids OpenMP oversubscription; restored after.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
