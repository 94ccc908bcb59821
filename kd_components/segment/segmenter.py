"""Segment BraTS cases with a bundle's network: the bundle's own inference pre- and post-processing around a
sliding window over the brain, on any engine of :mod:`kd_components.segment.engines`.

One home for each step: the preprocessing (loading, normalisation), the sliding window (ROI, overlap, blending)
and the postprocessing up to the BraTS label map (non-finite check, sigmoid, threshold, regions to labels) are
read from the bundle's ``configs/inference.json``; only its ``SaveImaged`` is left out, because the label map is
written here (atomically, on the input's grid) together with the case's volumes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from monai.transforms import Compose, SaveImaged, SpatialPad

from kd_components.checkpoints.state import CheckpointError, load_checked
from kd_components.constants import ET_LABEL, MODALITIES
from kd_components.data.brats import BratsCase
from kd_components.data.plausibility import plausibility_problems
from kd_components.deploy import ExportedModelError, filter_compose, read_exported
from kd_components.export import load_network
from kd_components.geometry import GEOMETRY_FILE, read_training_geometry
from kd_components.handlers.region_volumes import region_volumes_ml
from kd_components.io import LABEL_MAP_DESCRIPTION, save_nifti_atomic
from kd_components.segment.crop import brain_box
from kd_components.segment.engines import EngineError, build_engine, resolve_device, resolve_engine
from kd_components.transforms import all_finite

__all__ = ["OUTSIDE_LOGIT", "CaseFailed", "Segmentation", "Segmenter", "default_bundle", "no_geometry_warning"]

#: Logit given to voxels outside the crop (background after the sigmoid and threshold, and finite).
OUTSIDE_LOGIT = -20.0


def default_bundle() -> Path:
    """The distilled student bundle of this repository (the default network of ``brats-kd segment``)."""
    return Path(__file__).resolve().parents[2] / "bundles" / "distilled_student"


class CaseFailed(RuntimeError):
    """One case could not be segmented; the message names the case and, where known, the file."""


@dataclass
class Segmentation:
    """The result of one case: the BraTS label map ``(H, W, D)`` uint8 on the input's grid, its affine, the
    volumes in mL (``NETC_ml``, ``SNFH_ml``, ``ET_ml``, ``TC_ml``, ``WT_ml``) and the seconds per step."""

    case_id: str
    labels: np.ndarray
    affine: np.ndarray
    volumes: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)


def no_geometry_warning(why: str, config: ConfigParser) -> str:
    """The warning for weights without their training grid: ``why`` (which file is missing), then the grid of the
    bundle ``config`` they run at instead."""
    return (
        f"warning: {why}: the grid the weights were trained on is unknown, so they run at the bundle's grid "
        f"(pixdim {list(config.get_parsed_content('pixdim'))}, orientation "
        f"{config.get_parsed_content('orientation')}); "
        f"weights trained at another voxel size segment worse there. Training writes {GEOMETRY_FILE} beside "
        "model.pt: copy it with the weights (or embed it in model.ts)"
    )


class Segmenter:
    """A bundle's network behind one engine, ready to segment cases.

    Args:
        bundle: the bundle folder (reads ``configs/inference.json``).
        ckpt: the weights (``model.pt`` or a training checkpoint); ``None``: ``<bundle>/models/model.pt``.
        engine: ``auto``, ``torch``, ``onnxruntime`` or ``openvino`` (see :func:`resolve_engine`).
        precision: ``fp32``, ``bf16`` or ``int8``.
        device: where the torch engine runs (``None``: CUDA if available, else the CPU).
        crop: run the sliding window over the brain's bounding box only (:func:`brain_box`).
        et_label: ET value written in the label maps (3: BraTS 2023; 4: BraTS 2018-2022).
        cache_dir: where the ONNX export and the int8 model are kept (default: beside the checkpoint).
        threads: CPU threads of ONNX Runtime / OpenVINO / torch (``None``: their default).
        calibration_cases: for ``int8``: the cases whose patches calibrate the quantization (the first
            ``calibration_count`` of them that can be read; ``None``: all).
        calibration_count: how many usable cases of ``calibration_cases`` calibrate.
        plausibility: refuse a case that is not a whole brain with its modalities in their places
            (:meth:`check_values`); off where the user knows better.
        overrides: further ``inference.json`` overrides (e.g. ``{"sw_overlap": 0.25}``).
        log: receives progress lines.
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str] | None = None,
        ckpt: str | os.PathLike[str] | None = None,
        engine: str = "auto",
        precision: str = "fp32",
        device: str | torch.device | None = None,
        crop: bool = True,
        et_label: int = ET_LABEL,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        calibration_cases: Sequence[BratsCase] = (),
        overrides: dict[str, Any] | None = None,
        log: Callable[[str], None] = print,
        calibration_count: int | None = None,
        plausibility: bool = True,
    ) -> None:
        self.plausibility = plausibility
        self.bundle = Path(bundle) if bundle is not None else default_bundle()
        config_file = self.bundle / "configs" / "inference.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{self.bundle} is not a bundle folder: {config_file} does not exist")
        self.ckpt = Path(ckpt) if ckpt is not None else self.bundle / "models" / "model.pt"
        if self.ckpt.exists() and not self.ckpt.is_file():
            raise FileNotFoundError(f"checkpoint {self.ckpt} is not a file (a folder or a device): pass the model.pt")
        if not self.ckpt.is_file():
            raise FileNotFoundError(
                f"checkpoint {self.ckpt} does not exist: train the bundle first (make demo) or pass --ckpt"
            )
        config = ConfigParser()
        config.read_config(str(config_file))
        config["bundle_root"] = str(self.bundle)
        geometry = read_training_geometry(self.ckpt)  # the grid these weights were trained on
        config.update(geometry or {})
        self._configure(
            config,
            lambda network: load_network(network, self.ckpt),
            engine,
            precision,
            device,
            crop,
            et_label,
            cache_dir,
            threads,
            calibration_cases,
            overrides,
            log,
            calibration_count,
        )
        if geometry is None:
            self._warn_no_geometry(f"{self.ckpt.parent / GEOMETRY_FILE} is not beside the weights", overrides, log)

    def _warn_no_geometry(self, why: str, overrides: dict[str, Any] | None, log: Callable[[str], None]) -> None:
        """Say that the weights' training grid is unknown, and which grid they run at (unless set by the caller)."""
        if "pixdim" not in (overrides or {}):
            log(no_geometry_warning(why, self.config))

    @classmethod
    def from_exported(
        cls,
        model_file: str | os.PathLike[str],
        engine: str = "auto",
        precision: str = "fp32",
        device: str | torch.device | None = None,
        crop: bool = True,
        et_label: int = ET_LABEL,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        overrides: dict[str, Any] | None = None,
        log: Callable[[str], None] = print,
        plausibility: bool = True,
    ) -> Segmenter:
        """A segmenter built from an exported ``model.ts`` alone (``monai.bundle ckpt_export`` with the bundle's
        ``metadata.json`` and ``inference.json`` embedded), as a MONAI Deploy application receives it.

        The embedded ``inference.json`` gives the pre- and post-processing, the sliding window and the eager
        ``network_def``, which takes the TorchScript file's weights (the ONNX and OpenVINO engines export the
        eager network). The export cache is keyed by the file's hash. Arguments as in :class:`Segmenter`.

        Raises:
            ExportedModelError: the file is not a TorchScript archive with both configs embedded, or its weights
                do not fit the embedded ``network_def``.
        """
        exported = read_exported(model_file)
        segmenter = cls.__new__(cls)
        segmenter.plausibility = plausibility
        segmenter.bundle = segmenter.ckpt = exported.path
        config = ConfigParser()
        config.read_config(exported.config)
        config.read_meta(exported.metadata)
        config.update(exported.geometry or {})

        def load_weights(network: torch.nn.Module) -> torch.nn.Module:
            try:
                load_checked(network, exported.network.state_dict(), str(exported.path))
            except CheckpointError as err:
                raise ExportedModelError(
                    f"{exported.path}: its weights do not fit the embedded inference.json's network_def, or are not "
                    f"finite ({str(err).splitlines()[-1].strip()})"
                ) from err
            return network.eval()

        segmenter._configure(
            config, load_weights, engine, precision, device, crop, et_label, cache_dir, threads, (), overrides, log
        )
        if exported.geometry is None:
            segmenter._warn_no_geometry(f"{exported.path} has no {GEOMETRY_FILE} embedded", overrides, log)
        return segmenter

    def _configure(
        self,
        config: ConfigParser,
        load_weights: Callable[[torch.nn.Module], torch.nn.Module],
        engine: str,
        precision: str,
        device: str | torch.device | None,
        crop: bool,
        et_label: int,
        cache_dir: str | os.PathLike[str] | None,
        threads: int | None,
        calibration_cases: Sequence[BratsCase],
        overrides: dict[str, Any] | None,
        log: Callable[[str], None],
        calibration_count: int | None = None,
    ) -> None:
        """Everything but where the config and the weights come from (``self.ckpt`` names the export cache)."""
        if threads is not None and threads < 1:
            raise EngineError(f"--threads {threads}: give a positive number of CPU threads (or leave it out: all)")
        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.config = config
        self.config.update({"et_label": et_label, "device": str(self.device)})
        self.config.update(overrides or {})
        self.et_label = et_label
        self.crop = crop
        self.preprocessing: Compose = self.config.get_parsed_content("preprocessing")
        postprocessing: Compose = self.config.get_parsed_content("postprocessing")
        self.postprocessing = Compose([t for t in postprocessing.transforms if not isinstance(t, SaveImaged)])
        self.inferer = self.config.get_parsed_content("inferer#inferer")  # the sliding window, without autocast
        self.roi_size = tuple(int(s) for s in self.inferer.roi_size)
        self.overlap = float(np.atleast_1d(self.inferer.overlap)[0])
        network = load_weights(self.config.get_parsed_content("network_def"))
        self.engine_name = resolve_engine(engine, self.device)
        self.precision = precision
        count = calibration_count
        calibration = (
            (lambda: calibration_patches(self, calibration_cases, max_cases=count)) if calibration_cases else None
        )
        self.engine = build_engine(
            self.engine_name,
            network,
            self.ckpt,
            self.roi_size,
            precision,
            self.device,
            cache_dir,
            threads,
            calibration,
            log,
        )

    def load(self, case: BratsCase) -> MetaTensor:
        """The case's four modalities through the bundle's preprocessing: ``(4, H, W, D)`` float32 MetaTensor."""
        missing = [m for m in MODALITIES if m not in case.images]
        if missing:
            raise CaseFailed(f"{case.case_id}: missing modality {', '.join(missing)} in {case.directory}")
        item = {"image": [str(case.images[m]) for m in MODALITIES], "case_id": case.case_id}
        try:
            return self.preprocessing(item)["image"]
        except Exception as err:  # MONAI wraps reader errors
            raise CaseFailed(read_failure(case, err)) from err

    def box_logits(self, image: torch.Tensor) -> tuple[tuple[slice, ...], torch.Tensor]:
        """The box the sliding window runs over (the brain's bounding box with ``crop``, else the whole grid) and
        its logits ``(3, h, w, d)``, for a preprocessed image ``(4, H, W, D)``."""
        box = brain_box(image) if self.crop else tuple(slice(0, size) for size in image.shape[1:])
        if box is None:
            raise ValueError("the image has no non-zero voxel: no brain to segment")
        region = image.as_tensor() if isinstance(image, MetaTensor) else image
        with torch.no_grad():
            out = self.inferer(region[(slice(None), *box)][None].to(self.device), self.engine)
        return box, out[0].float().cpu()

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits ``(3, H, W, D)`` of a preprocessed image ``(4, H, W, D)``; outside the box of
        :meth:`box_logits`, :data:`OUTSIDE_LOGIT`."""
        box, out = self.box_logits(image)
        full = torch.full((out.shape[0], *image.shape[1:]), OUTSIDE_LOGIT, dtype=out.dtype)
        full[(slice(None), *box)] = out
        return full

    @staticmethod
    def check_values(
        case_id: str, image: torch.Tensor, names: Sequence[str] = MODALITIES, plausibility: bool = True
    ) -> None:
        """Each channel of ``image`` ``(4, H, W, D)``, as read or preprocessed, finite and not constant (a constant
        scan normalises to zeros), and, with ``plausibility``, the case a whole brain with the modalities in their
        places (:func:`~kd_components.data.plausibility.plausibility_problems`; the voxel volume from the image's
        affine when it has one), else :class:`CaseFailed` naming the case and the channel's file in ``names``."""
        for channel, name in zip(image, names, strict=True):
            if not all_finite(channel):
                raise CaseFailed(f"{case_id}: {name}: non-finite voxels (NaN/Inf) in the scan")
            low, high = torch.aminmax(channel)
            if not bool(high > low):
                raise CaseFailed(f"{case_id}: {name}: constant scan (all voxels equal): no image contrast")
        if plausibility:
            problems = plausibility_problems(image, getattr(image, "affine", None), names)
            if problems:
                raise CaseFailed(f"{case_id}: {problems[0]} (if the scans are right: {PLAUSIBILITY_OVERRIDE})")

    def preprocess(self, image: MetaTensor) -> MetaTensor:
        """A case already in memory (``(4, H, W, D)`` channel first, the scan's affine, as ``LoadImage`` gives it)
        through the bundle's preprocessing without its ``LoadImage*``, as MONAI Deploy runs it."""
        return filter_compose(self.preprocessing)({"image": image})["image"]

    def segment(self, case: BratsCase) -> Segmentation:
        """Segment one case (nothing is written); :class:`CaseFailed` names the case and the reason."""
        start = time.perf_counter()
        image = self.load(case)
        read = time.perf_counter() - start
        segmentation = self.segment_image(case.case_id, image, [case.images[m].name for m in MODALITIES])
        segmentation.seconds = {"read": read, **segmentation.seconds}
        return segmentation

    def segment_image(self, case_id: str, image: MetaTensor, names: Sequence[str] = MODALITIES) -> Segmentation:
        """Segment one preprocessed case ``(4, H, W, D)`` (:meth:`load` or :meth:`preprocess`); ``names`` are its
        channels' files, for the messages of :class:`CaseFailed`."""
        start = time.perf_counter()
        self.check_values(case_id, image, names, self.plausibility)
        seconds = {"check": time.perf_counter() - start}
        start = time.perf_counter()
        try:
            full = self.logits(image)
        except ValueError as err:
            raise CaseFailed(f"{case_id}: {err}") from err
        seconds["network"] = time.perf_counter() - start
        start = time.perf_counter()
        # the postprocessing inverts the preprocessing's orientation and spacing (Invertd): the input's grid
        result = self.postprocessing({"pred": MetaTensor(full, meta=dict(image.meta)), "image": image})
        if "pred" not in result:
            raise CaseFailed(f"{case_id}: {result.get('problem', 'no prediction')}")
        pred = result["pred"]
        labels = np.ascontiguousarray(np.asarray(pred).astype(np.uint8).reshape(pred.shape[-3:]))
        affine = np.asarray(pred.affine, dtype=np.float64)
        volumes = region_volumes_ml(labels, affine, self.et_label)
        seconds["postprocess"] = time.perf_counter() - start
        return Segmentation(case_id, labels, affine, volumes, seconds)

    def write(self, segmentation: Segmentation, output_dir: str | os.PathLike[str]) -> Path:
        """Write ``<output_dir>/<case_id>.nii.gz`` (uint8, the input's affine, :data:`LABEL_MAP_DESCRIPTION` in its
        header) atomically; return its path."""
        path = Path(output_dir) / f"{segmentation.case_id}.nii.gz"
        save_nifti_atomic(
            segmentation.labels, segmentation.affine, path, dtype=np.uint8, description=LABEL_MAP_DESCRIPTION
        )
        return path


