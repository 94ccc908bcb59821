"""What a default training on BraTS-size data costs: memory per case, preprocessing, loader throughput, step time,
and peak RAM against the number of cases (``scripts/benchmark_training_scale.py`` writes ``docs/training_scale.md``).

Every measurement runs the bundles' own ``train.json`` (default settings: 1 mm, 96^3 patches, batch 1 x 2 samples)
through MONAI's ``ConfigParser``, on BraTS-size phantoms (``brats`` profile, 240 x 240 x 155 at 1 mm), each in a
fresh process (:func:`kd_lab.measure.run_in_fresh_process`) so that its peak memory is its own. Peak RAM is the
largest sum of the resident memory of the process and its loader workers, sampled every 50 ms
(:class:`TreeMemory`).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from kd_components.data.phantoms import make_phantom_dataset
from kd_components.data.preprocessed import PreprocessedDataset
from kd_components.transforms import CropToBraind
from kd_lab.demo import STUDENT_BUNDLE, TEACHER_BUNDLE

__all__ = [
    "BRATS_2023_TRAINING_CASES",
    "CaseCost",
    "RamPoint",
    "TreeMemory",
    "bundle_parser",
    "case_costs",
    "loader_throughput",
    "peak_ram",
    "prepare_cases",
    "step_seconds",
    "subset_datalist",
    "validation_seconds",
]

#: Labelled training cases of the BraTS 2023 adult glioma (GLI) challenge.
BRATS_2023_TRAINING_CASES = 1251
GIB = 1024**3
BUNDLES = {"teacher": TEACHER_BUNDLE, "student": STUDENT_BUNDLE}


def bundle_parser(bundle: str, datalist: Path, store: Path, **overrides: Any) -> ConfigParser:
    """The bundle's ``train.json`` at its defaults, reading ``datalist`` (paths relative to its folder) and keeping
    preprocessed cases in ``store``; ``overrides`` replace ids (``num_workers``, ``teacher_ckpt``, ...)."""
    parser = ConfigParser()
    root = BUNDLES[bundle]
    parser.read_config(str(root / "configs" / "train.json"))
    values = {
        "bundle_root": str(root),
        "dataset_dir": str(datalist.parent),
        "data_list_file_path": str(datalist),
        "preprocessed_dir": str(store),
        **overrides,
    }
    for key, value in values.items():
        parser[key] = value
    return parser


def prepare_cases(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` BraTS-size phantoms under ``root/cases`` and their datalist there (5 folds, paths relative to that
    folder, as ``brats-kd datalist`` writes them), made once and reused."""
    from kd_components.cli import main as brats_kd

    datalist = root / "cases" / f"datalist_{count}.json"
    if not datalist.exists():
        make_phantom_dataset(root / "cases", count, seed=seed, profile="brats", progress=False)
        status = brats_kd(["datalist", "--dataset-dir", str(root / "cases"), "--output", str(datalist), "--quiet"])
        if status != 0:
            raise RuntimeError(f"brats-kd datalist failed on {root / 'cases'} (exit status {status})")
    return datalist


def subset_datalist(datalist: Path, count: int) -> Path:
    """A datalist of the first ``count`` labelled cases of ``datalist``, beside it, in 5 folds of their own
    (``i % 5``: every fold, fold 0 included, has cases)."""
    data = json.loads(datalist.read_text())
    subset = datalist.with_name(f"datalist_first{count}.json")
    training = sorted(data["training"], key=lambda e: str(e.get("case_id", e["label"])))[:count]
    if len(training) < count:
        raise ValueError(f"{datalist} holds {len(training)} labelled cases, fewer than {count}")
    training = [{**entry, "fold": index % 5} for index, entry in enumerate(training)]
    subset.write_text(json.dumps({**data, "training": training, "testing": []}, indent=1))
    return subset


