"""The operators of the BraTS segmentation application (``app.py``): a case loader, the OpenVINO engine of
``brats-kd segment``, a label-map writer and a report writer. MONAI Deploy's ``MonaiBundleInferenceOperator`` is
the reference engine; every operator hands the label map on in its layout (``(D, W, H)`` uint8 with the input's
metadata), so that the writers take either engine's output.

The work is done by ``kd_components`` (the same code as ``brats-kd segment``); these classes only connect it
to the SDK's ports.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import MetaTensor
from monai.deploy.core import Fragment, Image, Operator, OperatorSpec

from kd_components.constants import ET_LABEL, MODALITIES
from kd_components.data.brats import BratsCase
from kd_components.handlers.region_volumes import region_volumes_ml
from kd_components.io import LABEL_MAP_DESCRIPTION, check_output_dir, save_nifti_atomic
from kd_components.segment import CaseFailed, EngineError, Segmentation, Segmenter
from kd_components.segment.inputs import CaseBatch, read_case_image
from kd_components.segment.report import write_case_report
from kd_components.segment.segmenter import root_cause

__all__ = [
    "BratsCaseLoaderOperator",
    "CaseReportOperator",
    "LabelMapWriterOperator",
    "OpenVINOSegmentationOperator",
    "label_map_of",
]

logger = logging.getLogger(__name__)


def label_map_of(pred: Image) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The label map ``(H, W, D)`` uint8, its affine ``(4, 4)`` and the metadata of a ``pred`` Image (the SDK's
    bundle operator emits it as ``(D, W, H)``, the input's axes reversed, with the metadata of the preprocessed
    image: its ``affine`` is the network's grid, ``original_affine`` the input's, where the inverted label map
    lies)."""
    meta = pred.metadata()
    labels = np.ascontiguousarray(np.swapaxes(np.asarray(pred.asnumpy()), 0, 2)).astype(np.uint8, copy=False)
    affine = np.asarray(meta.get("original_affine", meta["affine"]), dtype=np.float64)
    return labels, affine, meta


class BratsCaseLoaderOperator(Operator):
    """Source: the BraTS cases of the input folder, one per call -> ``image``, an Image ``(4, H, W, D)`` float32,
    channels ``[t1c, t1n, t2w, t2f]``, with ``affine``, ``original_affine``, ``spacing``, ``case_id`` and
    ``filenames`` in its metadata, and ``background``, a copy of its t2f ``(H, W, D)`` for the report (the SDK's
    bundle operator normalises the array it receives in place).

    With ``prepare`` (the OpenVINO engine: :meth:`Segmenter.preprocess`), ``image`` is the case already brought to
    the network's grid and normalised, a MetaTensor that carries the transforms the label map is carried back
    through, and the checks look at it there, as ``brats-kd segment`` does: in a folder of cases the next case is
    then read *and preprocessed* while the engine runs on this one. Without it (the SDK's bundle operator, which
    preprocesses what it receives), ``image`` holds the voxels as read, checked as read.

    ``batch`` holds the cases of the input folder, one case folder or a folder of case folders
    (``kd_components.segment.inputs.open_cases``, which the app calls before any model is loaded, so that input
    that cannot be used fails first). A case whose voxels fail the checks is named in :attr:`failed`, as are
    ``batch``'s problems; in a folder of cases it is left out (the app's exit status is then 1) and the others are
    segmented in the same process: the model is loaded, and the engine compiled, once. A single case's failure
    is the application's error (``kd_components.segment.CaseFailed``, naming the case and the file). Give the
    operator a ``CountCondition`` of one call per case of ``batch``.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        batch: CaseBatch,
        prepare: Callable[[MetaTensor], MetaTensor] | None = None,
        **kwargs: Any,
    ) -> None:
        self.cases = batch.cases
        self.prepare = prepare
        self.failed: list[str] = list(batch.problems)
        for problem in self.failed:
            logger.error("%s", problem)
        self._next = 0
        self.emitted = 0  #: cases read and handed on
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("image")
        spec.output("background")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        # the next case that can be read and passes the checks: in a folder of cases, one that fails is named and
        # left out; a single case's failure is the application's error
        while self._next < len(self.cases):
            case = self.cases[self._next]
            self._next += 1
            try:
                image, background, meta = self._read(case)
            except CaseFailed as err:
                if len(self.cases) == 1:
                    raise
                self.failed.append(str(err))
                logger.error("%s", err)
                continue
            op_output.emit(Image(image, metadata=meta), "image")
            op_output.emit(Image(background, metadata=dict(meta)), "background")
            self.emitted += 1
            return

    def _read(self, case: BratsCase) -> tuple[np.ndarray | MetaTensor, np.ndarray, dict[str, Any]]:
        """The case's image for the engine (``(4, H, W, D)`` float32 as read, or with ``prepare`` the MetaTensor on
        the network's grid), checked; its t2f as read ``(H, W, D)``; and the metadata the operators pass on (the
        affine is the scan's, where the label map will lie)."""
        start = time.perf_counter()
        read = read_case_image(case)
        names = [case.images[m].name for m in MODALITIES]
        background = np.array(read[MODALITIES.index("t2f")].numpy())  # a copy: an engine may change what it gets
        affine = np.asarray(read.affine, dtype=np.float64)
        image: np.ndarray | MetaTensor
        if self.prepare is None:  # the SDK's bundle operator preprocesses what it gets: the voxels as read
            checked, image = read, np.ascontiguousarray(read.numpy())
        else:
            try:
                checked = image = self.prepare(read)
            except Exception as err:  # as Segmenter.load: the transform's error in one line that names the case
                raise CaseFailed(f"{case.case_id}: cannot be preprocessed ({root_cause(err)})") from err
        # either engine would fail later on bad values, and less clearly; an implausible case (not a whole brain, a
        # modality in another's place) would be segmented wrongly without a word: both are refused, the latter unless
        # BRATS_KD_PLAUSIBILITY=off
        plausibility = os.environ.get("BRATS_KD_PLAUSIBILITY", "on").strip().lower() not in ("off", "0", "false", "no")
        Segmenter.check_values(case.case_id, checked, names, plausibility)
        meta = {
            "affine": affine,
            "original_affine": affine.copy(),
            "spacing": np.linalg.norm(affine[:3, :3], axis=0),
            "case_id": case.case_id,
            "filenames": names,
        }
        logger.info(f"{case.case_id}: read {tuple(read.shape)} in {time.perf_counter() - start:.2f} s")
        return image, background, meta


