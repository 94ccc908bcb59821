"""A 3D VGG19 encoder, with loading of torchvision (2D, ImageNet) VGG19 weights by I3D inflation.

The encoder is the convolutional part (``features``) of VGG19 (Simonyan & Zisserman, "Very Deep
Convolutional Networks for Large-Scale Image Recognition", https://arxiv.org/abs/1409.1556) with
every 3x3 convolution made 3x3x3 and every 2x2 max-pooling made 2x2x2. The 2D -> 3D weight
inflation follows I3D (Carreira & Zisserman, "Quo Vadis, Action Recognition?",
https://arxiv.org/abs/1705.07750).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution

from kd_components.constants import MODALITIES

__all__ = [
    "TORCHVISION_VGG19_CONV_INDICES",
    "VGG19_STAGE_DEPTHS",
    "VGG19_STAGE_MULTIPLIERS",
    "VGG19_WIDTH",
    "VGG19Encoder3d",
    "VGGLoadResult",
    "inflate_conv2d_weight",
    "load_torchvision_vgg19",
]

#: Number of 3x3 convolutions in each of the 5 VGG19 stages (16 in all).
VGG19_STAGE_DEPTHS: tuple[int, ...] = (2, 2, 4, 4, 4)
#: Output channels of each stage as multiples of ``width`` (width 64 gives VGG19's 64, 128, 256, 512, 512).
VGG19_STAGE_MULTIPLIERS: tuple[int, ...] = (1, 2, 4, 8, 8)
#: Index ``N`` of the 16 convolutions in torchvision's ``vgg19().features`` (keys ``features.N.weight/bias``).
TORCHVISION_VGG19_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
#: Input channels of the torchvision (ImageNet, RGB) VGG19.
_RGB_CHANNELS = 3
#: VGG19's width (channels of stage 0): the default, and the only width a torchvision checkpoint fits.
VGG19_WIDTH = 64


class VGG19Encoder3d(nn.Module):
    """
    The VGG19 feature extractor in 3D: 16 3x3x3 convolutions (+ optional norm) + ReLU in 5 stages of
    2, 2, 4, 4, 4 convolutions with ``width * (1, 2, 4, 8, 8)`` channels, and a 2x2x2 max-pooling
    between consecutive stages. Stage ``k`` (k = 0..4) therefore works at 1/2^k of the input
    resolution; VGG19's fifth pooling and classifier are not part of the encoder.

    Module paths: ``stages.k`` is stage ``k`` (an ``nn.Sequential``: ``pool`` for k > 0, then
    ``conv1`` .. ``convN``, each a MONAI :class:`~monai.networks.blocks.Convolution` with submodules
    ``conv`` (the ``nn.Conv3d``) and ``adn`` (norm + ReLU)). A forward hook on ``stages.k`` captures
    the stage output.

    Normalisation: VGG19 itself has none (``norm=None`` gives the exact topology and is what the
    torchvision weights were trained with). The default is instance norm with a learnable affine,
    because (i) a plain 16-layer 3D network without normalisation is hard to train from scratch
    (VGG needed a staged initialisation), (ii) 3D patches mean batch sizes of 1-4, too small for
    batch statistics, and (iii) per-scan, per-channel standardisation suits MRI, whose intensities
    have no absolute scale. Norm layers are not in torchvision's VGG19, so pretrained loading leaves
    them at their initialisation (identity affine).

    Example::

        >>> enc = VGG19Encoder3d(in_channels=4, width=8)
        >>> [f.shape for f in enc(torch.zeros(1, 4, 32, 32, 32))]
        [(1, 8, 32, 32, 32), (1, 16, 16, 16, 16), (1, 32, 8, 8, 8), (1, 64, 4, 4, 4), (1, 64, 2, 2, 2)]
    """

    def __init__(
        self,
        in_channels: int = len(MODALITIES),
        width: int = VGG19_WIDTH,
        norm: tuple | str | None = ("instance", {"affine": True}),
        freeze_stages: int = 0,
        pretrained_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """
        Args:
            in_channels: number of input channels (MRI modalities). Defaults to ``len(MODALITIES)`` (4).
            width: channels of the first stage; stage ``k`` has ``width * (1, 2, 4, 8, 8)[k]``
                channels. 64 is VGG19 (and the only width torchvision weights fit).
            norm: MONAI normalisation spec applied after every convolution (before the ReLU), e.g.
                ``"instance"``, ``("instance", {"affine": True})``, ``"batch"``; ``None`` for the exact
                VGG19 (no normalisation). Defaults to instance norm with affine (see the class docstring).
            freeze_stages: freeze the parameters of the first ``freeze_stages`` stages (0..5): they get
                ``requires_grad=False`` and their norm layers stay in eval mode (no running-statistics
                updates) even when the module is put in train mode. Build the optimizer with
                :func:`~kd_components.networks.trainable_parameters`. Defaults to 0 (nothing frozen).
            pretrained_path: optional path of a torchvision-format VGG19 state dict, loaded with
                :func:`load_torchvision_vgg19` (strict) before freezing. Defaults to ``None``.

        Raises:
            ValueError: if ``in_channels`` or ``width`` is not positive or ``freeze_stages`` is not in 0..5.
        """
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be positive, got in_channels={in_channels}, width={width}")
        if not 0 <= freeze_stages <= len(VGG19_STAGE_DEPTHS):
            raise ValueError(f"freeze_stages must be in 0..{len(VGG19_STAGE_DEPTHS)}, got {freeze_stages}")
        self.in_channels = in_channels
        self.width = width
        self.out_channels = tuple(width * m for m in VGG19_STAGE_MULTIPLIERS)
        self.stages = nn.ModuleList()
        channels = in_channels
        for k, (depth, out_ch) in enumerate(zip(VGG19_STAGE_DEPTHS, self.out_channels, strict=True)):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            if k > 0:
                layers["pool"] = nn.MaxPool3d(kernel_size=2, stride=2)
            for j in range(depth):
                layers[f"conv{j + 1}"] = Convolution(
                    spatial_dims=3,
                    in_channels=channels,
                    out_channels=out_ch,
                    kernel_size=3,
                    act=("relu", {"inplace": True}),
                    norm=norm,
                    bias=True,  # VGG19 convolutions have biases (needed to load torchvision weights)
                )
                channels = out_ch
            self.stages.append(nn.Sequential(layers))
        self._init_weights()
        if pretrained_path is not None:
            load_torchvision_vgg19(self, pretrained_path, strict=True)
        self.freeze_stages = 0
        self.set_frozen_stages(freeze_stages)

    def _init_weights(self) -> None:
        """torchvision's VGG initialisation: Kaiming-normal (fan_out, ReLU) kernels, zero biases."""
        for conv in self.convs():
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def convs(self) -> list[nn.Conv3d]:
        """The 16 ``nn.Conv3d`` layers in forward order (torchvision ``features`` indices 0, 2, 5, ..., 34)."""
        return [m for m in self.stages.modules() if isinstance(m, nn.Conv3d)]

    def set_frozen_stages(self, freeze_stages: int) -> None:
        """Freeze the first ``freeze_stages`` stages and unfreeze the others (see ``freeze_stages`` in ``__init__``)."""
        if not 0 <= freeze_stages <= len(self.stages):
            raise ValueError(f"freeze_stages must be in 0..{len(self.stages)}, got {freeze_stages}")
        self.freeze_stages = freeze_stages
        for k, stage in enumerate(self.stages):
            for p in stage.parameters():
                p.requires_grad_(k >= freeze_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> VGG19Encoder3d:
        """Set train/eval mode, keeping the frozen stages in eval mode (their norm statistics do not update)."""
        super().train(mode)
        for stage in self.stages[: self.freeze_stages]:
            stage.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """
        Args:
            x: input volume ``(B, in_channels, H, W, D)``; H, W, D divisible by 16 keeps every stage exact
                (max-pooling floors odd sizes).

        Returns:
            the 5 stage outputs, finest first: stage ``k`` is ``(B, width * (1, 2, 4, 8, 8)[k], H/2^k, W/2^k, D/2^k)``.
        """
        features: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def inflate_conv2d_weight(weight: torch.Tensor, depth: int = 3) -> torch.Tensor:
    """I3D inflation of a 2D kernel ``(out, in, kh, kw)`` to 3D ``(out, in, kh, kw, depth)``.

    The kernel is repeated ``depth`` times along the last (depth) axis and divided by ``depth``, so
    a volume made by repeating a 2D image along depth gives, away from the depth borders, exactly
    the 2D convolution's response (biases are copied unchanged).
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 2D convolution kernel (out, in, kh, kw), got shape {tuple(weight.shape)}")
    return weight.unsqueeze(-1).repeat(1, 1, 1, 1, depth) / depth


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a first-layer kernel ``(out, 3, ...)`` trained on RGB to ``in_channels`` inputs.

    With 3 input channels the RGB kernel is kept. Otherwise every input channel gets the mean of
    the RGB kernels times ``3 / in_channels``: an input whose channels all carry the same image
    then gives the same response as a grey RGB image (sum over channels preserved), and each MRI
    modality starts as an equally weighted "luminance" channel.
    """
    if weight.shape[1] != _RGB_CHANNELS:
        raise ValueError(f"expected an RGB first-layer kernel (out, 3, ...), got shape {tuple(weight.shape)}")
    if in_channels == _RGB_CHANNELS:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True)
    repeats = [1] * weight.ndim
    repeats[1] = in_channels
    return mean.repeat(*repeats) * (_RGB_CHANNELS / in_channels)


