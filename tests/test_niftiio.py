"""kd_components.niftiio: the parallel ISA-L reader gives what MONAI's NibabelReader gives; writes stay NIfTI."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage

from kd_components.io import save_nifti_atomic
from kd_components.niftiio import ParallelNibabelReader, gzip_compress, gzip_decompress, read_nifti


def _write(path: Path, data: np.ndarray, affine: np.ndarray, slope: float | None = None) -> Path:
    img = nib.Nifti1Image(data, affine)
    if slope is not None:
        img.header.set_slope_inter(slope, 1.5)
    nib.save(img, path)
    return path


@pytest.fixture
def four_files(tmp_path: Path) -> list[Path]:
    """Four modalities of one case: int16 (one with a scale factor), float32, float64; compressed and not; an
    oblique affine."""
    rng = np.random.default_rng(0)
    shape = (17, 13, 9)
    affine = np.array([[0.9, 0.1, 0.0, -20.0], [0.0, -1.1, 0.2, 30.0], [0.05, 0.0, 2.5, -7.0], [0, 0, 0, 1]])
    return [
        _write(tmp_path / "a-t1c.nii.gz", rng.integers(0, 900, shape).astype(np.int16), affine),
        _write(tmp_path / "a-t1n.nii.gz", rng.integers(0, 900, shape).astype(np.int16), affine, slope=0.25),
        _write(tmp_path / "a-t2w.nii", rng.random(shape).astype(np.float32), affine),
        _write(tmp_path / "a-t2f.nii.gz", rng.random(shape), affine),
    ]


def test_reader_gives_monai_nibabel_readers_arrays_affines_and_metadata(four_files: list[Path]) -> None:
    files = [str(f) for f in four_files]
    expected = LoadImage(image_only=True, ensure_channel_first=True, reader="NibabelReader")(files)
    reader = ParallelNibabelReader()
    got = LoadImage(image_only=True, ensure_channel_first=True, reader=reader)(files)
    assert got.dtype == expected.dtype == torch.float32
    assert got.is_contiguous()  # cast into one C-ordered array: LoadImage copies nothing more
    assert got.shape == expected.shape == (4, 17, 13, 9)
    assert torch.equal(got.as_tensor(), expected.as_tensor())
    assert torch.allclose(got.affine, expected.affine)
    for key in ("original_affine", "spatial_shape", "pixdim", "filename_or_obj", "original_channel_dim"):
        assert np.array_equal(np.asarray(got.meta[key]), np.asarray(expected.meta[key])), key
    one = LoadImage(image_only=True, ensure_channel_first=True, reader=reader)(files[1])  # the same reader again
    assert torch.equal(one[0], expected[1])  # the scale factor applied, as nibabel does


def test_a_corrupt_compressed_file_is_an_error_that_names_it(four_files: list[Path]) -> None:
    broken = four_files[0]
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(Exception, match=r"a-t1c\.nii\.gz"):
        LoadImage(image_only=True, reader=ParallelNibabelReader())([str(f) for f in four_files])


def test_gzip_round_trip_and_written_label_maps_are_standard_gzip_nifti(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    assert gzip_decompress(gzip_compress(data)) == data
    assert gzip.decompress(gzip_compress(data)) == data  # Python's gzip reads what ISA-L writes
    labels = np.zeros((20, 21, 22), dtype=np.uint8)
    labels[5:9, 6:10, 7:12] = 3
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    save_nifti_atomic(labels, affine, tmp_path / "case.nii.gz", dtype=np.uint8)
    for img in (nib.load(tmp_path / "case.nii.gz"), read_nifti(tmp_path / "case.nii.gz")):
        assert img.get_data_dtype() == np.uint8
        assert np.array_equal(np.asanyarray(img.dataobj), labels)
        assert np.allclose(img.affine, affine)
