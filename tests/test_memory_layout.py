"""Channels-last training on the CPU (``kd_components.memory_layout``): the setting, the converted networks, and the
bundles that use it. The speed is measured by ``scripts/benchmark_training.py``, not here."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from kd_components.checkpoints import load_frozen_teacher
from kd_components.config_checks import BundleSettingError
from kd_components.memory_layout import to_layout, use_channels_last
from kd_components.networks import build_student, build_teacher
from tests.conftest import REPO_ROOT

_CL = torch.channels_last_3d


def _conv_weights(network: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in network.modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)]


def test_the_setting_resolves_per_device() -> None:
    assert use_channels_last("auto", "cpu") and use_channels_last(" AUTO ", torch.device("cpu"))
    assert not use_channels_last("auto", "cuda:0")  # not measured on a GPU: left as it is
    assert use_channels_last(True, "cuda:0") and not use_channels_last("false", "cpu")
    with pytest.raises(BundleSettingError, match="channels_last"):
        use_channels_last("sometimes", "cpu")


def test_a_channels_last_network_computes_what_the_default_one_does() -> None:
    """Same weights in either layout: the outputs and gradients agree to float32 rounding, and the state dict of the
    converted network loads into a default one."""
    torch.manual_seed(0)
    default = build_student()
    converted = to_layout(build_student(), True)
    converted.load_state_dict(default.state_dict())
    weights = _conv_weights(converted)
    assert weights and all(w.is_contiguous(memory_format=_CL) for w in weights)
    assert not all(w.is_contiguous(memory_format=_CL) for w in _conv_weights(default))
    x = torch.randn(1, 4, 32, 32, 32)
    outputs = [network(x) for network in (default, converted)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4)
    for out in outputs:
        out.square().mean().backward()
    grads = [_conv_weights(n)[0].grad for n in (default, converted)]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)
    back = build_student()
    back.load_state_dict(converted.state_dict())
    torch.testing.assert_close(back(x), outputs[0], rtol=1e-4, atol=1e-4)
    assert to_layout(default, False) is default  # false: the same module, untouched
    assert not weights[0].is_contiguous()  # the converted kernels are not channels-first any more


def test_the_frozen_teacher_is_loaded_in_the_layout_asked_for(tmp_path) -> None:
    ckpt = tmp_path / "model.pt"
    torch.save(build_teacher("demo").state_dict(), ckpt)
    for channels_last in (False, True):
        teacher = load_frozen_teacher(build_teacher("demo"), ckpt, "cpu", channels_last=channels_last)
        weights = _conv_weights(teacher)
        assert all(w.is_contiguous(memory_format=_CL) for w in weights) == channels_last
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("bundle", ["hybrid_teacher", "distilled_student"])
@pytest.mark.parametrize(("setting", "expected"), [("auto", True), (False, False)])
def test_the_bundles_train_channels_last_on_the_cpu(bundle: str, setting: object, expected: bool) -> None:
    """``train.json`` (and its multi-GPU overlay) builds the network to train in the layout the setting gives."""
    from monai.bundle import ConfigParser

    for overlay in ([], ["multi_gpu_train.json"]):
        config = ConfigParser()
        config.read_config([str(REPO_ROOT / "bundles" / bundle / "configs" / n) for n in ["train.json", *overlay]])
        config["device"] = "$torch.device('cpu')"
        config["channels_last"] = setting
        # multi-GPU: the network that DDP wraps (no process group needed to build it)
        network = config.get_parsed_content("network#module#network" if overlay else "network")
        weights = _conv_weights(network)
        assert weights and all(w.is_contiguous(memory_format=_CL) for w in weights) == expected
