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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, load_net_with_metadata
from monai.transforms import Compose

__all__ = ["DISALLOWED_TRANSFORM_PREFIXES", "DeployedBundle", "filter_compose", "load_deployed_bundle"]

#: Transforms the App SDK removes from the bundle's pre- and post-processing (``DISALLOW_LOAD_SAVE``).
DISALLOWED_TRANSFORM_PREFIXES: tuple[str, ...] = ("LoadImage", "SaveImage")


def filter_compose(compose: Compose, prefixes: Sequence[str] = DISALLOWED_TRANSFORM_PREFIXES) -> Compose:
    """``compose`` without the transforms whose class names start with one of ``prefixes``."""
    kept = [t for t in compose.transforms if not type(t).__name__.startswith(tuple(prefixes))]
    return Compose(kept)


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
        KeyError: if ``config_name`` or ``metadata.json`` is not embedded in the file.
    """
    network, metadata, extra = load_net_with_metadata(str(filepath), more_extra_files=[config_name])
    if not metadata:
        raise KeyError(f"{filepath} has no embedded metadata.json: export it with --meta_file")
    if config_name not in extra:
        raise KeyError(f"{filepath} has no embedded {config_name}: export it with --config_file configs/{config_name}")
    config = json.loads(extra[config_name])
    parser = ConfigParser()
    parser.read_config(config)
    parser.read_meta(metadata)
    for key, value in (overrides or {}).items():
        parser[key] = value
    target = torch.device(device) if device is not None else parser.get_parsed_content("device")
    return DeployedBundle(
        network=network.to(target).eval(),
        metadata=metadata,
        config=config,
        preprocessing=filter_compose(parser.get_parsed_content("preprocessing")),
        inferer=parser.get_parsed_content("inferer"),
        postprocessing=filter_compose(parser.get_parsed_content("postprocessing")),
        device=target,
    )
