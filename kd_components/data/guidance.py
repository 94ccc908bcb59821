"""Teacher-guided sampling of unlabelled scans: patch centres drawn around the tumour the frozen teacher predicts.

Unlabelled patches drawn anywhere in the brain mostly hold no tumour, so their distillation terms mostly teach the
student the teacher's background. :class:`TeacherTumourMaskd` segments each unlabelled scan once with the frozen
teacher (sliding window over the whole preprocessed volume) and keeps the predicted whole tumour as a mask; the
student bundle then crops with MONAI's ``RandCropByPosNegLabeld`` on that mask, a share ``unlabelled_tumour_share``
of the patches centred in the predicted tumour and the others anywhere else in the brain (``FgBgToIndicesd`` with
the brain mask as the image), so the scans' normal anatomy is still seen.

The masks are cached on disk (``<cache_dir>/<case>-<teacher>-<grid>.npy``): ``<teacher>`` is a fingerprint of the
teacher checkpoint's bytes, so a new teacher never reuses an old mask, and ``<grid>`` one of the preprocessed
volume's shape and affine and of the settings of the segmentation, so a scan resampled differently is segmented
again. Every student distilling the same teacher (the seeds of a benchmark row) shares them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from monai.config import KeysCollection
from monai.inferers import sliding_window_inference
from monai.transforms import MapTransform

from kd_components.io import atomic_path
from kd_components.transforms import WT_INDEX
from kd_components.writers import case_id_of

__all__ = ["UNLABELLED_SAMPLING", "TeacherTumourMaskd", "checkpoint_fingerprint", "teacher_tumour_mask"]

#: Where the student bundle centres the patches of unlabelled scans (``unlabelled_sampling``): anywhere in the brain,
#: or a share ``unlabelled_tumour_share`` in the tumour the teacher predicts (:class:`TeacherTumourMaskd`).
UNLABELLED_SAMPLING: tuple[str, ...] = ("brain", "teacher")


def checkpoint_fingerprint(path: str | os.PathLike[str]) -> str:
    """The first 16 hex digits of the SHA-256 of a checkpoint file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@torch.no_grad()
def teacher_tumour_mask(
    teacher: nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    threshold: float = 0.5,
    channel: int = WT_INDEX,
) -> np.ndarray:
    """The teacher's predicted region ``channel`` (default: whole tumour) of one preprocessed scan.

    Args:
        teacher: the frozen teacher (its parameters' device is used).
        image: ``(C, H, W, D)``.
        roi_size: the sliding window.
        sw_batch_size, overlap: of the sliding window (Gaussian blending).
        threshold: on the sigmoid of the region's logits.
        channel: the region channel (``[TC, WT, ET]``).

    Returns:
        uint8 ``(1, H, W, D)``: 1 inside the predicted region.
    """
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    try:
        logits = sliding_window_inference(
            torch.as_tensor(image, dtype=torch.float32)[None].to(device),
            roi_size=list(roi_size),
            sw_batch_size=sw_batch_size,
            predictor=teacher,
            overlap=overlap,
            mode="gaussian",
        )
    finally:
        teacher.train(was_training)
    region = torch.sigmoid(torch.as_tensor(logits)[0, channel : channel + 1].float()) > threshold
    return region.cpu().numpy().astype(np.uint8)


class TeacherTumourMaskd(MapTransform):
    """Put the teacher's predicted whole tumour of ``keys`` (the preprocessed image) under ``output_key``, computed
    once per (scan, teacher checkpoint, grid) and cached in ``cache_dir`` (see the module docstring).

    Deterministic, so a ``CacheDataset`` keeps its result in memory too.

    Args:
        keys: the image key (one).
        teacher: the frozen teacher network.
        teacher_ckpt: the file its weights came from (fingerprinted for the cache).
        cache_dir: where the masks are kept.
        roi_size: sliding-window size (the training patch size).
        output_key: where the mask ``(1, H, W, D)`` uint8 goes. Defaults to ``teacher_tumour``.
        sw_batch_size, overlap, threshold: of :func:`teacher_tumour_mask`.

    Raises:
        ValueError: for more than one key, or an image without a case id (its file name) to cache it by.
    """

    def __init__(
        self,
        keys: KeysCollection,
        teacher: nn.Module,
        teacher_ckpt: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str],
        roi_size: Sequence[int],
        output_key: str = "teacher_tumour",
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        threshold: float = 0.5,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"TeacherTumourMaskd takes one image key, got {self.keys}")
        self.teacher = teacher
        self.teacher_ckpt = Path(teacher_ckpt)
        self.fingerprint = checkpoint_fingerprint(self.teacher_ckpt)
        self.cache_dir = Path(cache_dir)
        self.roi_size = [int(s) for s in roi_size]
        self.output_key = output_key
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.threshold = float(threshold)

    def cache_path(self, case_id: str, image: torch.Tensor) -> Path:
        """``<cache_dir>/<case>-<teacher fingerprint>-<grid and settings fingerprint>.npy``."""
        affine = getattr(image, "affine", None)
        grid = [
            tuple(image.shape),
            None if affine is None else np.round(np.asarray(affine, dtype=np.float64), 4).tolist(),
            self.roi_size,
            self.overlap,
            self.threshold,
        ]
        grid_key = hashlib.sha256(repr(grid).encode()).hexdigest()[:12]
        return self.cache_dir / f"{case_id}-{self.fingerprint}-{grid_key}.npy"

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        key = self.first_key(d)
        image = d[key]
        case_id = case_id_of(getattr(image, "meta", None))
        if not case_id:
            raise ValueError(f"TeacherTumourMaskd: the image under {key!r} has no case id (file name) to cache by")
        path = self.cache_path(case_id, image)
        try:
            mask = np.load(path) if path.exists() else None
        except (OSError, ValueError):  # an unreadable cache file is made again, not trusted
            mask = None
        if mask is None or mask.shape != (1, *image.shape[1:]):
            mask = teacher_tumour_mask(
                self.teacher, image, self.roi_size, self.sw_batch_size, self.overlap, self.threshold
            )
            with atomic_path(path) as tmp:
                np.save(tmp, mask)
        d[self.output_key] = torch.as_tensor(mask)
        return d
