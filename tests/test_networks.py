"""The teacher network: VGG19-3D (+ torchvision weight inflation, freezing), ViT encoder, fusion, HybridTeacher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import ViT

from kd_components.constants import MODALITIES, REGIONS
from kd_components.networks import (
    FUSED_FEATURE_MODULES,
    TEACHER_CONFIGS,
    HybridTeacher,
    MultiScaleFusion,
    VGG19Encoder3d,
    ViTEncoder3d,
    build_teacher,
    inflate_conv2d_weight,
    load_torchvision_vgg19,
    teacher_config,
    trainable_parameters,
)
from kd_components.networks.vgg import TORCHVISION_VGG19_CONV_INDICES
from tests.conftest import TINY_TEACHER

#: torchvision VGG19 ``features`` channels (``cfg["E"]``): 16 convolutions.
VGG19_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)
#: The tiny teacher as complete ``HybridTeacher`` arguments for 32^3 inputs, with four ViT heads and a thinner decoder.
TINY = {
    **TINY_TEACHER,
    "img_size": (32, 32, 32),
    "vit_num_heads": 4,
    "vit_patch_size": 16,
    "decoder_channels": (4, 4, 8, 8),
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def torchvision_vgg19_state_dict(width: int = 64, in_channels: int = 3) -> dict[str, torch.Tensor]:
    """A made-up state dict in torchvision's VGG19 layout (small random values; tiny ``classifier`` stand-ins)."""
    state: dict[str, torch.Tensor] = {}
    c_in = in_channels
    for n, c in zip(TORCHVISION_VGG19_CONV_INDICES, VGG19_CHANNELS, strict=True):
        c_out = c * width // 64
        state[f"features.{n}.weight"] = torch.randn(c_out, c_in, 3, 3) * 0.05
        state[f"features.{n}.bias"] = torch.randn(c_out) * 0.05
        c_in = c_out
    state["classifier.0.weight"] = torch.randn(8, 8)  # ignored by the loader
    state["classifier.0.bias"] = torch.randn(8)
    return state


@pytest.fixture(scope="module")
def vgg19_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torchvision_vgg19_state_dict()


@pytest.fixture(scope="module")
def vgg64() -> VGG19Encoder3d:
    """A real-size (width 64), 4-channel, normalisation-free VGG19-3D (about 60 M parameters)."""
    return VGG19Encoder3d(in_channels=len(MODALITIES), width=64, norm=None)


@pytest.fixture
def unchanged(vgg64: VGG19Encoder3d) -> Iterator[None]:
    """Assert that the test leaves every parameter of ``vgg64`` as it found it."""
    before = [p.detach().clone() for p in vgg64.parameters()]
    yield
    assert all(torch.equal(a, b) for a, b in zip(before, vgg64.parameters(), strict=True))


# ----------------------------------------------------------------------------------------------------------- VGG


def test_vgg_stage_shapes() -> None:
    enc = VGG19Encoder3d(in_channels=4, width=4)
    feats = enc(torch.randn(2, 4, 32, 32, 16))
    assert [tuple(f.shape) for f in feats] == [
        (2, 4, 32, 32, 16),
        (2, 8, 16, 16, 8),
        (2, 16, 8, 8, 4),
        (2, 32, 4, 4, 2),
        (2, 32, 2, 2, 1),
    ]
    assert enc.out_channels == (4, 8, 16, 32, 32)


def test_vgg19_topology_without_forward() -> None:
    with torch.device("meta"):  # no memory, no forward
        enc = VGG19Encoder3d(in_channels=3, width=64, norm=None)
    convs = enc.convs()
    assert len(convs) == 16
    assert [c.out_channels for c in convs] == list(VGG19_CHANNELS)
    assert [c.in_channels for c in convs] == [3, *VGG19_CHANNELS[:-1]]
    assert all(c.kernel_size == (3, 3, 3) and c.padding == (1, 1, 1) and c.bias is not None for c in convs)
    per_stage = [sum(isinstance(m, nn.Conv3d) for m in stage.modules()) for stage in enc.stages]
    assert per_stage == [2, 2, 4, 4, 4]
    assert [isinstance(stage[0], nn.MaxPool3d) for stage in enc.stages] == [False, True, True, True, True]
    assert sum(isinstance(m, nn.ReLU) for m in enc.modules()) == 16
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in enc.modules())
    # torchvision's vgg19().features has 20,024,384 parameters; inflation triples the kernels, not the biases
    biases = sum(VGG19_CHANNELS)
    assert sum(p.numel() for p in enc.parameters()) == (20_024_384 - biases) * 3 + biases
    default = VGG19Encoder3d(width=2)  # default: instance norm (affine) after each convolution
    assert sum(isinstance(m, nn.InstanceNorm3d) and m.affine for m in default.modules()) == 16