class OpenVINOSegmentationOperator(Operator):
    """``image`` -> ``pred``: the model file's network in OpenVINO (``Segmenter.from_exported``: the embedded
    ``inference.json``'s preprocessing, a sliding window over the brain's bounding box, its postprocessing), the
    label map in the layout of MONAI Deploy's bundle operator.

    Args:
        model_file: the exported ``model.ts``.
        precision: ``fp32`` or ``bf16``.
        cache_dir: where the ONNX export of the model is kept (``None``: beside the model file, else the user's
            cache).
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        model_file: Path,
        precision: str = "fp32",
        cache_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if precision not in ("fp32", "bf16"):  # int8 needs calibration cases, which one case is not
            raise EngineError(f"BRATS_KD_PRECISION={precision!r}: the application runs OpenVINO at fp32 or bf16")
        self.segmenter = Segmenter.from_exported(
            model_file,
            engine="openvino",
            precision=precision,
            device="cpu",
            cache_dir=cache_dir,
            log=logger.info,
            plausibility=False,  # checked once, by the loader, on its grid (BRATS_KD_PLAUSIBILITY)
        )
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("image")
        spec.output("pred")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        received = op_input.receive("image")
        meta = received.metadata()
        image = received.asnumpy()  # the loader's MetaTensor, preprocessed and checked (``prepare``)
        if not isinstance(image, MetaTensor):
            raise TypeError("the OpenVINO engine takes the case preprocessed by the loader (its prepare=preprocess)")
        segmenter = self.segmenter
        segmentation = segmenter.segment_image(meta["case_id"], image, meta["filenames"])
        seconds = segmentation.seconds["network"]
        logger.info(f"{meta['case_id']}: OpenVINO {segmenter.precision}, network {seconds:.2f} s")
        op_output.emit(Image(np.swapaxes(segmentation.labels, 0, 2), metadata=meta), "pred")


class LabelMapWriterOperator(Operator):
    """Sink: ``pred`` -> ``<output_folder>/<case_id>.nii.gz``, uint8 BraTS labels on the input's grid and affine,
    marked as a brats-kd label map in the header (a user's file of that name is never replaced: the app's
    ``open_cases`` leaves its case out), written atomically (an interrupted run leaves no partial file)."""

    def __init__(self, fragment: Fragment, *args: Any, output_folder: Path, **kwargs: Any) -> None:
        self.output_folder = check_output_dir(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("pred")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        labels, affine, meta = label_map_of(op_input.receive("pred"))
        path = self.output_folder / f"{meta['case_id']}.nii.gz"
        save_nifti_atomic(labels, affine, path, dtype=np.uint8, description=LABEL_MAP_DESCRIPTION)
        logger.info(f"{meta['case_id']}: label map {path}")


class CaseReportOperator(Operator):
    """Sink: ``background`` (t2f) and ``pred`` -> ``<case_id>-volumes.json`` (tumour volumes in mL) and
    ``<case_id>-slices.png`` (axial, coronal and sagittal t2f slices through the tumour with the labels)."""

    def __init__(self, fragment: Fragment, *args: Any, output_folder: Path, engine: str, **kwargs: Any) -> None:
        self.output_folder = Path(output_folder)
        self.engine = engine
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("background")
        spec.input("pred")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        received = op_input.receive("background")
        labels, affine, meta = label_map_of(op_input.receive("pred"))
        if received.metadata().get("case_id") != meta["case_id"]:  # the two ports' messages come case by case
            raise RuntimeError(f"report: t2f of {received.metadata().get('case_id')} with labels of {meta['case_id']}")
        background = np.asarray(received.asnumpy())
        segmentation = Segmentation(meta["case_id"], labels, affine, region_volumes_ml(labels, affine, ET_LABEL))
        paths = write_case_report(segmentation, background, self.output_folder, self.engine)
        logger.info(f"{meta['case_id']}: report {paths['volumes']} and {paths['slices']}")
