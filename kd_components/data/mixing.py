"""Mixing labelled and unlabelled batches in one training epoch."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sized
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_components.data.datalist import DatalistError, load_datalist_split

logger = logging.getLogger(__name__)

__all__ = [
    "MIXING_MODES",
    "NUM_LABELLED_KEY",
    "MixedBatchLoader",
    "concat_batches",
    "load_unlabelled_split",
    "unlabelled_wanted",
]

#: How :class:`MixedBatchLoader` combines the two loaders.
MIXING_MODES: tuple[str, ...] = ("interleave", "paired")

#: Key of a paired batch that says how many of its samples (the first ones) are labelled.
NUM_LABELLED_KEY = "num_labelled"


def _length(loader: Iterable[Any], name: str) -> int:
    if not isinstance(loader, Sized):
        raise TypeError(f"MixedBatchLoader: the {name} loader must have a len() (a DataLoader over a map dataset)")
    return len(loader)


class MixedBatchLoader:
    """
    Combines the batches of a labelled and an unlabelled loader in one of two ways (``mode``):

    - ``"interleave"``: one epoch yields every batch of each loader, each batch whole from one loader,
      so it is homogeneous: labelled batches have ``"label"``, unlabelled ones do not, and
      :class:`~kd_components.engines.DistillationTrainer` trains them with the task and distillation
      losses, or the distillation losses alone. ``len()`` is the sum of the two lengths. Unlabelled
      batches take optimizer steps that labelled ones would otherwise take: at a fixed number of
      steps the student sees fewer labelled batches than without unlabelled scans.
    - ``"paired"`` (as in most semi-supervised training): every step gets one labelled and one
      unlabelled batch, concatenated along the batch dimension (:func:`concat_batches`: ``image``
      ``(B_l + B_u, C, H, W, D)``, ``label`` ``(B_l, ...)`` of the labelled batch only, and
      ``num_labelled`` = ``B_l``); the trainer applies the task loss to the first ``B_l`` samples and
      the distillation losses to all. ``len()`` is the labelled loader's, so an epoch sees every
      labelled batch once, as without unlabelled scans. The unlabelled loader is cycled: each epoch
      continues where the last one stopped, and starts a new pass of it (a new shuffle) when it runs out.

    In ``"interleave"`` mode, the order of the sources in epoch ``e`` (which positions take a labelled
    batch) is a random permutation drawn from ``numpy.random.default_rng([seed, e])`` (``shuffle=True``),
    or the two sources spread evenly (``shuffle=False``); either way it depends only on ``seed`` and
    ``e``. The epoch counter starts at 0 and advances at each ``iter()``; :meth:`set_epoch` sets it
    (e.g. when resuming). The order *within* each source is its loader's (e.g. ``DataLoader(shuffle=True)``).
    Usable wherever MONAI/Ignite expect a data loader (it has a ``len()`` and is re-iterable).

    Args:
        labelled: loader of labelled batches (``{"image", "label", ...}``).
        unlabelled: loader of unlabelled batches (``{"image", ...}``), or ``None`` for labelled batches only.
        seed: seed of the interleaving. Defaults to 0.
        shuffle: random interleaving (True) or evenly spread (False). Defaults to True.
        mode: ``"interleave"`` or ``"paired"`` (see above). Defaults to "interleave".
    """

    def __init__(
        self,
        labelled: Iterable[Any],
        unlabelled: Iterable[Any] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        mode: str = "interleave",
    ) -> None:
        if mode not in MIXING_MODES:
            raise ValueError(f"MixedBatchLoader: mode must be one of {MIXING_MODES}, got {mode!r}")
        self.labelled = labelled
        self.unlabelled = unlabelled
        self.seed = int(seed)
        self.shuffle = shuffle
        self.mode = mode
        self.epoch = 0
        self.num_labelled = _length(labelled, "labelled")
        self.num_unlabelled = 0 if unlabelled is None else _length(unlabelled, "unlabelled")
        if self.paired and self.num_unlabelled == 0:
            raise ValueError("MixedBatchLoader: mode='paired' needs a non-empty unlabelled loader")
        self._unlabelled_iter: Iterator[Any] | None = None

    @property
    def paired(self) -> bool:
        """Whether each batch is a labelled and an unlabelled batch together (``mode="paired"``)."""
        return self.mode == "paired" and self.unlabelled is not None

    def __len__(self) -> int:
        return self.num_labelled if self.paired else self.num_labelled + self.num_unlabelled

    def set_epoch(self, epoch: int) -> None:
        """
        Set the (0-based) epoch whose interleaving the next ``iter()`` uses, and pass it to the loaders'
        samplers that take one (``DistributedSampler.set_epoch``). :class:`~kd_components.engines.DistillationTrainer`
        calls it at each ``EPOCH_STARTED``, so a resumed run continues the sequence of interleavings.
        """
        self.epoch = int(epoch)
        for loader in (self.labelled, self.unlabelled):
            sampler = getattr(loader, "sampler", None)
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(self.epoch)

    def schedule(self, epoch: int) -> list[bool]:
        """The sources of epoch ``epoch``'s batches in order: ``True`` = labelled, ``False`` = unlabelled."""
        n_l, n_u = self.num_labelled, self.num_unlabelled
        if self.shuffle:
            order = np.zeros(n_l + n_u, dtype=bool)
            order[:n_l] = True
            return np.random.default_rng([self.seed, int(epoch)]).permutation(order).tolist()
        # evenly spread: the k-th unlabelled batch goes after about k * n_l / n_u labelled ones
        positions = {int((k + 1) * (n_l + n_u) / (n_u + 1)) for k in range(n_u)} if n_u else set()
        return [i not in positions for i in range(n_l + n_u)]

    def _next_unlabelled(self) -> Any:
        """The next unlabelled batch; a new pass of the unlabelled loader when the last one is used up."""
        for _ in range(2):
            if self._unlabelled_iter is None:
                self._unlabelled_iter = iter(self.unlabelled)
            try:
                return next(self._unlabelled_iter)
            except StopIteration:
                self._unlabelled_iter = None
        raise RuntimeError("MixedBatchLoader: the unlabelled loader yielded no batch")

    def __iter__(self) -> Iterator[Any]:
        if self.paired:
            self.epoch += 1
            for batch in self.labelled:
                yield concat_batches(batch, self._next_unlabelled())
            return
        order = self.schedule(self.epoch)
        self.epoch += 1
        sources = {True: iter(self.labelled), False: iter(self.unlabelled if self.unlabelled is not None else ())}
        for is_labelled in order:
            try:
                yield next(sources[is_labelled])
            except StopIteration:
                name = "labelled" if is_labelled else "unlabelled"
                message = f"MixedBatchLoader: the {name} loader yielded fewer batches than its len()"
                raise RuntimeError(message) from None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(labelled={self.num_labelled} batches, unlabelled={self.num_unlabelled} batches, "
            f"seed={self.seed}, shuffle={self.shuffle}, mode={self.mode!r})"
        )