def test_inflate_conv2d_weight_repeats_and_rescales() -> None:
    w = torch.randn(5, 2, 3, 3)
    w3 = inflate_conv2d_weight(w)
    assert w3.shape == (5, 2, 3, 3, 3)
    for k in range(3):
        torch.testing.assert_close(w3[..., k], w / 3)


def test_load_inflates_every_conv(tmp_path: Path, vgg64: VGG19Encoder3d, vgg19_state: dict) -> None:
    path = tmp_path / "vgg19.pth"
    torch.save(vgg19_state, path)
    result = load_torchvision_vgg19(vgg64, path)
    assert len(result.loaded_keys) == 32 and not result.missing_keys and not result.unexpected_keys
    for i, (n, conv) in enumerate(zip(TORCHVISION_VGG19_CONV_INDICES, vgg64.convs(), strict=True)):
        w2 = vgg19_state[f"features.{n}.weight"]
        if i == 0:  # RGB -> 4 MRI channels: RGB mean, scaled by 3/4
            w2 = w2.mean(1, keepdim=True).repeat(1, 4, 1, 1) * 3 / 4
        torch.testing.assert_close(conv.weight.detach(), w2.unsqueeze(-1).repeat(1, 1, 1, 1, 3) / 3)
        torch.testing.assert_close(conv.bias.detach(), vgg19_state[f"features.{n}.bias"])


def test_inflated_stage0_matches_2d_vgg_on_depth_repeated_image(vgg64: VGG19Encoder3d, vgg19_state: dict) -> None:
    load_torchvision_vgg19(vgg64, vgg19_state)
    image = torch.rand(1, 1, 12, 10)  # a grey 2D image
    # 2D VGG19 stage 0 (features[0:4]) on the grey image as RGB
    ref = F.relu(
        F.conv2d(image.repeat(1, 3, 1, 1), vgg19_state["features.0.weight"], vgg19_state["features.0.bias"], padding=1)
    )
    ref = F.relu(F.conv2d(ref, vgg19_state["features.2.weight"], vgg19_state["features.2.bias"], padding=1))
    # 3D: the same image in each of the 4 MRI channels, repeated along depth
    volume = image.unsqueeze(-1).repeat(1, 4, 1, 1, 8)
    with torch.no_grad():
        out = vgg64.stages[0](volume)
    assert out.shape == (1, 64, 12, 10, 8)
    for d in range(2, 6):  # interior slices: two 3x3x3 convolutions reach 2 slices from the depth borders
        torch.testing.assert_close(out[..., d], ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out[..., 0], ref, atol=1e-5)  # the border slices do see the zero padding


def test_inflated_inner_conv_matches_2d(vgg64: VGG19Encoder3d, vgg19_state: dict) -> None:
    load_torchvision_vgg19(vgg64, vgg19_state)
    feat = torch.randn(1, 128, 6, 6)  # input of features.7 (stage 1, second conv)
    ref = F.conv2d(feat, vgg19_state["features.7.weight"], vgg19_state["features.7.bias"], padding=1)
    with torch.no_grad():
        out = vgg64.convs()[3](feat.unsqueeze(-1).repeat(1, 1, 1, 1, 5))
    torch.testing.assert_close(out[..., 1:4], ref.unsqueeze(-1).expand(-1, -1, -1, -1, 3), atol=1e-5, rtol=1e-4)


