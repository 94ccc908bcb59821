"""Running an exported ``model.ts`` the way MONAI Deploy's ``MonaiBundleInferenceOperator`` does.

``python -m monai.bundle ckpt_export network_def --filepath models/model.ts ... --meta_file configs/metadata.json
--config_file configs/inference.json`` writes a TorchScript network with ``metadata.json`` and
``inference.json`` embedded (as ``extra/metadata.json`` and ``extra/inference.json`` in the archive). The
App SDK's operator reads that one file: it parses the embedded ``inference.json`` (with the metadata under
``_meta_``), builds its ``preprocessing``, ``inferer`` and ``postprocessing`` without the file-based
``LoadImage*``/``SaveImage*`` transforms (the SDK passes images in memory), runs the network, and hands the
result on. :class:`DeployedBundle` does the same without the SDK, so that this contract can be tested and
used where the SDK is not installed.

In memory, a case is ``{"image": MetaTensor (4, H, W, D)}``: channels ``[t1c, t1n, t2w, t2f]``, channel first,
with the scan's affine; the result is a ``MetaTensor`` ``(1, H, W, D)``: the BraTS label map (0, 1 NETC,
2 SNFH, 3 ET; 4 for ET with ``et_label=4``) on the input's grid.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, load_net_with_metadata
from monai.transforms import Compose

from kd_components.checkpoints.state import non_finite_tensors
from kd_components.geometry import GEOMETRY_FILE

__all__ = [
    "DISALLOWED_TRANSFORM_PREFIXES",
    "DeployedBundle",
    "ExportedModel",
    "ExportedModelError",
    "filter_compose",
    "find_model_file",
    "load_deployed_bundle",
    "read_exported",
]

#: Transforms the App SDK removes from the bundle's pre- and post-processing (``DISALLOW_LOAD_SAVE``).
DISALLOWED_TRANSFORM_PREFIXES: tuple[str, ...] = ("LoadImage", "SaveImage")


def filter_compose(compose: Compose, prefixes: Sequence[str] = DISALLOWED_TRANSFORM_PREFIXES) -> Compose:
    """``compose`` without the transforms whose class names start with one of ``prefixes``."""
    kept = [t for t in compose.transforms if not type(t).__name__.startswith(tuple(prefixes))]
    return Compose(kept)


class ExportedModelError(ValueError):
    """A model file that MONAI Deploy's bundle operator cannot run: the message names the file and says why."""


@dataclass
class ExportedModel:
    """An exported ``model.ts``: its path, the TorchScript network (CPU, eval mode) and the embedded configs
    (``geometry``: the embedded ``training_geometry.json``, the grid the weights were trained on, when present)."""

    path: Path
    network: torch.jit.ScriptModule
    metadata: dict[str, Any]
    config: dict[str, Any]
    geometry: dict[str, Any] | None = None


def find_model_file(path: str | os.PathLike[str]) -> Path:
    """The model file of ``path``: the file itself, or in a models folder ``model.ts``, else its one ``*.ts`` file
    at any depth (the ``-m`` argument of a MONAI Deploy application; a MAP keeps ``models/<name>/model.ts``).

    Raises:
        ExportedModelError: nothing there, or a folder without one clear ``.ts`` file.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ExportedModelError(f"{path}: no such model file or folder")
    if (path / "model.ts").is_file():
        return path / "model.ts"
    candidates = sorted(p for p in path.rglob("*.ts") if p.is_file())
    if len(candidates) != 1:
        found = ", ".join(str(p.relative_to(path)) for p in candidates) or "none"
        raise ExportedModelError(f"{path}: a models folder needs model.ts or exactly one *.ts file (found: {found})")
    return candidates[0]


def _embedded_files(path: Path) -> tuple[str, set[str]]:
    """The archive's root folder and the names of its embedded extra files (``<root>/extra/<name>``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise ExportedModelError(
            f"{path}: not a TorchScript archive ({type(err).__name__}: {err}); export it with "
            "`python -m monai.bundle ckpt_export network_def --filepath models/model.ts ...`"
        ) from err
    if not names or "/" not in names[0]:
        raise ExportedModelError(f"{path}: not a TorchScript archive (no root folder in the zip file)")
    root = names[0].split("/", 1)[0]
    prefix = f"{root}/extra/"
    return root, {name[len(prefix) :] for name in names if name.startswith(prefix)}


