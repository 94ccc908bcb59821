"""BraTS brain-tumour segmentation as a MONAI Deploy application.

    python deploy/app.py -i <case folder, or a folder of case folders> -o <output folder> -m <model.ts or models folder>

reads a BraTS case folder (``<case>-t1c``, ``-t1n``, ``-t2w``, ``-t2f`` ``.nii.gz``), segments it with an
exported bundle (``python -m monai.bundle ckpt_export ...``: a TorchScript network with ``metadata.json`` and
``inference.json`` embedded) and writes ``<case>.nii.gz`` (BraTS 2023 labels on the input's grid),
``<case>-volumes.json`` and ``<case>-slices.png``.

The engine is chosen with the environment variable ``BRATS_KD_ENGINE`` (in a MAP: ``app.yaml``'s ``env``):

- ``torchscript`` (default): MONAI Deploy's ``MonaiBundleInferenceOperator`` runs the TorchScript network with
  the embedded configs, exactly as ``inference.json`` says: the reference.
- ``openvino``: the same network in OpenVINO with ``brats-kd segment``'s engine (fp32, or ``BRATS_KD_PRECISION=bf16``;
  the sliding window over the brain's bounding box); the ONNX export is cached in ``BRATS_KD_CACHE`` (default:
  beside the model file, else the user's cache).

Given a folder of case folders, it segments them one after the other in one process (the model is loaded and
the engine compiled once): a case that cannot be used is named and left out, and the others are written.

Exit status 0 when every case is written; 1 when a case of a folder of cases was left out (one line ``error: ...``
each); 2 with one line naming the file when the case, the model or the output folder cannot be used (nothing is
written then).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from brats_operators import (
    BratsCaseLoaderOperator,
    CaseReportOperator,
    LabelMapWriterOperator,
    OpenVINOSegmentationOperator,
)
from holoscan.schedulers import EventBasedScheduler
from monai.bundle import ConfigParser
from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Image, IOType
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)

from kd_components.deploy import ExportedModelError, find_model_file, read_exported
from kd_components.geometry import GEOMETRY_FILE
from kd_components.io import OutputDirError
from kd_components.segment import CaseFailed, EngineError
from kd_components.segment.inputs import open_cases
from kd_components.segment.segmenter import no_geometry_warning

#: Values of ``BRATS_KD_ENGINE``.
APP_ENGINES = ("torchscript", "openvino")


class BratsSegmentationApp(Application):
    """Loader -> engine -> label-map writer and report writer, for each case of the input folder."""

    name = "brats-kd-segmentation"
    composed_at: float | None = None  #: perf_counter when the graph was made (models loaded, engine compiled)
    loader: BratsCaseLoaderOperator | None = None  #: the source, whose ``failed`` lists the cases left out
    description = "BraTS 2023 tumour sub-regions (NETC, SNFH, ET) from t1c, t1n, t2w and t2f with a distilled student"

    def compose(self) -> None:
        context: AppContext = Application.init_app_context(self.argv)
        engine = os.environ.get("BRATS_KD_ENGINE", "torchscript")
        if engine not in APP_ENGINES:
            raise EngineError(f"BRATS_KD_ENGINE={engine!r}: choose one of {', '.join(APP_ENGINES)}")
        model_file = find_model_file(context.model_path)
        exported = read_exported(model_file)  # both configs embedded where the SDK looks, before anything runs
        # the grid the weights were trained on, when exported with models/training_geometry.json (docs/deploy.md)
        configs = ["inference", *(["training_geometry"] if exported.geometry else [])]
        if not exported.geometry:  # either engine runs the weights at the embedded inference.json's grid
            bundle = ConfigParser(exported.config)
            bundle.read_meta(exported.metadata)
            warning = no_geometry_warning(f"{model_file} has no {GEOMETRY_FILE} embedded", bundle)
            logging.getLogger(__name__).warning("%s", warning)
            print(warning, file=sys.stderr)
        context.update({"model": str(model_file)})  # the SDK's model loader takes a file, or a folder per model
        output = Path(context.output_path)
        # one case folder or a folder of them (an output folder inside it is not one), checked before loading
        batch = open_cases(Path(context.input_path), output_dir=output)
        prepare = None
        if engine == "openvino":
            cache = os.environ.get("BRATS_KD_CACHE")
            precision = os.environ.get("BRATS_KD_PRECISION", "fp32")
            infer = OpenVINOSegmentationOperator(
                self, model_file=model_file, precision=precision, cache_dir=cache, name="openvino_inference"
            )
            prepare = infer.segmenter.preprocess  # as brats-kd segment: the loader reads and preprocesses a case
        else:
            infer = MonaiBundleInferenceOperator(
                self,
                app_context=context,
                input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
                output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
                bundle_path=model_file,
                bundle_config_names=BundleConfigNames(config_names=configs),
                name="bundle_inference",
            )
        loader = BratsCaseLoaderOperator(
            self, CountCondition(self, len(batch.cases)), batch=batch, prepare=prepare, name="case_loader"
        )
        self.loader = loader
        writer = LabelMapWriterOperator(self, output_folder=output, name="label_map_writer")
        report = CaseReportOperator(self, output_folder=output, engine=engine, name="case_report")
        self.add_flow(loader, infer, {("image", "image")})
        self.add_flow(infer, writer, {("pred", "pred")})
        self.add_flow(loader, report, {("background", "background")})
        self.add_flow(infer, report, {("pred", "pred")})
        if len(batch.cases) > 1:  # the next case is read while this one's outputs are written, as brats-kd segment does
            self.scheduler(EventBasedScheduler(self, worker_thread_number=2, name="event_based_scheduler"))
        self.composed_at = time.perf_counter()


def main() -> int:
    """Run the application; the exit status: 0 when every case is written, 1 when a case of a folder of cases was
    left out (each named on a line ``error: ...``), 2 with the reason for input that cannot be used at all."""
    app = BratsSegmentationApp()
    start = time.perf_counter()
    try:
        app.run()
    except (CaseFailed, ExportedModelError, EngineError, OutputDirError) as err:
        logging.getLogger(__name__).error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 2
    composed = (app.composed_at or start) - start
    segmented = time.perf_counter() - start - composed
    failed = app.loader.failed if app.loader is not None else []
    cases = app.loader.emitted if app.loader is not None else 1
    for problem in failed:
        print(f"error: {problem}", file=sys.stderr)
    print(
        f"done: set up in {composed:.2f} s, segmented in {segmented:.2f} s ({cases} case(s), "
        f"{segmented / max(cases, 1):.2f} s per case; {len(failed)} left out)",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