def test_load_accepts_wrapped_and_prefixed_checkpoints(
    tmp_path: Path, vgg64: VGG19Encoder3d, vgg19_state: dict
) -> None:
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in vgg19_state.items()}, "epoch": 3}, path)
    assert len(load_torchvision_vgg19(vgg64, path).loaded_keys) == 32


@pytest.mark.usefixtures("unchanged")
def test_load_wrong_width_raises_and_changes_nothing(vgg64: VGG19Encoder3d) -> None:
    with pytest.raises(ValueError, match=r"features\.0\.weight: expected shape \(64, 3, 3, 3\), got \(32, 3, 3, 3\)"):
        load_torchvision_vgg19(vgg64, torchvision_vgg19_state_dict(width=32))


@pytest.mark.usefixtures("unchanged")
def test_load_missing_key_raises_and_changes_nothing(vgg64: VGG19Encoder3d, vgg19_state: dict) -> None:
    state = {k: v for k, v in vgg19_state.items() if k != "features.34.weight"}
    with pytest.raises(ValueError, match=r"features\.34\.weight: missing, expected shape \(512, 512, 3, 3\)"):
        load_torchvision_vgg19(vgg64, state)


@pytest.mark.usefixtures("unchanged")
def test_load_extra_conv_raises_and_changes_nothing(vgg64: VGG19Encoder3d, vgg19_state: dict) -> None:
    state = {**vgg19_state, "features.37.weight": torch.zeros(512, 512, 3, 3), "features.37.bias": torch.zeros(512)}
    with pytest.raises(ValueError, match=r"features\.37\.bias: unexpected key"):
        load_torchvision_vgg19(vgg64, state)


@pytest.mark.usefixtures("unchanged")
def test_load_batch_norm_vgg_raises_with_hint(vgg64: VGG19Encoder3d, vgg19_state: dict) -> None:
    state = {**vgg19_state, "features.1.running_mean": torch.zeros(64), "features.1.running_var": torch.ones(64)}
    with pytest.raises(ValueError, match=r"(?s)looks like vgg19_bn.*features\.1\.running_mean: unexpected key"):
        load_torchvision_vgg19(vgg64, state)


def test_load_non_strict_reports_missing_and_unexpected(vgg64: VGG19Encoder3d, vgg19_state: dict) -> None:
    state = {k: v for k, v in vgg19_state.items() if not k.startswith("features.34.")}
    state["features.99.weight"] = torch.zeros(1)
    before = vgg64.convs()[-1].weight.detach().clone()
    result = load_torchvision_vgg19(vgg64, state, strict=False)
    assert result.missing_keys == ["features.34.weight", "features.34.bias"]
    assert result.unexpected_keys == ["features.99.weight"]
    assert torch.equal(vgg64.convs()[-1].weight, before)  # the missing conv keeps its weights
    torch.testing.assert_close(vgg64.convs()[-2].bias.detach(), vgg19_state["features.32.bias"])


def test_load_wrong_width_via_constructor_path(tmp_path: Path) -> None:
    path = tmp_path / "vgg19.pth"
    torch.save(torchvision_vgg19_state_dict(width=64), path)
    with pytest.raises(
        ValueError,
        match=r"(?s)width=8\).*width-64 VGG19.*features\.0\.weight: expected shape \(8, 3, 3, 3\), "
        r"got \(64, 3, 3, 3\)",
    ):
        VGG19Encoder3d(width=8, pretrained_path=path)


def test_freezing_stages() -> None:
    enc = VGG19Encoder3d(in_channels=4, width=4, norm="batch", freeze_stages=2)
    frozen = [p for stage in enc.stages[:2] for p in stage.parameters()]
    free = [p for stage in enc.stages[2:] for p in stage.parameters()]
    assert frozen and free
    assert not any(p.requires_grad for p in frozen) and all(p.requires_grad for p in free)
    assert {id(p) for p in trainable_parameters(enc)} == {id(p) for p in free}

    enc.train()
    assert not enc.stages[0].training and not enc.stages[1].training and enc.stages[2].training
    bn_frozen = enc.stages[1].conv1.adn.N
    bn_free = enc.stages[2].conv1.adn.N
    stats_frozen, stats_free = bn_frozen.running_mean.clone(), bn_free.running_mean.clone()
    before_frozen = [p.detach().clone() for p in frozen]
    before_free = [p.detach().clone() for p in free]
    optimizer = torch.optim.SGD(trainable_parameters(enc), lr=0.1)
    sum(f.mean() for f in enc(torch.randn(2, 4, 32, 32, 32))).backward()
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in free)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before_frozen, frozen, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before_free, free, strict=True))
    assert torch.equal(bn_frozen.running_mean, stats_frozen)  # frozen norm statistics do not move
    assert not torch.equal(bn_free.running_mean, stats_free)