def read_exported(filepath: str | os.PathLike[str], config_name: str = "inference.json") -> ExportedModel:
    """Read an exported ``model.ts`` with the checks MONAI Deploy's bundle operator leaves to a failure later on.

    The SDK reads the embedded configs at ``<file stem>/extra/<name>`` of the archive: a ``model_script.ts``
    renamed to ``model.ts`` keeps its ``model_script/`` root, and the SDK then runs without ``inference.json``
    (no preprocessing, no sliding window) and fails further on. Here that is an error naming the file.

    Raises:
        ExportedModelError: no such file; not a TorchScript archive; ``metadata.json`` or ``config_name`` not
            embedded; the archive's root is not the file's stem; non-finite weights (the SDK's operator would run
            them and fail later without naming the cause).
    """
    path = Path(filepath)
    if not path.is_file():
        raise ExportedModelError(f"{path}: no such model file")
    root, extra_files = _embedded_files(path)
    missing = [name for name in ("metadata.json", config_name) if name not in extra_files]
    if missing:
        raise ExportedModelError(
            f"{path}: no embedded {' and '.join(missing)}: export it with `python -m monai.bundle ckpt_export "
            f"network_def --filepath {path.name} --ckpt_file models/model.pt --meta_file configs/metadata.json "
            f"--config_file configs/{config_name}`"
        )
    if root != path.stem:
        raise ExportedModelError(
            f"{path}: its configs are embedded under '{root}/', but MONAI Deploy reads '{path.stem}/extra/"
            f"{config_name}' (a renamed .ts file keeps its old root): export it again with --filepath {path.name}"
        )
    names = [config_name, *([GEOMETRY_FILE] if GEOMETRY_FILE in extra_files else [])]
    network, metadata, extra = load_net_with_metadata(str(path), map_location="cpu", more_extra_files=names)
    geometry = json.loads(extra[GEOMETRY_FILE]) if GEOMETRY_FILE in names else None
    nan = non_finite_tensors(network.state_dict())
    if nan:
        raise ExportedModelError(f"{path}: holds non-finite weights (a diverged training?): {nan[0]}")
    return ExportedModel(path, network.eval(), dict(metadata), json.loads(extra[config_name]), geometry)


@dataclass
class DeployedBundle:
    """An exported bundle network with the pieces of its embedded ``inference.json``.

    Attributes:
        network: the TorchScript network, in eval mode on ``device``.
        metadata: the embedded ``metadata.json`` (plus the versions ``ckpt_export`` adds).
        config: the embedded ``inference.json``.
        preprocessing: its ``preprocessing`` without ``LoadImage*``.
        inferer: its ``inferer``.
        postprocessing: its ``postprocessing`` without ``SaveImage*``.
        device: where the network runs.
    """

    network: torch.jit.ScriptModule
    metadata: dict[str, Any]
    config: dict[str, Any]
    preprocessing: Compose
    inferer: Any
    postprocessing: Compose
    device: torch.device

    def __call__(self, image: MetaTensor) -> MetaTensor:
        """
        Segment one case held in memory.

        Args:
            image: ``(4, H, W, D)`` channel-first, with the scan's affine in ``image.affine``.

        Returns:
            the label map ``(1, H, W, D)``, on the CPU, with the input's affine.
        """
        data = self.preprocessing({"image": image})
        with torch.no_grad():
            pred = self.inferer(data["image"][None].to(self.device), self.network)
        data["pred"] = pred[0].cpu()
        data["image"] = data["image"].cpu()
        return self.postprocessing(data)["pred"]


def load_deployed_bundle(
    filepath: str | os.PathLike[str],
    config_name: str = "inference.json",
    device: str | torch.device | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DeployedBundle:
    """
    Load ``model.ts`` and build what MONAI Deploy's bundle operator builds from its embedded configs.

    Args:
        filepath: the ``model.ts`` written by ``monai.bundle ckpt_export``.
        config_name: the embedded config to use. Defaults to "inference.json".
        device: where to run; ``None`` takes the config's ``device`` (CUDA when available).
        overrides: config ids to override, e.g. ``{"patch_size": [64, 64, 64]}``.

    Raises:
        ExportedModelError: see :func:`read_exported`.
    """
    exported = read_exported(filepath, config_name)
    parser = ConfigParser()
    parser.read_config(exported.config)
    parser.read_meta(exported.metadata)
    parser.update(exported.geometry or {})
    for key, value in (overrides or {}).items():
        parser[key] = value
    target = torch.device(device) if device is not None else parser.get_parsed_content("device")
    return DeployedBundle(
        network=exported.network.to(target),
        metadata=exported.metadata,
        config=exported.config,
        preprocessing=filter_compose(parser.get_parsed_content("preprocessing")),
        inferer=parser.get_parsed_content("inferer"),
        postprocessing=filter_compose(parser.get_parsed_content("postprocessing")),
        device=target,
    )
