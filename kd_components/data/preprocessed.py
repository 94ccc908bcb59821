"""A persistent, compact store of preprocessed training cases, so that memory does not grow with the data set.

MONAI's ``CacheDataset`` keeps every preprocessed case in RAM: a 1 mm BraTS case (four float32 channels of
240 x 240 x 155 and three region channels) is about 250 MB, so BraTS 2023's 1251 training cases would need
about 300 GB. :class:`PreprocessedDataset` is MONAI's ``PersistentDataset`` (the cached part is the first
``cache_n_trans`` transforms, as in ``CacheNTransDataset``) with three changes:

- **compact files**: each case is cropped to the brain (``kd_components.transforms.CropToBraind``, in the bundles'
  ``base_transforms``) and written with its images as float16 and its label channels as uint8, about 48 MB per
  1 mm case instead of 250; it is read back as float32 and carries its affine and case id (a plain dict of
  tensors, loadable with ``torch.load(weights_only=True)``, which MONAI's pickled MetaTensors are not, so its own
  cache would be recomputed on every read);
- **keys that follow the files**: a case's file name is a hash of its datalist entry (the ``fold`` left out) and of
  the size and modification time of every file it names, so an edited scan is preprocessed again;
- **safe writes**: written through :func:`kd_components.io.atomic_path` in the cache folder itself (a reader never
  sees a half-written file, also when two ranks of a multi-GPU run write the same case); a file that cannot be read
  is preprocessed again with a warning that names it, and a folder that cannot be written is used read-only.

Nothing is held in memory between reads: the page cache of the operating system keeps recently read files, and
the RAM of a training is the network's, the loader workers' current samples, and no more, whatever the number of
cases. The folder (:func:`preprocessed_cache_dir`) is keyed by the preprocessing settings, so the teacher's and the
student's trainings, their seeds and reruns share one copy of every case.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, PersistentDataset
from monai.transforms import Compose

from kd_components.io import USER_CACHE, atomic_path, clean_stale_temporaries

__all__ = [
    "PREPROCESSED_ENV",
    "PREPROCESSING_VERSION",
    "STORAGE_DTYPES",
    "PreprocessedDataset",
    "case_fingerprint",
    "default_preprocessed_root",
    "preprocessed_cache_dir",
]

logger = logging.getLogger(__name__)

#: Raised whenever the cached part of the bundles' preprocessing changes meaning, so that no old file is reused.
PREPROCESSING_VERSION = 1
#: Environment variable that moves the store (nnU-Net's ``nnUNet_preprocessed``); the bundles' ``preprocessed_dir``.
PREPROCESSED_ENV = "BRATS_KD_PREPROCESSED"
#: How each key of a cached case is stored: images float16, label channels uint8 (read back as computed, float32).
STORAGE_DTYPES: dict[str, str] = {"image": "float16", "label": "uint8"}
#: Datalist keys that do not change a case's preprocessing (left out of its file name).
_UNHASHED_KEYS = ("fold",)
_FORMAT = "brats-kd-preprocessed"


def default_preprocessed_root() -> str:
    """``$BRATS_KD_PREPROCESSED`` if set, else ``<user cache>/preprocessed`` (:data:`~kd_components.io.USER_CACHE`)."""
    return os.environ.get(PREPROCESSED_ENV) or str(USER_CACHE / "preprocessed")


def preprocessed_cache_dir(
    root: str | os.PathLike[str] | None, pixdim: Sequence[float], orientation: str, et_label: int
) -> str:
    """The folder of cases preprocessed with these settings: ``<root>/v<version>-<orientation>-<pixdim>-et<label>``.

    Args:
        root: the store (``None`` or ``""``: :func:`default_preprocessed_root`).
        pixdim: the voxel size the cases are resampled to (mm), e.g. ``(1.0, 1.0, 1.0)``.
        orientation: the axis codes they are reoriented to, e.g. ``"LPS"``.
        et_label: the enhancing-tumour value of the label maps (3 or 4).
    """
    spacing = "x".join(f"{float(s):g}" for s in pixdim)
    name = f"v{PREPROCESSING_VERSION}-{orientation}-{spacing}mm-et{int(et_label)}"
    return str(Path(root or default_preprocessed_root()) / name)


def _file_state(value: Any) -> Any:
    """A path with its size and modification time (so an edited file changes the hash); other values as they are."""
    if isinstance(value, list | tuple):
        return [_file_state(v) for v in value]
    if isinstance(value, str) and os.path.isfile(value):
        stat = os.stat(value)
        return [os.path.abspath(value), stat.st_size, stat.st_mtime_ns]
    return value


def case_fingerprint(item: Mapping[str, Any]) -> bytes:
    """``PersistentDataset``'s ``hash_func``: SHA-256 (hex, as bytes) of a datalist entry, its files' sizes and
    modification times included and its ``fold`` left out (the same case in two datalists is one file)."""
    state = {str(k): _file_state(v) for k, v in sorted(item.items()) if k not in _UNHASHED_KEYS}
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest().encode()


def _plain(value: Any) -> Any:
    """A metadata value as ``torch.load(weights_only=True)`` reads it back (tensors and builtin types), or ``None``
    to drop it (nibabel's byte-string header fields, objects)."""
    if isinstance(value, Enum):  # MONAI's SpaceKeys
        value = value.value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value) if value.dtype.kind in "biuf" else None
    for kind in (bool, int, float, str):  # numpy's float64 and str_ are subclasses: stored as the builtin
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, list | tuple):
        items = [_plain(v) for v in value]
        return None if any(v is None for v in items) else items
    return None