def test_freeze_passes_through_the_teacher() -> None:
    model = HybridTeacher(**TINY, freeze_vgg_stages=3)
    assert not any(p.requires_grad for s in model.vgg.stages[:3] for p in s.parameters())
    assert all(p.requires_grad for p in model.vgg.stages[3].parameters())
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # besides VGG stages 0-2 only MONAI's unused cross-attention norms are frozen (see ViTEncoder3d)
    assert {n for n in frozen if "norm_cross_attn" not in n} == {
        n for n, _ in model.named_parameters() if n.startswith(("vgg.stages.0.", "vgg.stages.1.", "vgg.stages.2."))
    }
    trainable = {id(p) for p in trainable_parameters(model)}
    assert trainable == {id(p) for n, p in model.named_parameters() if n not in frozen}


# ----------------------------------------------------------------------------------------------------------- ViT


def tiny_vit(**kwargs) -> ViTEncoder3d:
    args = {
        "img_size": 32,
        "patch_size": 8,
        "hidden_size": 48,
        "mlp_dim": 96,
        "num_layers": 4,
        "num_heads": 4,
        "out_layers": (2, 4),
    } | kwargs
    return ViTEncoder3d(**args)


def test_vit_hidden_states_match_monai_vit() -> None:
    enc = tiny_vit().eval()
    x = torch.randn(2, 4, 32, 32, 32)
    with torch.no_grad():
        feats = enc(x)
        last, hidden = ViT.forward(enc.vit, x)  # MONAI's own forward on the same modules
    assert [tuple(f.shape) for f in feats] == [(2, 48, 4, 4, 4)] * 2
    to_tokens = lambda f: f.flatten(2).transpose(1, 2)  # noqa: E731
    torch.testing.assert_close(to_tokens(feats[0]), hidden[1])  # after block 2 (1-based)
    torch.testing.assert_close(to_tokens(feats[1]), last)  # after block 4, with the final LayerNorm


def test_vit_other_input_size_interpolates_position_embeddings() -> None:
    enc = tiny_vit()
    feats = enc(torch.randn(1, 4, 48, 32, 16))
    assert [tuple(f.shape) for f in feats] == [(1, 48, 6, 4, 2)] * 2
    assert enc.position_embeddings([4, 4, 4]) is enc.vit.patch_embedding.position_embeddings
    pos = enc.position_embeddings([6, 4, 2])
    assert pos.shape == (1, 48, 48)
    # a constant embedding field stays constant under trilinear resampling
    with torch.no_grad():
        enc.vit.patch_embedding.position_embeddings.fill_(0.5)
    torch.testing.assert_close(enc.position_embeddings([6, 4, 2]), torch.full((1, 48, 48), 0.5))


@pytest.mark.parametrize("shape", [(1, 4, 36, 32, 32), (1, 4, 32, 32, 12)])
def test_vit_rejects_size_not_divisible_by_patch(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"input spatial size \[.*\] is not divisible by the patch size \[8, 8, 8\]"):
        tiny_vit()(torch.randn(*shape))


@pytest.mark.parametrize("out_layers", [(2, 3), (3, 2, 4), (0, 4), ()])
def test_vit_rejects_bad_out_layers(out_layers: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="out_layers"):
        tiny_vit(out_layers=out_layers)


# -------------------------------------------------------------------------------------------------------- fusion