def concat_batches(labelled: Mapping[str, Any], unlabelled: Mapping[str, Any]) -> dict[str, Any]:
    """
    One batch of a labelled and an unlabelled batch: the labelled samples first.

    Tensors present in both (``image`` ``(B_l, C, ...)`` and ``(B_u, C, ...)``, ``brain_mask``) are
    concatenated along dimension 0, lists (``case_id``) joined; keys of the labelled batch alone
    (``label``) are kept as they are, keys of the unlabelled batch alone dropped; other values are the
    labelled batch's. ``num_labelled`` (:data:`NUM_LABELLED_KEY`) holds ``B_l``.

    Raises:
        ValueError: if a batch has no ``image`` tensor, or the two images differ in anything but the
            batch size (e.g. another patch size or number of modalities).
    """
    images = [batch.get("image") for batch in (labelled, unlabelled)]
    if not all(isinstance(image, torch.Tensor) for image in images):
        raise ValueError("concat_batches: both batches need an 'image' tensor")
    if images[0].shape[1:] != images[1].shape[1:]:
        raise ValueError(
            f"concat_batches: labelled images {tuple(images[0].shape)} and unlabelled images "
            f"{tuple(images[1].shape)} differ beyond the batch size; use the same patch size and modalities"
        )
    batch: dict[str, Any] = {}
    for key, value in labelled.items():
        other = unlabelled.get(key)
        if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor) and value.shape[1:] == other.shape[1:]:
            batch[key] = torch.cat([value, other.to(value.device)], dim=0)
        elif isinstance(value, list) and isinstance(other, list):
            batch[key] = value + other
        else:
            batch[key] = value
    batch[NUM_LABELLED_KEY] = int(images[0].shape[0])
    return batch


def unlabelled_wanted(
    setting: Any, data_list_file_path: str | os.PathLike[str], split: str = "testing", name: str = "use_unlabelled"
) -> bool:
    """Whether distillation takes unlabelled scans: ``setting`` true or false (any spelling of
    :func:`~kd_components.config_checks.as_bool`), or ``"auto"`` (the student's default): when the datalist's
    ``split`` list holds scans. A datalist without them (a user with labelled scans only) is said in one log line,
    and distillation runs on the labelled scans; with ``true`` their absence stays an error
    (:func:`load_unlabelled_split`)."""
    from kd_components.config_checks import as_bool

    if not (isinstance(setting, str) and setting.strip().lower() == "auto"):
        return as_bool(setting, name)
    try:
        listed = json.loads(Path(data_list_file_path).read_text())
    except (OSError, ValueError):
        return True  # an unreadable datalist is named by the loaders that need it
    if isinstance(listed, dict) and split == "testing" and not listed.get(split):
        logger.warning(
            f"{data_list_file_path} lists no unlabelled scans (its {split!r} list is empty or absent): distilling on "
            "the labelled scans only (use_unlabelled auto)"
        )
        return False
    return True


def load_unlabelled_split(
    data_list_file_path: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str],
    split: str = "testing",
    fold: int = 0,
) -> list[dict[str, Any]]:
    """
    The unlabelled scans for distillation: :func:`~kd_components.data.datalist.load_datalist_split` of
    ``split`` (the datalist's ``testing`` list, the cases without a segmentation, by default), with any
    ``label`` dropped (so that a labelled split can also be used as unlabelled data).

    Raises:
        DatalistError: if the split is empty or missing; the message says how to train without unlabelled data.
    """
    try:
        items = load_datalist_split(data_list_file_path, dataset_dir, split, fold)
    except ValueError as err:
        raise DatalistError([f"{err}; to distil on labelled scans only, pass --use_unlabelled false"]) from err
    return [{k: v for k, v in item.items() if k != "label"} for item in items]