def _pack(value: Any, dtype: str | None) -> Any:
    """One entry of a case as stored: a tensor in its storage dtype with its dtype and metadata, else as is."""
    if not isinstance(value, torch.Tensor):
        return _plain(value)
    tensor = value.as_tensor() if isinstance(value, MetaTensor) else value
    stored = tensor.detach().cpu()
    if dtype is not None:
        target = getattr(torch, dtype)
        candidate = stored.to(target)
        # float16 rounds a normalised image by < 0.05 % but would turn values beyond 65504 into inf; integer
        # storage only where it is exact (a label channel of 0/1); otherwise the tensor is kept as computed
        if target.is_floating_point:
            fits = bool(torch.isfinite(candidate).all()) or not bool(torch.isfinite(stored).all())
        else:
            fits = torch.equal(candidate.to(stored.dtype), stored)
        if fits:
            stored = candidate
    meta = {}
    if isinstance(value, MetaTensor):
        meta = {str(k): v for k, v in ((k, _plain(v)) for k, v in value.meta.items()) if v is not None}
    return {"tensor": stored.contiguous(), "dtype": str(tensor.dtype).removeprefix("torch."), "meta": meta}


def _unpack(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"tensor", "dtype", "meta"}:
        return MetaTensor(value["tensor"].to(getattr(torch, value["dtype"])), meta=value["meta"])
    return value


class PreprocessedDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` over compact files of cropped, preprocessed cases (see the module docstring).

    ``transform``'s first ``cache_n_trans`` transforms (deterministic: loading, reorienting, resampling, normalising,
    cropping to the brain, regions) run once per case and their result is stored; the rest (random crops,
    augmentation) run on every read. A case read back equals the computed one up to float16 rounding of the image.

    Args:
        data: the datalist entries (``{"image": [4 paths], "label": path, ...}``).
        transform: a ``Compose`` (or a sequence of transforms) whose first ``cache_n_trans`` are cached.
        cache_dir: the folder of this preprocessing (:func:`preprocessed_cache_dir`); created if missing
            (ValueError naming it when it cannot be; an existing folder that cannot be written is read only).
        cache_n_trans: how many transforms are cached.
        storage_dtypes: how each key is stored (default :data:`STORAGE_DTYPES`); other keys as computed.
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        transform: Sequence[Callable] | Callable,
        cache_dir: str | os.PathLike[str],
        cache_n_trans: int,
        storage_dtypes: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(transform, Compose):
            transform = Compose(transform)
        if not 0 <= int(cache_n_trans) <= len(transform.transforms):
            raise ValueError(
                f"cache_n_trans must be between 0 and the {len(transform.transforms)} transforms, got {cache_n_trans}"
            )
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"the store of preprocessed cases {cache_dir} cannot be created ({error.strerror or error}); "
                "pass --preprocessed_dir a folder that can be written (or set $BRATS_KD_PREPROCESSED)"
            ) from error
        super().__init__(data=data, transform=transform, cache_dir=cache_dir, hash_func=case_fingerprint)
        self.cache_n_trans = int(cache_n_trans)
        self.storage_dtypes = dict(STORAGE_DTYPES if storage_dtypes is None else storage_dtypes)
        self._read_only = False
        try:
            clean_stale_temporaries(self.cache_dir)
        except OSError:  # a read-only store: nothing of ours to clean there
            pass

    def cache_path(self, item: Mapping[str, Any]) -> Path:
        """The file that holds ``item``'s preprocessed case."""
        return self.cache_dir / f"{case_fingerprint(item).decode()}.pt"

    def _pre_transform(self, item_transformed: Any) -> Any:
        return self.transform(item_transformed, end=self.cache_n_trans, threading=True)

    def _post_transform(self, item_transformed: Any) -> Any:
        return self.transform(item_transformed, start=self.cache_n_trans)

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            stored = torch.load(path, weights_only=True)
            if not isinstance(stored, dict) or stored.get("format") != _FORMAT:
                raise ValueError("not a preprocessed case of this project")
            return {k: _unpack(v) for k, v in stored["case"].items()}
        except Exception as error:  # any unreadable file is made again, never trusted
            warnings.warn(
                f"preprocessed case {path} cannot be read ({type(error).__name__}: {error}); preprocessing it again",
                stacklevel=2,
            )
            return None

    def _write(self, path: Path, stored: Mapping[str, Any]) -> None:
        if self._read_only:
            return
        try:
            with atomic_path(path) as tmp:
                torch.save({"format": _FORMAT, "version": PREPROCESSING_VERSION, "case": dict(stored)}, tmp)
        except OSError as error:  # read-only store, disk full: train on, preprocessing on every read
            self._read_only = True
            logger.warning(
                "cannot write preprocessed cases to %s (%s); every read preprocesses its case again", path.parent, error
            )

    def _cachecheck(self, item_transformed: Mapping[str, Any]) -> Any:
        path = self.cache_path(item_transformed)
        if path.is_file():
            case = self._read(path)
            if case is not None:
                return case
        computed = self._pre_transform(dict(item_transformed))
        stored = {str(k): _pack(v, self.storage_dtypes.get(str(k))) for k, v in computed.items()}
        self._write(path, stored)
        # what a later read returns, so that a first epoch (or a run with a cold store) sees the same values
        return {k: _unpack(v) for k, v in stored.items()}