@pytest.mark.parametrize("patch_size", [16, 8])
def test_fusion_shapes_and_scale_weights(patch_size: int) -> None:
    fusion = MultiScaleFusion(
        cnn_channels=(8, 16, 32, 32), vit_channels=24, out_channels=(4, 8, 8, 16), patch_size=patch_size
    )
    cnn = [torch.randn(2, c, 64 // s, 64 // s, 32 // s) for c, s in zip((8, 16, 32, 32), (2, 4, 8, 16), strict=True)]
    vit = [torch.randn(2, 24, 64 // patch_size, 64 // patch_size, 32 // patch_size) for _ in range(4)]
    out = fusion(cnn, vit)
    assert [tuple(f.shape) for f in out] == [(2, 4, 32, 32, 16), (2, 8, 16, 16, 8), (2, 8, 8, 8, 4), (2, 16, 4, 4, 2)]
    weights = fusion.scale_weights()
    assert weights.shape == (4,)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))
    torch.testing.assert_close(weights, torch.full((4,), 0.25))  # uniform at initialisation


def test_fusion_output_is_hooked_feature_times_scale_weight() -> None:
    fusion = MultiScaleFusion(cnn_channels=(4, 8), vit_channels=16, out_channels=4, scales=(2, 4), patch_size=4)
    with torch.no_grad():
        fusion.scale_logits.copy_(torch.tensor([1.0, -1.0]))
    hooked: list[torch.Tensor] = []
    for i in range(2):
        fusion.get_submodule(f"fuse.{i}").register_forward_hook(lambda m, a, y: hooked.append(y))
    out = fusion([torch.randn(1, 4, 8, 8, 8), torch.randn(1, 8, 4, 4, 4)], [torch.randn(1, 16, 4, 4, 4)] * 2)
    w = fusion.scale_weights()
    assert w[0] > 0.5 > w[1]
    for i in range(2):
        torch.testing.assert_close(out[i], hooked[i] * 2 * w[i])
        # each hooked feature is instance-normalised: zero mean, unit variance per channel
        torch.testing.assert_close(hooked[i].mean((2, 3, 4)), torch.zeros(1, 4), atol=1e-5, rtol=0)


def test_fusion_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="one entry per scale"):
        MultiScaleFusion(cnn_channels=(4, 8), vit_channels=16, out_channels=4)
    with pytest.raises(ValueError, match="power of two"):
        MultiScaleFusion(cnn_channels=(4,), vit_channels=16, out_channels=4, scales=(2,), patch_size=12)


# ------------------------------------------------------------------------------------------------------- teacher


@pytest.fixture(scope="module")
def tiny_teacher() -> HybridTeacher:
    torch.manual_seed(0)
    return HybridTeacher(**TINY)


def test_teacher_output_shape_at_training_and_other_sizes(tiny_teacher: HybridTeacher) -> None:
    for shape in [(2, 4, 32, 32, 32), (1, 4, 64, 32, 48)]:
        logits = tiny_teacher(torch.randn(*shape))
        assert logits.shape == (shape[0], len(REGIONS), *shape[2:])
    assert logits.min() < 0  # raw logits, no sigmoid


@pytest.mark.parametrize("shape", [(1, 4, 40, 32, 32), (1, 4, 32, 32, 24), (1, 4, 32, 32)])
def test_teacher_rejects_bad_input_shape(tiny_teacher: HybridTeacher, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"input spatial shape \[.*\] must be 3D and divisible by 16"):
        tiny_teacher(torch.randn(*shape))


def test_teacher_size_divisor_combines_vgg_and_patch() -> None:
    model = HybridTeacher(**(TINY | {"vit_patch_size": 32, "img_size": (64, 64, 64)}))
    assert model.size_divisor == 32
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(1, 4, 48, 64, 64))
    with pytest.raises(ValueError, match="img_size"):
        HybridTeacher(**(TINY | {"img_size": (40, 32, 32)}))


