"""rlvision: modern vision backbones as Stable-Baselines3 feature extractors.

>>> import rlvision
>>> rlvision.list_backbones()[:3]
['impala_cnn', 'mnv4_conv_large', 'mnv4_conv_medium']
>>> net = rlvision.create_backbone("mobilenetv4_nano", in_channels=4)
"""

from . import backbones, sr  # noqa: F401  (registers every backbone family and SR stage)
from .drq import drqv2_policy
from .extractors import (DEFAULT_BACKBONE, VisionCombinedExtractor, VisionExtractor, check_image_space,
                         policy_kwargs)
from .model_files import UntrustedModelError, load, save
from .preprocess import (PreprocessStage, create_preprocess, list_preprocess, load_preprocess, preprocess_info,
                         register_preprocess, save_preprocess)
from .registry import (Backbone, BackboneInfo, backbone_info, count_parameters, create_backbone, list_backbones,
                       register_backbone)

__all__ = ["load", "save", "UntrustedModelError", "drqv2_policy", "PreprocessStage", "create_preprocess",
           "list_preprocess", "load_preprocess", "preprocess_info", "register_preprocess", "save_preprocess",
           "VisionCombinedExtractor", "VisionExtractor", "check_image_space", "policy_kwargs", "DEFAULT_BACKBONE",
           "Backbone", "BackboneInfo", "backbone_info", "count_parameters", "create_backbone", "list_backbones",
           "register_backbone"]
__version__ = "0.1.0"
