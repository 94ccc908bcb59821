"""Networks: the hybrid VGG19-3D + ViT teacher and its building blocks."""

from kd_components.networks.configs import TEACHER_CONFIGS, build_teacher, teacher_config
from kd_components.networks.fusion import BRANCHES, GatedFusionBlock, MultiScaleFusion
from kd_components.networks.hybrid import FUSED_FEATURE_MODULES, FUSED_FEATURE_SCALES, DecoderUpBlock, HybridTeacher
from kd_components.networks.student import (
    StridedSegResNet,
    build_segresnet_student,
    build_student,
    feature_pairs,
    student_feature_modules,
)
from kd_components.networks.utils import parameter_groups, trainable_parameters, unwrap_module
from kd_components.networks.vgg import (
    VGG19Encoder3d,
    VGGLoadResult,
    inflate_conv2d_weight,
    load_torchvision_vgg19,
)
from kd_components.networks.vit import ViTEncoder3d

__all__ = [
    "BRANCHES",
    "FUSED_FEATURE_MODULES",
    "FUSED_FEATURE_SCALES",
    "TEACHER_CONFIGS",
    "DecoderUpBlock",
    "GatedFusionBlock",
    "HybridTeacher",
    "MultiScaleFusion",
    "StridedSegResNet",
    "VGG19Encoder3d",
    "VGGLoadResult",
    "ViTEncoder3d",
    "build_segresnet_student",
    "build_student",
    "build_teacher",
    "feature_pairs",
    "inflate_conv2d_weight",
    "load_torchvision_vgg19",
    "parameter_groups",
    "student_feature_modules",
    "teacher_config",
    "trainable_parameters",
    "unwrap_module",
]