#: How a user turns the plausibility checks off, named in their messages.
PLAUSIBILITY_OVERRIDE = "brats-kd segment --no-plausibility-check, or BRATS_KD_PLAUSIBILITY=off for the Deploy app"


def calibration_patches(
    segmenter: Segmenter, cases: Sequence[BratsCase], per_case: int = 4, max_cases: int | None = None
) -> list[torch.Tensor]:
    """Patches ``(1, 4, *roi)`` for int8 calibration: up to ``per_case`` windows spread over each case's brain, from
    the first ``max_cases`` cases that can be read and hold a brain (``None``: every case); the others are passed
    over, so an invalid case among the first ones does not leave the calibration without data."""
    roi = segmenter.roi_size
    patches: list[torch.Tensor] = []
    used = 0
    for case in cases:
        if max_cases is not None and used >= max_cases:
            break
        try:  # a case that cannot be read or fails the value checks calibrates nothing (it is reported when segmented)
            image = segmenter.load(case)
            segmenter.check_values(
                case.case_id, image, [case.images[m].name for m in MODALITIES], segmenter.plausibility
            )
        except CaseFailed:
            continue
        box = brain_box(image)
        if box is None:
            continue
        region = SpatialPad(roi)(image.as_tensor()[(slice(None), *box)])
        windows = dense_patch_slices(region.shape[1:], roi, roi)
        for window in windows[:: max(1, len(windows) // per_case)][:per_case]:
            patches.append(region[(slice(None), *window)][None].contiguous())
        used += 1
    return patches


def read_failure(case: BratsCase, err: BaseException) -> str:
    """Why a case's files could not be read, in one line that names the file: MONAI's ``LoadImage`` passes over a
    reader's error (``<file>: cannot be read as NIfTI (...)``, :class:`~kd_components.niftiio.ParallelNibabelReader`)
    to try its other readers, whose error names no file; so each of the case's files is read again here (on failure
    only) and the first that cannot be read is named. Else the innermost exception (:func:`root_cause`)."""
    from kd_components.niftiio import read_nifti, unreadable_nifti, voxels

    for modality in MODALITIES:
        path = case.images.get(modality)
        if path is None:
            continue
        try:
            voxels(read_nifti(path))
        except Exception as file_err:  # what nibabel or the decompression raise for a broken file
            return f"{case.case_id}: {unreadable_nifti(path, file_err)}"
    return f"{case.case_id}: cannot be read ({root_cause(err)})"


def root_cause(err: BaseException) -> str:
    """The innermost exception's type and message (MONAI wraps a reader's error in several RuntimeErrors)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {str(err).strip()[:300]}"
