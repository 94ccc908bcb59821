"""kd_components.invert: the boxed inversion gives exactly Invertd + AsDiscreted's regions on the input's grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Compose, CropForegroundd, Invertd, LoadImaged, Orientationd, Spacingd

from kd_components.invert import InvertThresholdd, _voxel_permutation, input_grid
from kd_components.niftiio import ParallelNibabelReader

PERMUTED = np.array([[0.0, -1.0, 0.0, 30.0], [0.0, 0.0, 1.0, -12.0], [1.0, 0.0, 0.0, 4.0], [0, 0, 0, 1]])
OBLIQUE = np.array([[0.0, 1.1, 0.1, -40.0], [-0.9, 0.0, 0.15, 60.0], [0.05, 0.1, 2.4, -20.0], [0, 0, 0, 1]])


def _case(tmp_path: Path, affine: np.ndarray, shape: tuple[int, int, int] = (70, 64, 30)) -> list[str]:
    rng = np.random.default_rng(1)
    brain = np.zeros(shape, dtype=np.float32)
    brain[5:-5, 6:-6, 3:-3] = 1.0
    files = []
    for name in ("t1c", "t1n", "t2w", "t2f"):
        path = tmp_path / f"x-{name}.nii.gz"
        nib.save(nib.Nifti1Image(brain * rng.uniform(50, 100, shape).astype(np.float32), affine), path)
        files.append(str(path))
    return files


def _preprocessing(
    pixdim: tuple[float, ...], orientation: str, crop: bool = False, dtype: torch.dtype = torch.float64
) -> Compose:
    transforms = [
        LoadImaged("image", reader=ParallelNibabelReader(), ensure_channel_first=True, image_only=True),
        Orientationd("image", axcodes=orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd("image", pixdim=pixdim, mode="bilinear", dtype=dtype),
    ]
    if crop:
        transforms.append(CropForegroundd("image", source_key="image"))
    return Compose(transforms)


def _probabilities(image: MetaTensor, blobs: int, seed: int) -> MetaTensor:
    """Smooth sigmoid-like channels ``(3, h, w, d)`` with ``blobs`` local tumours (0: nothing reaches 0.5)."""
    gen = torch.Generator().manual_seed(seed)
    shape = image.shape[1:]
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
    out = torch.full((3, *shape), 0.05)
    for _ in range(blobs):
        centre = torch.stack([torch.randint(4, s - 4, (1,), generator=gen)[0] for s in shape]).float()
        radius = 2.0 + 4.0 * torch.rand(1, generator=gen)
        distance = ((grid - centre[:, None, None, None]) ** 2).sum(0).sqrt()
        for c in range(3):
            out[c] = torch.maximum(out[c], torch.sigmoid((radius * (1.0 - 0.3 * c) - distance) * 1.7))
    return MetaTensor(out, meta=dict(image.meta))


def _both(preprocessing: Compose, image: MetaTensor, pred: MetaTensor) -> tuple[MetaTensor, MetaTensor]:
    old = Compose(
        [
            Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted("pred", threshold=0.5),
        ]
    )({"pred": pred.clone(), "image": image})["pred"]
    new = InvertThresholdd("pred", transform=preprocessing)({"pred": pred.clone(), "image": image})["pred"]
    return old, new


@pytest.mark.parametrize(
    ("affine", "pixdim", "orientation", "dtype"),
    [
        (OBLIQUE, (2.0, 2.0, 2.0), "LPS", torch.float32),  # the bundles' inference.json resamples in float32
        (OBLIQUE, (2.0, 2.0, 2.0), "LPS", torch.float64),
        (np.diag([1.0, 1.0, 1.0, 1.0]), (1.3, 0.8, 2.2), "RAS", torch.float32),
        (np.diag([-1.2, 0.9, 3.0, 1.0]), (1.0, 1.0, 1.0), "PLI", torch.float64),
        # at the network's voxel size: the grids' voxels coincide (flipped, permuted), nothing is interpolated
        (np.diag([1.0, 1.0, 1.0, 1.0]), (1.0, 1.0, 1.0), "LPS", torch.float32),
        (PERMUTED, (1.0, 1.0, 1.0), "LPS", torch.float32),
    ],
)
def test_same_regions_as_invertd_then_asdiscreted(
    tmp_path: Path, affine: np.ndarray, pixdim: tuple[float, ...], orientation: str, dtype: torch.dtype
) -> None:
    preprocessing = _preprocessing(pixdim, orientation, dtype=dtype)
    image = preprocessing({"image": _case(tmp_path, affine)})["image"]
    shape, original, resampled_in = input_grid(image)
    assert shape == (70, 64, 30) and resampled_in == dtype
    assert np.allclose(original, affine)
    for blobs, seed in ((3, 0), (1, 1), (0, 2)):
        old, new = _both(preprocessing, image, _probabilities(image, blobs, seed))
        assert new.dtype == torch.uint8
        assert new.shape == old.shape == (3, 70, 64, 30)
        assert torch.equal(new.as_tensor(), old.as_tensor().to(torch.uint8)), (blobs, seed)
        assert np.allclose(new.affine, old.affine) and np.allclose(new.affine, affine)
        assert (int(new.sum()) > 0) == (blobs > 0)


@pytest.mark.parametrize(("affine", "pixdim", "coincide"), [(PERMUTED, 1.0, True), (OBLIQUE, 2.0, False)])
def test_grids_whose_voxels_coincide_are_only_flipped_and_permuted(
    tmp_path: Path, affine: np.ndarray, pixdim: float, coincide: bool
) -> None:
    image = _preprocessing((pixdim,) * 3, "LPS")({"image": _case(tmp_path, affine)})["image"]
    shape, original, _ = input_grid(image)
    to_input = np.linalg.solve(original, np.asarray(image.affine, dtype=np.float64))
    assert (_voxel_permutation(to_input, image.shape[1:], shape) is not None) == coincide


def test_a_preprocessing_with_another_spatial_transform_falls_back_to_invertd(tmp_path: Path) -> None:
    preprocessing = _preprocessing((2.0, 2.0, 2.0), "LPS", crop=True)
    image = preprocessing({"image": _case(tmp_path, OBLIQUE)})["image"]
    assert input_grid(image) is None
    old, new = _both(preprocessing, image, _probabilities(image, 2, 3))
    assert torch.equal(torch.as_tensor(new).to(torch.uint8), torch.as_tensor(old).to(torch.uint8))
    assert int(torch.as_tensor(new).sum()) > 0