def test_teacher_gradients_reach_both_encoders_and_fusion_weights() -> None:
    model = HybridTeacher(**TINY)
    with torch.no_grad():  # break the symmetry of the uniform scale weights
        model.fusion.scale_logits.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0]))
    target = torch.rand(2, 3, 32, 32, 32)
    F.binary_cross_entropy_with_logits(model(torch.randn(2, 4, 32, 32, 32)), target).backward()
    grads = {
        "vgg first conv": model.vgg.convs()[0].weight.grad,
        "vgg last conv": model.vgg.convs()[-1].weight.grad,
        "vit patch embedding": model.vit.vit.patch_embedding.patch_embeddings.weight.grad,
        "vit position embedding": model.vit.vit.patch_embedding.position_embeddings.grad,
        "vit first block": model.vit.vit.blocks[0].attn.qkv.weight.grad,
        "fusion scale logits": model.fusion.scale_logits.grad,
        "fusion gate": model.fusion.fuse[0].gate.conv.weight.grad,
    }
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters requiring grad but unused (DDP would fail): {unused}"


def test_fused_features_reachable_by_module_path(tiny_teacher: HybridTeacher) -> None:
    assert tiny_teacher.feature_modules() == list(FUSED_FEATURE_MODULES) == [f"fusion.fuse.{i}" for i in range(4)]
    captured: dict[str, torch.Tensor] = {}
    handles = [
        tiny_teacher.get_submodule(path).register_forward_hook(lambda m, a, y, path=path: captured.update({path: y}))
        for path in tiny_teacher.feature_modules()
    ]
    try:
        tiny_teacher(torch.randn(1, 4, 64, 32, 32))
    finally:
        for h in handles:
            h.remove()
    expected = [(1, c, 64 // s, 32 // s, 32 // s) for c, s in zip(TINY["fusion_channels"], (2, 4, 8, 16), strict=True)]
    assert [tuple(captured[p].shape) for p in FUSED_FEATURE_MODULES] == expected
    assert tiny_teacher.feature_channels == list(TINY["fusion_channels"])
    assert tiny_teacher.scale_weights().shape == (4,)


def test_torchscript_export_matches_eager(tmp_path: Path) -> None:
    model = HybridTeacher(**TINY).eval()
    x = torch.randn(1, 4, 32, 32, 64)
    scripted = torch.jit.script(model)
    torch.jit.save(scripted, tmp_path / "model.ts")
    loaded = torch.jit.load(tmp_path / "model.ts")
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(loaded(x), expected, atol=1e-5, rtol=0)
    with pytest.raises(torch.jit.Error, match="divisible by 16"):
        loaded(torch.randn(1, 4, 40, 32, 32))


def test_named_configs_build() -> None:
    names = {f"{size}{ablation}" for size in ("demo", "default") for ablation in ("", "_cnn", "_vit")}
    assert set(TEACHER_CONFIGS) == names
    assert all(TEACHER_CONFIGS[f"demo_{b}"] == {**TEACHER_CONFIGS["demo"], "branches": b} for b in ("cnn", "vit"))
    demo = build_teacher("demo", img_size=(64, 64, 64))
    assert demo(torch.randn(1, 4, 64, 64, 64)).shape == (1, 3, 64, 64, 64)
    with torch.device("meta"):  # the default size (VGG19 + ViT-B/16) without allocating it
        default = build_teacher("default")
    assert default.vgg.out_channels == (64, 128, 256, 512, 512)
    assert len(default.vit.vit.blocks) == 12 and default.vit.hidden_size == 768
    assert teacher_config("demo", vgg_width=4)["vgg_width"] == 4 and TEACHER_CONFIGS["demo"]["vgg_width"] == 8
    with pytest.raises(KeyError, match="unknown teacher configuration"):
        teacher_config("huge")


def test_output_prior_sets_the_initial_foreground_probability() -> None:
    from kd_components.networks.init import init_output_prior

    head = torch.nn.Conv3d(8, 3, kernel_size=1)
    init_output_prior(head, 0.1)
    torch.testing.assert_close(torch.sigmoid(head.bias), torch.full((3,), 0.1))
    with pytest.raises(ValueError, match=r"prior must be in \(0, 1\)"):
        init_output_prior(head, 1.0)
    with pytest.raises(ValueError, match="no convolution with a bias"):
        init_output_prior(torch.nn.Conv3d(8, 3, kernel_size=1, bias=False), 0.1)
