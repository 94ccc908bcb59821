"""Mixing labelled and unlabelled batches in one training epoch."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import numpy as np

from kd_components.data.datalist import load_datalist_split

__all__ = ["MixedBatchLoader", "load_unlabelled_split"]


def _length(loader: Iterable[Any], name: str) -> int:
    if not isinstance(loader, Sized):
        raise TypeError(f"MixedBatchLoader: the {name} loader must have a len() (a DataLoader over a map dataset)")
    return len(loader)


class MixedBatchLoader:
    """
    Interleaves the batches of a labelled and an unlabelled loader: one epoch yields every batch of each.

    Each batch comes whole from one loader, so it is homogeneous: labelled batches have ``"label"``,
    unlabelled ones do not, and :class:`~kd_components.engines.DistillationTrainer` trains them with
    the task and distillation losses, or the distillation losses alone. Usable wherever MONAI/Ignite
    expect a data loader (it has ``len()`` = the sum of the two lengths, and is re-iterable).

    The order of the sources in epoch ``e`` (which positions take a labelled batch) is a random
    permutation drawn from ``numpy.random.default_rng([seed, e])`` (``shuffle=True``), or the two
    sources spread evenly (``shuffle=False``); either way it depends only on ``seed`` and ``e``. The
    epoch counter starts at 0 and advances at each ``iter()``; :meth:`set_epoch` sets it (e.g. when
    resuming). The order *within* each source is its loader's (e.g. ``DataLoader(shuffle=True)``).

    Args:
        labelled: loader of labelled batches (``{"image", "label", ...}``).
        unlabelled: loader of unlabelled batches (``{"image", ...}``), or ``None`` for labelled batches only.
        seed: seed of the interleaving. Defaults to 0.
        shuffle: random interleaving (True) or evenly spread (False). Defaults to True.
    """

    def __init__(
        self,
        labelled: Iterable[Any],
        unlabelled: Iterable[Any] | None = None,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.labelled = labelled
        self.unlabelled = unlabelled
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.num_labelled = _length(labelled, "labelled")
        self.num_unlabelled = 0 if unlabelled is None else _length(unlabelled, "unlabelled")

    def __len__(self) -> int:
        return self.num_labelled + self.num_unlabelled

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

    def __iter__(self) -> Iterator[Any]:
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
            f"seed={self.seed}, shuffle={self.shuffle})"
        )


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
        ValueError: if the split is empty or missing; the message says how to train without unlabelled data.
    """
    try:
        items = load_datalist_split(data_list_file_path, dataset_dir, split, fold)
    except ValueError as err:
        raise ValueError(f"{err}; to distil on labelled scans only, pass --use_unlabelled false") from err
    return [{k: v for k, v in item.items() if k != "label"} for item in items]