class TreeMemory:
    """Peak of the summed proportional set size (PSS) of this process and its children, sampled in a thread.

    PSS counts a page shared by ``n`` processes as ``1/n`` in each, so the forked loader workers, which share the
    parent's pages (an in-memory cache above all), are not counted twice; the sum is the RAM the tree takes.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _pss(process: psutil.Process) -> int:
        try:
            return int(process.memory_full_info().pss)
        except (psutil.Error, AttributeError):  # a worker that just ended; no PSS outside Linux
            try:
                return int(process.memory_info().rss)
            except psutil.Error:
                return 0

    def _current(self) -> int:
        me = psutil.Process()
        return self._pss(me) + sum(self._pss(child) for child in me.children(recursive=True))

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._current())
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self.peak = self._current()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._current())


@dataclass(frozen=True)
class CaseCost:
    """One case through the cached part of the preprocessing (medians over the measured cases)."""

    preprocess_s: float
    read_s: float
    stored_mb: float
    in_memory_mb: float
    in_memory_uncropped_mb: float
    cropped_shape: tuple[int, ...]


def case_costs(datalist: Path, store: Path, cases: int) -> CaseCost:
    """Preprocess ``cases`` cases cold into ``store`` (the teacher's ``base_transforms``), then read them back.

    ``in_memory_mb`` is what one case held in RAM takes as the bundles store it (float16 image, uint8 regions),
    ``in_memory_uncropped_mb`` what ``CacheDataset`` held before (float32, whole grid, no crop).
    """
    parser = bundle_parser("teacher", datalist, store)
    items = parser.get_parsed_content("train_datalist")[:cases]
    base = parser.get_parsed_content("base_transforms")
    dataset = PreprocessedDataset(items, base, parser.get_parsed_content("preprocessed_cache"), len(base))
    cold, warm, stored, held = [], [], [], []
    shape: tuple[int, ...] = ()
    for index, item in enumerate(items):
        start = time.perf_counter()
        case = dataset[index]
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        dataset[index]
        warm.append(time.perf_counter() - start)
        stored.append(dataset.cache_path(item).stat().st_size / 1e6)
        held.append((case["image"].numel() * 2 + case["label"].numel()) / 1e6)
        shape = tuple(case["image"].shape[1:])
    uncropped = Compose([t for t in base if not isinstance(t, CropToBraind)])(items[0])
    return CaseCost(
        preprocess_s=statistics.median(cold),
        read_s=statistics.median(warm),
        stored_mb=statistics.median(stored),
        in_memory_mb=statistics.median(held),
        in_memory_uncropped_mb=(uncropped["image"].nbytes + uncropped["label"].nbytes) / 1e6,
        cropped_shape=shape,
    )


def loader_throughput(datalist: Path, store: Path, workers: int, batches: int) -> float:
    """Training samples per second out of the teacher's ``train#dataloader`` (a warm store, ``workers`` workers):
    ``batches`` batches after the first (which starts the workers)."""
    parser = bundle_parser("teacher", datalist, store, num_workers=workers)
    dataset = parser.get_parsed_content("train#dataset")
    for item in dataset.data:  # a warm store: every case preprocessed before the clock starts
        dataset._cachecheck(item)
    loader = parser.get_parsed_content("train#dataloader")
    per_batch = int(parser["batch_size"]) * int(parser["num_samples"])
    seen, start = 0, 0.0
    while seen <= batches:
        for _ in loader:
            if seen == 0:
                start = time.perf_counter()
            seen += 1
            if seen > batches:
                break
    return batches * per_batch / (time.perf_counter() - start)


def _teacher_checkpoint(folder: Path) -> Path:
    """A checkpoint of the default teacher (random weights: the step's cost does not depend on them)."""
    path = folder / "teacher_for_timing.pt"
    if not path.exists():
        parser = bundle_parser("teacher", folder / "unused.json", folder)
        torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def step_seconds(bundle: str, datalist: Path, store: Path, repeats: int, device: str = "cpu") -> list[float]:
    """Wall seconds of ``repeats`` training iterations of the bundle's own ``train#trainer`` (one batch of the
    real loader: forward, loss, backward, optimiser step; the student's with its frozen teacher), after one
    warm-up iteration."""
    overrides: dict[str, Any] = {"num_workers": 0, "device": f"$torch.device('{device}')"}
    if bundle == "student":
        overrides |= {"teacher_ckpt": str(_teacher_checkpoint(store)), "use_unlabelled": False}
    parser = bundle_parser(bundle, datalist, store, **overrides)
    trainer = parser.get_parsed_content("train#trainer")
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    times = []
    for _ in range(repeats + 1):
        _synchronise(device)
        start = time.perf_counter()
        trainer._iteration(trainer, batch)
        _synchronise(device)
        times.append(time.perf_counter() - start)
    return times[1:]


@torch.no_grad()
def validation_seconds(bundle: str, datalist: Path, store: Path, device: str = "cpu") -> float:
    """Wall seconds of the bundle's validation inferer (``validate#inferer``: sliding window, the bundle's overlap
    and window batch) over one cropped validation case, once (random weights: the cost does not depend on them)."""
    parser = bundle_parser(bundle, datalist, store, num_workers=0, device=f"$torch.device('{device}')")
    network = parser.get_parsed_content("network_def").to(device).eval()
    inferer = parser.get_parsed_content("validate#inferer")
    image = parser.get_parsed_content("validate#dataset")[0]["image"].as_tensor()[None].to(device)
    _synchronise(device)
    start = time.perf_counter()
    inferer(image, network)
    _synchronise(device)
    return time.perf_counter() - start


def _synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass(frozen=True)
class RamPoint:
    """Peak RAM of a first epoch over ``cases`` labelled cases."""

    cases: int
    training_cases: int
    peak_gib: float
    seconds: float


def _in_memory_cache(parser: ConfigParser) -> None:
    """Turn a parsed-to-be ``train.json`` into the pipeline before the store: no brain crop, and MONAI's
    ``CacheDataset(cache_rate=1.0)`` of the whole preprocessed cases (float32, whole grid) for training and
    validation."""
    parser["base_transforms"] = [
        t for t in parser["base_transforms"] if t.get("_target_") != "kd_components.transforms.CropToBraind"
    ]
    for section in ("train", "validate"):
        parser[f"{section}#dataset"] = {
            "_target_": "CacheDataset",
            "data": "@train_datalist" if section == "train" else "@val_datalist",
            "transform": f"@{section}#preprocessing",
            "cache_rate": 1.0,
            "num_workers": "@num_workers",
            "progress": False,
        }


def peak_ram(datalist: Path, store: Path, workers: int, steps: int, in_memory: bool = False) -> RamPoint:
    """Peak RAM of the teacher's default training over one datalist: building its datasets, one full epoch of its
    ``train#dataloader`` (with the store, cold: every case preprocessed and written; every sample drawn), a read of
    every validation case, and ``steps`` real training iterations of ``train#trainer``. ``in_memory``: the same
    with the pipeline before the store (:func:`_in_memory_cache`).

    The networks' sliding-window validation is left out (its memory does not depend on the number of cases).
    """
    parser = bundle_parser("teacher", datalist, store, num_workers=workers)
    if in_memory:
        _in_memory_cache(parser)
    start = time.perf_counter()
    with TreeMemory() as memory:
        trainer = parser.get_parsed_content("train#trainer")
        last = None
        for batch in parser.get_parsed_content("train#dataloader"):
            last = batch
        for _ in parser.get_parsed_content("validate#dataloader"):
            pass
        for _ in range(steps):
            trainer._iteration(trainer, last)
    return RamPoint(
        cases=len(json.loads(datalist.read_text())["training"]),
        training_cases=len(parser.get_parsed_content("train_datalist")),
        peak_gib=memory.peak / GIB,
        seconds=time.perf_counter() - start,
    )


@contextmanager
def gpu_busy_sampler(interval: float = 0.1) -> Iterator[list[int]]:
    """Sample ``torch.cuda.utilization()`` (percent of time a kernel ran, NVML) every ``interval`` s."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                samples.append(int(torch.cuda.utilization()))
            except Exception:  # no NVML (pynvml) here: no samples, the page says n/a
                return
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def gpu_training_busy(datalist: Path, store: Path, workers: int, iterations: int) -> tuple[float, float]:
    """On a GPU: ``iterations`` teacher iterations fed by the real loader (warm store, ``workers`` workers); the
    median GPU utilisation (%) and the seconds per iteration."""
    parser = bundle_parser("teacher", datalist, store, num_workers=workers, device="$torch.device('cuda:0')")
    trainer = parser.get_parsed_content("train#trainer")
    loader = parser.get_parsed_content("train#dataloader")

    def batches() -> Iterator[Mapping[str, Any]]:
        while True:
            yield from loader

    feed = batches()
    trainer._iteration(trainer, next(feed))  # warm-up (cuDNN autotuning, workers starting)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with gpu_busy_sampler() as busy:
        for _ in range(iterations):
            trainer._iteration(trainer, next(feed))
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / iterations
    return (statistics.median(busy) if busy else float("nan")), seconds


def epoch_hours(step_s: float, training_cases: int, loader_s: float, overlapped: bool) -> float:
    """Hours of one epoch (one iteration per training case, as ``train.json``'s loader draws them) from the seconds
    of a training step and of loading its batch: the slower of the two sets the pace when loader workers load the
    next batch during the step (``overlapped``), their sum when the main process loads it (0 workers)."""
    per_step = max(step_s, loader_s) if overlapped else step_s + loader_s
    return training_cases * per_step / 3600


def default_settings(bundle: str, keys: Sequence[str]) -> dict[str, Any]:
    """The bundle's ``train.json`` values of ``keys`` (e.g. ``epochs``, ``val_interval``)."""
    config = json.loads((BUNDLES[bundle] / "configs" / "train.json").read_text())
    return {key: config[key] for key in keys}