class VGGLoadResult(NamedTuple):
    """What :func:`load_torchvision_vgg19` did: the loaded, missing and unexpected checkpoint keys."""

    loaded_keys: list[str]
    missing_keys: list[str]
    unexpected_keys: list[str]


def _unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """Accept a bare state dict, ``{"state_dict": ...}`` and ``module.``-prefixed (DataParallel) keys."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_torchvision_vgg19(
    encoder: VGG19Encoder3d,
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    strict: bool = True,
) -> VGGLoadResult:
    """Load torchvision-format (2D, RGB) VGG19 weights into a :class:`VGG19Encoder3d`, inflated to 3D.

    The checkpoint has keys ``features.N.weight`` ``(out, in, 3, 3)`` and ``features.N.bias``
    ``(out,)`` for ``N`` in :data:`TORCHVISION_VGG19_CONV_INDICES`; ``classifier.*`` keys are ignored.
    A dict ``{"state_dict": ...}`` and ``module.`` key prefixes are unwrapped. Each kernel is inflated
    with :func:`inflate_conv2d_weight` (repeat along depth, divide by 3); the first kernel is adapted
    from RGB to ``encoder.in_channels`` with :func:`adapt_input_channels` (RGB mean, repeated, scaled by
    ``3 / in_channels``). Norm layers are not in VGG19 and keep their initialisation.

    Everything is validated before anything is copied: on any error the encoder is left unchanged.

    Args:
        encoder: the encoder to load into (``width`` must be 64).
        path_or_state_dict: a path loaded with ``torch.load(path, map_location="cpu", weights_only=True)``,
            or an already loaded state dict.
        strict: if True (default), every one of the 16 convolutions must be present and no other
            ``features.*`` (or non-``classifier``) key may be. If False, missing convolutions keep their
            initialisation and unexpected keys are ignored (and reported in the result). Shape
            mismatches raise in both modes.

    Returns:
        the loaded, missing and unexpected keys.

    Raises:
        ValueError: naming every offending key with its expected and actual shapes (e.g. ``width != 64``),
            and every missing or unexpected key when ``strict``.
        TypeError: if the checkpoint is not a mapping of names to tensors.
    """
    if isinstance(path_or_state_dict, Mapping):
        raw: Any = path_or_state_dict
    else:
        raw = torch.load(os.fspath(path_or_state_dict), map_location="cpu", weights_only=True)
    state = _unwrap_state_dict(raw)

    convs = encoder.convs()
    if len(convs) != len(TORCHVISION_VGG19_CONV_INDICES):
        raise ValueError(f"encoder has {len(convs)} convolutions, VGG19 has {len(TORCHVISION_VGG19_CONV_INDICES)}")
    expected_keys = {f"features.{n}.{p}" for n in TORCHVISION_VGG19_CONV_INDICES for p in ("weight", "bias")}
    unexpected = sorted(k for k in state if k not in expected_keys and not k.startswith("classifier."))
    problems: list[str] = [f"{k}: unexpected key (not a VGG19 convolution)" for k in unexpected] if strict else []

    new_values: list[tuple[torch.Tensor, torch.Tensor]] = []  # (destination parameter, new value)
    loaded: list[str] = []
    missing: list[str] = []
    for i, (n, conv) in enumerate(zip(TORCHVISION_VGG19_CONV_INDICES, convs, strict=True)):
        w_key, b_key = f"features.{n}.weight", f"features.{n}.bias"
        in_2d = _RGB_CHANNELS if i == 0 else conv.in_channels
        expected = {w_key: (conv.out_channels, in_2d, 3, 3), b_key: (conv.out_channels,)}
        present = [k for k in (w_key, b_key) if k in state]
        if len(present) == 1 and not strict:  # strict mode reports the other half as missing
            problems.append(f"{present[0]}: present without its {'bias' if present[0] == w_key else 'weight'}")
        for key in (w_key, b_key):
            if key not in state:
                missing.append(key)
                if strict:
                    problems.append(f"{key}: missing, expected shape {expected[key]}")
                continue
            value = state[key]
            if not isinstance(value, torch.Tensor):
                problems.append(f"{key}: expected a tensor of shape {expected[key]}, got {type(value).__name__}")
            elif tuple(value.shape) != expected[key]:
                problems.append(f"{key}: expected shape {expected[key]}, got {tuple(value.shape)}")
        if len(present) != 2 or conv.bias is None or problems:
            continue  # nothing is copied when anything is wrong; keep validating to report every problem
        weight = state[w_key].detach().float()
        if i == 0:
            weight = adapt_input_channels(weight, encoder.in_channels)
        new_values.append((conv.weight, inflate_conv2d_weight(weight, depth=conv.kernel_size[-1])))
        new_values.append((conv.bias, state[b_key].detach().float()))
        loaded.extend([w_key, b_key])
    first = state.get(f"features.{TORCHVISION_VGG19_CONV_INDICES[0]}.weight")
    if isinstance(first, torch.Tensor) and first.ndim == 4 and first.shape[0] != encoder.width:
        problems.insert(0, f"hint: the checkpoint is a width-{first.shape[0]} VGG19 (features.0 output channels)")
    if any(k.endswith("running_mean") for k in state):
        problems.insert(0, "hint: this looks like vgg19_bn (batch norm, other layer indices); only vgg19 is supported")
    if problems:
        raise ValueError(
            "cannot load torchvision VGG19 weights into "
            f"VGG19Encoder3d(in_channels={encoder.in_channels}, width={encoder.width}):\n  " + "\n  ".join(problems)
        )
    with torch.no_grad():
        for param, value in new_values:
            param.copy_(value.to(dtype=param.dtype, device=param.device))
    return VGGLoadResult(loaded_keys=loaded, missing_keys=missing, unexpected_keys=unexpected)
