"""Stable-Baselines3 feature extractors built on the backbone registry, and the ``policy_kwargs`` helper."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from .algorithms import ALGORITHMS, ENCODER_SHARING, algorithm
from .inference_copy import InferenceCopy
from .preprocess import create_preprocess, load_preprocess
from .checks import accepted_keywords, check_int, check_keywords
from .layers import RandomShift
from .pretrained import ImageNetNormalize
from .registry import INITS, backbone_info, create_backbone

# The encoder of every entry point that is not told one (VisionExtractor, policy_kwargs, make_agent, RunSpec,
# rlvision train, the Zoo helpers), named here only. The rule (issue 31): the encoder that reaches the return threshold
# in the most runs over the benchmark's tasks, ties to the fewer median seconds. mobilenetv4_cpu_rl since issue 31:
# 20/20 runs over four tasks (nature_cnn 13/20, scoring 0.0 on Dynamic-Obstacles in all 5 seeds), and fewer seconds
# to the threshold than nature_cnn on each task (BENCHMARKS.md "MobileNet-v4 that wins per second"). Before:
# mobilenetv4_nano_rl until issue 21, nature_cnn from issue 21 to issue 31.
DEFAULT_BACKBONE = "mobilenetv4_cpu_rl"

def check_image_space(space: spaces.Space, normalized_image: bool = False) -> None:
    """Raise a ValueError that names the fix unless ``space`` is a channel-first image Box SB3 can feed us."""
    if isinstance(space, spaces.Dict):
        raise ValueError("VisionExtractor takes a single image Box; for Dict observations use "
                         "VisionCombinedExtractor (rlvision.policy_kwargs(..., "
                         "observation_space=env.observation_space) picks it) with SB3's MultiInputPolicy.")
    if not isinstance(space, spaces.Box) or len(space.shape) != 3:
        shape = getattr(space, "shape", None)
        raise ValueError(f"VisionExtractor needs image observations, a Box of shape (C, H, W); got {space} "
                         f"(shape {shape}). For vector observations use SB3's MlpPolicy.")
    if int(np.argmin(space.shape)) == 2 and space.shape[2] < space.shape[0]:
        c = space.shape[2]
        raise ValueError(f"Observation space of shape {space.shape} is channel-last (H, W, C); VisionExtractor takes "
                         f"channel-first (C, H, W) = {(c, *space.shape[:2])}. SB3 algorithms transpose image envs "
                         f"themselves (VecTransposeImage); rlvision.envs.make_env returns channel-first envs; when "
                         f"you build the extractor yourself, wrap the env in VecTransposeImage or permute the space.")
    if space.dtype == np.uint8:
        if np.any(space.low != 0) or np.any(space.high != 255):
            raise ValueError("uint8 image observations must have bounds [0, 255] (SB3 divides them by 255).")
    elif not normalized_image:
        raise ValueError(f"Image observations of dtype {space.dtype} are not scaled by SB3 (it divides only uint8 "
                         f"images by 255). If they are already in [0, 1], pass normalized_image=True "
                         f"(rlvision.policy_kwargs(..., normalized_image=True) also sets normalize_images=False); "
                         f"otherwise make the env return uint8 images.")


class SpatialPool(nn.Module):
    """Reduce a (B, C, H, W) map to a flat vector: ``"flatten"`` -> C*H*W, ``"avg"`` -> C, int g -> C*min(g,H)*min(g,W)
    by adaptive average pooling. The output size is fixed at build time from the map size."""

    def __init__(self, mode: str | int, height: int, width: int):
        super().__init__()
        if mode not in ("flatten", "avg") and not (isinstance(mode, int) and mode > 0):
            raise ValueError(f"pool must be 'flatten', 'avg' or a positive int grid size, got {mode!r}.")
        self.mode = mode
        self.size = (min(mode, height), min(mode, width)) if isinstance(mode, int) else None
        self.identity = self.size == (height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avg":
            return x.mean((2, 3))
        if self.size is not None and not self.identity:
            x = F.adaptive_avg_pool2d(x, self.size)
        return x.flatten(1)

    def out_features(self, channels: int, height: int, width: int) -> int:
        if self.mode == "avg":
            return channels
        h, w = self.size or (height, width)
        return channels * h * w


# what follows pool+Linear: SB3's NatureCNN convention, or SAC-AE's / DrQ-v2's trunk
HEADS = ("relu", "layernorm")
# the encoder's compute precision: fp32, bf16 autocast, or decided at run time by the hardware (auto)
PRECISIONS = ("fp32", "bf16", "auto")


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later), where oneDNN runs bf16 convolutions and
    matmuls faster than fp32 (IMPALA's CNN forward+backward: 2.7x, BENCHMARKS.md "Procgen")."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def autocast_dtype(precision: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype of an encoder's forward on ``device_type`` (None: plain fp32). ``"auto"`` is decided here,
    at run time, by the hardware: bf16 on a CPU with AMX, fp32 elsewhere (CPUs without AMX, where bf16 runs through
    slower paths, and CUDA, where TF32 already applies and bf16 was not measured against it)."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device_type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    return None


def make_head(in_features: int, features_dim: int, head: str = "relu") -> nn.Sequential:
    """pool output (B, in_features) -> (B, features_dim).

    ``"relu"``: Linear -> ReLU (SB3's NatureCNN). ``"layernorm"``: Linear -> LayerNorm -> Tanh, the trunk SAC-AE
    (Yarats et al. 2019) and DrQ-v2 put between the convolutions and the actor/critic MLPs: it keeps the features at
    unit scale whatever the encoder's output scale. State-dict keys: ``0.*`` the Linear (both), ``1.*`` the
    LayerNorm.
    """
    if head == "relu":
        return nn.Sequential(nn.Linear(in_features, features_dim), nn.ReLU())
    return nn.Sequential(nn.Linear(in_features, features_dim), nn.LayerNorm(features_dim), nn.Tanh())


@dataclass
class EncoderConfig:
    """How an :class:`Encoder` is built: observation pipeline -> backbone -> pool -> head. One field per option
    (what :class:`VisionExtractor` and ``rlvision.policy_kwargs`` take as keywords, and what saved zips hold in
    ``features_extractor_kwargs``); everything else goes to the backbone builder as ``backbone_kwargs``.

    :param backbone: a name from :func:`rlvision.list_backbones`.
    :param features_dim: size of the output features (B, features_dim); None: no head (the pooled backbone features).
    :param pool: how the (B, C, h, w) feature map becomes a vector; default: the backbone's ``default_pool``
        ("flatten" for NatureCNN/IMPALA, a 4x4 average grid for the others, which keeps where things are).
    :param head: what follows pool+Linear: ``"relu"`` (default: ReLU, SB3's NatureCNN convention) or
        ``"layernorm"`` (LayerNorm + Tanh, the SAC-AE / DrQ-v2 trunk, which keeps the features at unit scale). For
        SAC on the synthetic task it did not beat ReLU (BENCHMARKS.md "SAC from pixels"), so it is an option.
    :param init: ``"backbone"``: the family's own initialisation (:meth:`rlvision.Backbone.init_weights`;
        MobileNet-v4: kaiming fan-out convs, residual branches starting at zero; IMPALA and the others: PyTorch's
        default), and SB3's orthogonal init only on pool+linear and the policy's heads; ``"sb3"``: SB3's orthogonal
        init (gain sqrt(2)) over the whole extractor, as SB3 does for NatureCNN. Default: the backbone's registered
        ``default_init`` ("sb3" for nature_cnn, "backbone" for every other family; BENCHMARKS.md "Learning v2").
        Only construction is affected (a loaded model gets its saved weights); a pretrained backbone is never
        re-initialised.
    :param channels_last: keep the backbone's weights and its input in channels_last memory format (faster
        convolutions on CPU); default: the family's ``BackboneInfo.channels_last``.
    :param compile: run the backbone through ``torch.compile`` in training (needs a C++ compiler; the first
        minibatch compiles for a minute or more; pays only for long runs, see BENCHMARKS.md).
    :param preprocess: a stage from :func:`rlvision.list_preprocess` run first, batched, on each frame of the
        stack (e.g. ``"flexnet_rl"`` to super-resolve low-resolution frames); the backbone sees the upscaled image.
    :param preprocess_kwargs: for :func:`rlvision.create_preprocess` (``scale``, ``channels``: 3 for RGB frames, 1
        for grey stacks, inferred from the channel count).
    :param preprocess_weights: weights saved by ``rlvision train-sr`` (loaded with ``weights_only=True``).
    :param freeze_preprocess: run the stage reparameterized, in eval mode, without autograd (default); False trains it
        end to end with the RL loss.
    :param pretrained: path of a timm MobileNetV4 checkpoint for an ``mnv4_*`` backbone (:mod:`rlvision.pretrained`;
        the stem is adapted to the channel count, ``pretrained_frames`` = "auto" | "rgb" | "grey"). Loaded weights are
        never re-initialised (SB3 calls ``apply(init_weights)`` on extractors: the backbone is skipped).
    :param imagenet_norm: subtract ImageNet's mean and divide by its std (per colour; luminance-weighted for grey
        frames) after SB3's division by 255; default: on with ``pretrained``, off otherwise.
    :param freeze_backbone: no gradients for the backbone and its BatchNorm statistics frozen (it stays in eval mode
        whatever ``train()`` says); the pool+linear head still trains. For PPO, ``rlvision.encode.VecEncode`` avoids
        recomputing a frozen backbone in every epoch (BENCHMARKS.md).
    :param backbone_lr_scale: the backbone's learning rate as a fraction of the policy's (fine-tuning); applied by
        :class:`rlvision.optim.ScaledLRAdam`, which ``rlvision.policy_kwargs`` selects when this is not 1.
    :param augment_shift: random-shift augmentation (DrQ / RAD: pad by this many pixels, crop back at a random
        offset per sample) in training forward passes only, never in rollouts or ``predict``; 0 (default) = off.
    :param precision: the backbone's compute precision: ``"fp32"`` (default), ``"bf16"`` (autocast to bfloat16; the
        pool+linear head and the output stay float32) or ``"auto"`` (bf16 where the hardware runs it fast, a CPU with
        AMX, fp32 elsewhere; decided at run time: :func:`autocast_dtype`). Rollouts and updates run the same
        precision (acting = learning); ONNX export always traces fp32.
    :param backbone_kwargs: passed to the backbone builder (e.g. ``residual=True``, ``norm="gn"``).
    """

    backbone: str = DEFAULT_BACKBONE
    features_dim: int | None = 256
    pool: str | int | None = None
    head: str = "relu"
    init: str | None = None
    channels_last: bool | None = None
    compile: bool = False
    preprocess: str | None = None
    preprocess_kwargs: dict[str, Any] | None = None
    preprocess_weights: str | None = None
    freeze_preprocess: bool = True
    pretrained: str | None = None
    pretrained_frames: str = "auto"
    imagenet_norm: bool | None = None
    freeze_backbone: bool = False
    backbone_lr_scale: float = 1.0
    augment_shift: int = 0
    precision: str = "fp32"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, backbone: str = DEFAULT_BACKBONE, where: str = "Encoder", **options: Any) -> EncoderConfig:
        """The config of flat keywords (``features_dim=64, norm="gn"``, as ``policy_kwargs`` and saved zips hold
        them): the fields by name, the rest the backbone builder's (a TypeError names an unknown one)."""
        own = {k: options.pop(k) for k in list(options) if k in ENCODER_FIELDS}
        check_keywords(options, accepted_keywords(backbone_info(backbone).builder),
                       f"{where} with backbone {backbone!r}",
                       extra=EXTRACTOR_KEYWORDS if where == "VisionExtractor" else ENCODER_FIELDS)
        return cls(backbone=backbone, backbone_kwargs=options, **own)

    def options(self) -> dict[str, Any]:
        """The flat keywords of this config (the inverse of :meth:`from_options`, ``backbone`` included)."""
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "backbone_kwargs"}
        return {**flat, **self.backbone_kwargs}


class Encoder(nn.Module):
    """An image encoder, usable alone (no SB3): (B, C, H, W) float in [0, 1] -> (B, out_features).

    observation pipeline (augmentation in training only, super-resolution stage, ImageNet normalisation, memory
    format) -> backbone -> pool -> Linear + head (no head when ``features_dim`` is None), configured by one
    :class:`EncoderConfig`. It owns its rules: a frozen stage or backbone stays in eval mode whatever ``train()``
    says, and :meth:`init_weights` leaves loaded or family-initialised weights alone. The parts are submodules under
    fixed names (``preprocess``, ``augment``, ``normalize``, ``backbone``, ``pool``, ``linear``).

        Encoder((4, 84, 84), "mobilenetv4_cpu_rl", features_dim=256)      # flat keywords, as policy_kwargs takes
        Encoder((4, 84, 84), EncoderConfig("nature_cnn", features_dim=None))

    :param image_shape: (C, H, W) of the observations.
    :param config: an :class:`EncoderConfig`, or a backbone name with the config's fields (and the backbone's
        keywords) as ``options``.
    """

    def __init__(self, image_shape: tuple[int, int, int], config: EncoderConfig | str = DEFAULT_BACKBONE,
                 **options: Any):
        if isinstance(config, EncoderConfig):
            if options:
                raise TypeError(f"Encoder takes an EncoderConfig or keywords, not both (got {sorted(options)} too): "
                                f"put them in the config (dataclasses.replace(config, ...)).")
        else:
            config = EncoderConfig.from_options(config, where="Encoder", **options)
        cfg = config
        if cfg.features_dim is not None:
            check_int("features_dim", cfg.features_dim)
        if cfg.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS} (the layer after pool+Linear), got {cfg.head!r}.")
        if not cfg.backbone_lr_scale > 0:
            raise ValueError(f"backbone_lr_scale must be > 0, got {cfg.backbone_lr_scale}.")
        check_int("augment_shift", cfg.augment_shift, minimum=0)
        if cfg.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS} (fp32; bf16 autocast; auto: bf16 on a CPU with "
                             f"AMX, else fp32), got {cfg.precision!r}.")
        info = backbone_info(cfg.backbone)
        init = resolve_init(cfg.backbone, cfg.init)
        channels, height, width = tuple(image_shape)
        stage = None  # built in this order (stage, backbone) so the RNG is drawn as it always was
        if cfg.preprocess is not None:
            kwargs = dict(cfg.preprocess_kwargs or {})
            kwargs.setdefault("channels", 3 if channels % 3 == 0 else 1)  # RGB frames, else grey frame stacks
            stage = create_preprocess(cfg.preprocess, **kwargs)
            if cfg.preprocess_weights:
                load_preprocess(stage, cfg.preprocess_weights)
            height, width = height * stage.scale, width * stage.scale
        net = create_backbone(cfg.backbone, in_channels=channels, pretrained=cfg.pretrained,
                              pretrained_frames=cfg.pretrained_frames, **cfg.backbone_kwargs)
        net.check_input((1, channels, height, width))
        if init == "backbone" and cfg.pretrained is None:
            net.init_weights()
        super().__init__()
        self.config = config
        self.backbone_name = info.name
        self.init = init
        self.preprocess = stage
        self.freeze_preprocess = stage is not None and cfg.freeze_preprocess
        if self.freeze_preprocess:
            stage.requires_grad_(False)
            stage.eval().reparameterize()
        self.augment = RandomShift(cfg.augment_shift) if cfg.augment_shift else None
        self.pretrained = cfg.pretrained
        use_norm = cfg.pretrained is not None if cfg.imagenet_norm is None else cfg.imagenet_norm
        self.normalize = ImageNetNormalize(channels, cfg.pretrained_frames) if use_norm else None
        self.freeze_backbone = cfg.freeze_backbone
        if self.freeze_backbone:
            net.requires_grad_(False)
            net.eval()
        for param in net.parameters():
            param.lr_scale = cfg.backbone_lr_scale  # read by rlvision.optim.ScaledLRAdam
        self.backbone = net
        map_shape = net.feature_shape(height, width)
        if len(map_shape) == 1:  # the backbone already pools (e.g. Conformer's two branches): (B, D)
            self.pool, n_features = nn.Identity(), map_shape[0]
        else:
            self.pool = SpatialPool(info.default_pool if cfg.pool is None else cfg.pool, *map_shape[1:])
            n_features = self.pool.out_features(*map_shape)
        self.head = cfg.head
        self.precision = cfg.precision
        self.linear = make_head(n_features, cfg.features_dim, self.head) if cfg.features_dim else nn.Identity()
        self.out_features = cfg.features_dim or n_features
        self.channels_last = info.channels_last if cfg.channels_last is None else cfg.channels_last
        self._set_memory_format(torch.channels_last if self.channels_last else torch.contiguous_format)
        self._compiled = _Compiled(self.backbone) if cfg.compile else None
        # the observation pipeline: stages in order, each (B, C, H, W) -> (B, C', H', W'); the modules stay registered
        # under their own names (state_dict keys unchanged), the list only orders them
        self.pipeline = [stage for stage in (
            self.augment,
            (FrozenStage(self.preprocess) if self.freeze_preprocess else self.preprocess.forward_stack)
            if self.preprocess is not None else None,
            self.normalize,
            ToChannelsLast() if self.channels_last else None) if stage is not None]
        self.register_load_state_dict_post_hook(Encoder._after_load)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, out_features): pipeline -> backbone -> pool -> linear."""
        for stage in self.pipeline:
            observations = stage(observations)
        dtype = None
        if self.precision != "fp32" and not torch.onnx.is_in_onnx_export():
            dtype = autocast_dtype(self.precision, observations.device.type)
        if dtype is None:
            features = (self._compiled(observations) if self._compiled is not None
                        else self.backbone.forward_features(observations))
            return self.linear(self.pool(features))
        with torch.autocast(observations.device.type, dtype=dtype, cache_enabled=False):
            features = (self._compiled(observations) if self._compiled is not None
                        else self.backbone.forward_features(observations))
            features = self.pool(features)
        return self.linear(features.float())

    encode = forward  # the name the extractor used before the Encoder was its own module

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_compiled", "pipeline"):  # helpers, not submodules: out of state_dict
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _set_memory_format(self, memory_format: torch.memory_format) -> None:
        for module in self.backbone.modules():
            for param in module.parameters(recurse=False):
                if param.dim() == 4:
                    param.data = param.data.contiguous(memory_format=memory_format)

    @staticmethod
    def _after_load(module: Encoder, _incompatible) -> None:
        """Loaded weights reset the frozen stage's fused kernels: fuse them again."""
        if module.freeze_preprocess:
            module.preprocess.reparameterize()

    def trainable_children(self, skip_pretrained: bool = False, skip_backbone: bool = False):
        """The parts that follow ``train()`` and initialisers: not a frozen stage, not a frozen backbone (nor, when
        asked, a pretrained one or the backbone at all)."""
        return (c for c in self.children() if not (self.freeze_preprocess and c is self.preprocess)
                and not (c is self.backbone and (self.freeze_backbone or skip_backbone
                                                 or skip_pretrained and self.pretrained)))

    def train(self, mode: bool = True) -> Encoder:
        """Like nn.Module.train, but a frozen preprocessing stage (reparameterized) and a frozen backbone stay in
        eval mode."""
        self.training = mode
        for child in self.trainable_children():
            child.train(mode)
        return self

    def apply_init(self, fn, skip_backbone: bool = False) -> Encoder:
        """``apply(fn)`` for an initialiser: skips a frozen stage and a pretrained (or, with ``skip_backbone``, any)
        backbone, and views channels_last weights as contiguous while ``fn`` runs (``orthogonal_`` needs it)."""
        if self.channels_last:
            self._set_memory_format(torch.contiguous_format)
        for child in self.trainable_children(skip_pretrained=True, skip_backbone=skip_backbone):
            child.apply(fn)
        fn(self)
        if self.channels_last:
            self._set_memory_format(torch.channels_last)
        return self


def _uncompiled(encoder: Encoder) -> None:
    """The rollout twin of an encoder runs the plain backbone (no torch.compile of its own)."""
    encoder._compiled = None


class RolloutPath:
    """The rollout speed path around a module, from outside (LeanRL's ``policy = CudaGraphModule(policy)``); it
    knows nothing of SB3. In eval mode without autograd (rollouts, ``predict``) and once :attr:`active`, calls run
    a frozen twin of the module (:class:`rlvision.inference_copy.InferenceCopy`: BatchNorm folded, channels_last,
    ``torch.inference_mode``; on CUDA replayed from a CUDA graph per input shape; on CPU optionally on
    onnxruntime), re-synced only when the module's weights changed; any other call runs the module itself. Same
    outputs up to rounding.

    :param module: the module (kept by reference; e.g. an :class:`Encoder`).
    :param inference_copy: False: every call runs the module (the plain path).
    :param cuda_graph: on CUDA, replay the twin's forward from a CUDA graph captured once per input shape (a rollout
        forward at batch 8 is launch-bound on a GPU: 10x faster for the mobile backbones, see BENCHMARKS.md); falls
        back to eager, with a warning, if capture fails. No effect on CPU.
    :param backend: ``"torch"`` (default) or ``"onnxruntime"``: on CPU the twin runs on onnxruntime
        (:mod:`rlvision.ort_backend`: exported once per input shape at the first rollout, a few seconds; after each
        update a new session from the same graph with the new weights, no re-export; same actions up to float
        rounding). Needs ``rlvision[export]``; falls back to torch with a warning if the export fails.
    :param channels_last: the twin's memory format (default: the module's ``channels_last``, else True).
    """

    def __init__(self, module: nn.Module, inference_copy: bool = True, cuda_graph: bool = True,
                 backend: str = "torch", channels_last: bool | None = None):
        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"rollout_backend must be 'torch' or 'onnxruntime', got {backend!r}.")
        if backend == "onnxruntime":
            try:
                import onnxruntime  # noqa: F401
                import onnxscript  # noqa: F401
            except ImportError as error:
                raise ImportError("rollout_backend='onnxruntime' needs onnxruntime and onnxscript: pip install "
                                  "'rlvision[export]' (or use rollout_backend='torch').") from error
        self.module = module
        self.enabled = inference_copy
        self.backend = backend
        self.active = False  # switched on by the owner (VisionExtractor: the first train(), or loaded weights)
        channels_last = getattr(module, "channels_last", True) if channels_last is None else channels_last
        self.copy = (InferenceCopy(module, channels_last, prepare=_uncompiled, cuda_graph=cuda_graph, backend=backend)
                     if inference_copy else None)

    def __call__(self, observations: torch.Tensor) -> torch.Tensor:
        if (self.active and self.enabled and self.copy is not None and not self.module.training
                and not torch.is_grad_enabled()):
            return self.copy(observations)
        return self.module(observations)

    def mark_stale(self) -> None:
        """The module's weights may have changed where version counters cannot see (fused Adam, ``.data``)."""
        if self.copy is not None:
            self.copy.mark_stale()


# the encoder's parts as they sat directly on the extractor before the Encoder was its own submodule (state_dict keys
# of zips saved before it: ``features_extractor.backbone.*`` -> ``features_extractor.encoder.backbone.*``)
ENCODER_PARTS = ("preprocess", "augment", "normalize", "backbone", "pool", "linear")
ROLLOUT_KEYWORDS = ("inference_copy", "cuda_graph", "rollout_backend")


class VisionExtractor(BaseFeaturesExtractor):
    """The SB3 shell of an :class:`Encoder`: SB3's space checks and conventions (its ``train``/``apply`` calls, in
    one place below), the encoder (``self.encoder``: pipeline -> backbone -> pool -> Linear -> ReLU) and its
    :class:`RolloutPath` (``self.rollout``). The encoder's parts and attributes read through
    (``extractor.backbone``, ``extractor.linear``, ...).

        VisionExtractor(space, "mobilenetv4_cpu_rl", features_dim=256, norm="gn", inference_copy=False)
        VisionExtractor(space, config=EncoderConfig("nature_cnn"), inference_copy=False)

    :param observation_space: Box (C, H, W); uint8 in [0, 255] (SB3 scales it to [0, 1]) or float in [0, 1] with
        ``normalized_image=True``. Frame stacks are just more channels.
    :param backbone: a name from :func:`rlvision.list_backbones`; ``features_dim``, ``pool``: as in
        :class:`EncoderConfig`.
    :param config: the whole :class:`EncoderConfig` instead of ``backbone``/``features_dim``/``pool``/options.
    :param options: the :class:`EncoderConfig` fields (``preprocess``, ``freeze_backbone``, ``init``, ``head``,
        ...), the :class:`RolloutPath` options ``inference_copy`` (default True), ``cuda_graph`` (default True) and
        ``rollout_backend`` (default "torch"), and the backbone builder's keywords (``norm="gn"``, ...): the flat
        form ``rlvision.policy_kwargs`` writes and saved zips hold.

    The rollout path switches on the first time the extractor is put in train mode, so it serves the networks SB3
    trains; SB3's target networks, which stay in eval mode and are updated in place through ``.data`` (invisible to
    the change tracking), keep the plain path. A model loaded with SB3's ``load`` acts through it too (switched on
    when its weights are loaded), so a loaded model acts as the saved one did.
    """

    def __new__(cls, observation_space: spaces.Space | None = None, *args: Any, **kwargs: Any):
        """A loading alias only: zips saved before ``policy_kwargs`` picked the Dict extractor name VisionExtractor
        for a Dict space; it builds the :class:`VisionCombinedExtractor` with the same options."""
        if cls is VisionExtractor and isinstance(observation_space, spaces.Dict):
            return VisionCombinedExtractor(observation_space, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, observation_space: spaces.Box, backbone: str = DEFAULT_BACKBONE, features_dim: int = 256,
                 normalized_image: bool = False, pool: str | int | None = None, config: EncoderConfig | None = None,
                 **options: Any):
        check_image_space(observation_space, normalized_image)
        rollout = {k: options.pop(k) for k in ROLLOUT_KEYWORDS if k in options}
        if config is None:
            check_int("features_dim", features_dim)
            config = EncoderConfig.from_options(backbone, where="VisionExtractor", features_dim=features_dim,
                                                pool=pool, **options)
        elif options:
            raise TypeError(f"VisionExtractor takes config= or the encoder's keywords, not both (got {sorted(options)} "
                            f"too).")
        if rollout.get("rollout_backend", "torch") not in ("torch", "onnxruntime"):
            raise ValueError(f"rollout_backend must be 'torch' or 'onnxruntime', got {rollout['rollout_backend']!r}.")
        encoder = Encoder(tuple(observation_space.shape), config)
        super().__init__(observation_space, encoder.out_features)
        self.encoder = encoder
        self.register_load_state_dict_pre_hook(VisionExtractor._before_load)
        self.register_load_state_dict_post_hook(VisionExtractor._after_load)
        self.rollout = RolloutPath(encoder, rollout.get("inference_copy", True), rollout.get("cuda_graph", True),
                                   rollout.get("rollout_backend", "torch"))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, features_dim): the encoder; in rollouts (eval mode, no autograd) its
        rollout path."""
        return self.rollout(observations)

    def __getattr__(self, name: str) -> Any:
        """The encoder's parts and attributes read through the shell (``extractor.backbone``, ``.channels_last``)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            encoder = self.__dict__.get("_modules", {}).get("encoder")
            if encoder is None or name.startswith("__"):
                raise
            return getattr(encoder, name)

    # the rollout path's switches under the names they had as constructor flags
    @property
    def inference_copy(self) -> bool:
        return self.rollout.enabled

    @inference_copy.setter
    def inference_copy(self, value: bool) -> None:  # False: the plain path for every call (comparisons)
        self.rollout.enabled = bool(value)

    @property
    def inference_copy_active(self) -> bool:
        return self.rollout.active

    @inference_copy_active.setter
    def inference_copy_active(self, value: bool) -> None:
        self.rollout.active = bool(value)

    @property
    def rollout_backend(self) -> str:
        return self.rollout.backend

    @property
    def _inference(self) -> InferenceCopy | None:
        return self.rollout.copy

    @staticmethod
    def _before_load(module: VisionExtractor, state_dict, prefix: str, _metadata=None, _strict: bool = True,
                     _missing=None, _unexpected=None, error_msgs=None) -> None:
        """Keys of zips saved before the encoder was a submodule move under ``encoder.``. A saved model being
        loaded acts as the model that was saved did: through the rollout path, which training switched on. SB3's
        ``load`` loads the whole policy, where the extractor sits under a network (``actor.features_extractor.``,
        ``q_net.features_extractor.``) or, in an actor-critic policy, is also
        ``pi_features_extractor.``/``vf_features_extractor.``. Target networks (``*_target.``) keep the plain path,
        as in training; so does the copy SB3 makes into a target while it builds a policy (``features_extractor.``
        alone). Weights of another backbone (no backbone tensor name in common) fail to load with a message that
        says how to load them (torch passes ``strict=True`` to every module's hooks, so this holds for non-strict
        loads too; a partial state dict of the same backbone loads as torch loads it)."""
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            if rest.partition(".")[0] in ENCODER_PARTS:
                state_dict[prefix + "encoder." + rest] = state_dict.pop(key)
        if error_msgs is not None:
            module._check_backbone_layout(state_dict, prefix, error_msgs)
        parts = prefix.split(".")[:-1]
        if any(part.endswith("_target") for part in parts):
            return
        if len(parts) >= 2 or parts[:1] in (["pi_features_extractor"], ["vf_features_extractor"]):
            module.rollout.active = True

    def _check_backbone_layout(self, state_dict, prefix: str, error_msgs: list) -> None:
        """Weights of another backbone: say so, and how to load them (load_state_dict raises with the message)."""
        start = prefix + "encoder.backbone."
        theirs = {key[len(start):]: value for key, value in state_dict.items() if key.startswith(start)}
        ours = self.encoder.backbone.state_dict()
        foreign = sorted(set(theirs) - set(ours))
        reshaped = sorted(k for k in set(theirs) & set(ours) if getattr(theirs[k], "shape", None) != ours[k].shape)
        if not theirs or not (foreign or reshaped):  # a subset of our tensors loads as torch loads it
            return
        what = (f"{len(foreign)} of its {len(theirs)} backbone tensors are not in this one, e.g. {foreign[:2]}"
                if foreign else f"{len(reshaped)} backbone tensors have other shapes, e.g. {reshaped[:2]}")
        error_msgs.append(
            f"the saved encoder is not a {self.encoder.backbone_name!r} ({what}). A model saved without naming its "
            f"backbone used the default encoder of its time: mobilenetv4_nano_rl before issue 21, nature_cnn "
            f"from issue 21 to issue 31, {DEFAULT_BACKBONE} since. Name it: "
            f"features_extractor_kwargs=dict(backbone='mobilenetv4_nano_rl') "
            f"(SB3: PPO.load(path, custom_objects={{'policy_kwargs': ...}}) with the saved policy_kwargs and that "
            f"entry).")

    @staticmethod
    def _after_load(module: VisionExtractor, _incompatible) -> None:
        """The rollout twin re-syncs from the loaded weights."""
        module.rollout.mark_stale()

    def train(self, mode: bool = True) -> VisionExtractor:
        """The encoder's own ``train`` (frozen parts stay in eval mode); the first switch to train mode turns the
        rollout path on, and every one marks its twin stale (training may change weights in ways version counters
        miss, e.g. fused Adam)."""
        self.training = mode
        if "rollout" in self.__dict__:
            self.rollout.active |= mode
            if mode:
                self.rollout.mark_stale()
        self.encoder.train(mode)
        return self

    def apply(self, fn):
        """Like nn.Module.apply, but through :meth:`Encoder.apply_init`: skips a frozen preprocessing stage and a
        pretrained backbone: SB3 re-initialises the extractor with ``apply(init_weights)`` after building it, which
        would overwrite loaded weights (SB3 issue #1971). With ``init="backbone"`` SB3's initialiser (and only it)
        also skips the backbone, which keeps its family's own initialisation."""
        skip_backbone = self.encoder.init == "backbone" and is_sb3_init(fn)
        self.encoder.apply_init(fn, skip_backbone=skip_backbone)
        fn(self)
        return self


def check_encoder_sharing(algo: str, encoder_sharing: str) -> None:
    """A ValueError naming the choices unless ``algo`` takes ``encoder_sharing`` (rlvision.algorithms)."""
    row = algorithm(algo)
    if encoder_sharing not in row.sharing_modes:
        takers = sorted(a.name for a in ALGORITHMS.values() if a.sharing_modes)
        raise ValueError(f"encoder_sharing must be one of {ENCODER_SHARING} and applies to {', '.join(takers)}; "
                         f"got {encoder_sharing!r} for {row.name!r}.")


def resolve_init(backbone: str, init: str | None) -> str:
    """``init`` checked, or the backbone's registered ``default_init`` when None."""
    if init is None:
        return backbone_info(backbone).default_init
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS} (or None: the backbone's default, "
                         f"{backbone_info(backbone).default_init!r} for {backbone!r}), got {init!r}.")
    return init


def is_sb3_init(fn: Any) -> bool:
    """Whether ``fn`` is SB3's ``BasePolicy.init_weights`` (as policies apply it: ``partial(init_weights, gain=g)``)."""
    from stable_baselines3.common.policies import BasePolicy

    return getattr(fn, "func", fn) is BasePolicy.init_weights


class FrozenStage:
    """A preprocessing stage run without autograd (its weights are frozen): (B, C, H, W) -> (B, C, sH, sW)."""

    def __init__(self, stage: nn.Module):
        self.stage = stage

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.stage.forward_stack(x)


class ToChannelsLast:
    """(B, C, H, W) in channels_last memory format (a no-op when it already is)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


# the keywords VisionExtractor and policy_kwargs take besides the backbone builder's: the EncoderConfig fields, the
# RolloutPath options and the SB3 shell's own
ENCODER_FIELDS = tuple(f.name for f in dataclasses.fields(EncoderConfig)
                       if f.name not in ("backbone", "backbone_kwargs"))
EXTRACTOR_KEYWORDS = ("backbone", *ENCODER_FIELDS, "normalized_image", *ROLLOUT_KEYWORDS)


class _Compiled:
    """``torch.compile(backbone.forward_features)``, compiled on first use; a deep copy starts uncompiled."""

    def __init__(self, backbone: nn.Module):
        self.backbone, self.fn = backbone, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn is None:
            self.fn = torch.compile(self.backbone.forward_features)
        return self.fn(x)

    def __deepcopy__(self, memo: dict) -> _Compiled:
        import copy
        return _Compiled(copy.deepcopy(self.backbone, memo))


class VisionCombinedExtractor(BaseFeaturesExtractor):
    """Dict observations: every image key through its own :class:`VisionExtractor`, every other key flattened;
    the results concatenated. (B, ...) per key -> (B, n_images * features_dim + sum of flat sizes)."""

    def __init__(self, observation_space: spaces.Dict, backbone: str = DEFAULT_BACKBONE, features_dim: int = 256,
                 normalized_image: bool = False, pool: str | int | None = None, **kwargs: Any):
        if not isinstance(observation_space, spaces.Dict):
            raise ValueError(f"VisionCombinedExtractor needs a Dict observation space, got {observation_space}; "
                             f"use VisionExtractor for a single image.")
        extractors: dict[str, nn.Module] = {}
        total = 0
        for key, sub in observation_space.spaces.items():
            if isinstance(sub, spaces.Box) and len(sub.shape) == 3:
                extractors[key] = VisionExtractor(sub, backbone, features_dim, normalized_image, pool, **kwargs)
                total += features_dim
            else:
                extractors[key] = nn.Flatten()
                total += get_flattened_obs_dim(sub)
        if not any(isinstance(m, VisionExtractor) for m in extractors.values()):
            raise ValueError(f"No image key (a Box of shape (C, H, W)) in {observation_space}; use MultiInputPolicy "
                             f"with SB3's CombinedExtractor for non-image dicts.")
        super().__init__(observation_space, total)
        self.extractors = nn.ModuleDict(extractors)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([m(observations[k]) for k, m in self.extractors.items()], dim=1)


def policy_kwargs(backbone: str = DEFAULT_BACKBONE, algo: str = "ppo", features_dim: int = 256,
                  observation_space: spaces.Space | None = None, normalized_image: bool = False,
                  pool: str | int | None = None, net_arch: Any = None, fused_optimizer: bool = True,
                  normalize_images: bool | None = None, encoder_sharing: str | None = None,
                  **backbone_kwargs: Any) -> dict[str, Any]:
    """What SB3's ``policy_kwargs`` wants to use ``backbone`` as the encoder of ``algo`` (SB3's ppo, a2c, dqn, sac,
    td3 or sb3-contrib's recurrentppo, maskableppo, trpo, qrdqn, tqc, crossq).

    Sharing: PPO, A2C, RecurrentPPO, MaskablePPO: one extractor for actor and critic (SB3's default). TRPO: separate
    ones (its trust-region step would otherwise also move the value function's encoder, and its critic update drops
    the gradients of shared parameters). SAC, TD3, TQC, CrossQ: separate actor and critic extractors (SB3's default;
    SB3's shared mode trains the encoder through the actor loss only; for DrQ-v2's critic-trained shared encoder see
    :func:`rlvision.drq.drqv2_policy`). DQN and QR-DQN take no ``share_features_extractor`` key.
    Pass ``observation_space`` to get the Dict extractor for Dict spaces.
    ``fused_optimizer``: Adam with ``fused=True`` (one kernel for all parameters; on CPU torch otherwise updates
    them one by one, 5-8x slower) for the Adam-based algorithms, keeping the algorithm's other defaults (the PPO
    family's eps=1e-5, CrossQ's betas=(0.5, 0.999)).
    ``encoder_sharing`` (SAC, TD3, TQC, CrossQ): "separate" (default), "actor" (SB3's shared mode) or "critic"
    (DrQ-v2's; use it with the policy class :func:`rlvision.drq.drqv2_policy` gives).
    ``normalize_images=False`` (SB3's spelling) is the same as ``normalized_image=True``: float images in [0, 1].
    RecurrentPPO gets RL Zoo's Atari LSTM settings (``lstm_hidden_size=128``, ``enable_critic_lstm=False``).
    """
    row = algorithm(algo)  # one table: rlvision.algorithms
    info = backbone_info(backbone)  # fail early, with the list of known names
    check_int("features_dim", features_dim)
    if normalize_images is not None:
        if normalized_image and normalize_images:
            raise ValueError("normalized_image=True (images already in [0, 1]) contradicts normalize_images=True "
                             "(SB3 divides by 255); pass one of them.")
        normalized_image = not normalize_images
    own = [k for k in EXTRACTOR_KEYWORDS if k not in ("features_dim", "normalized_image", "pool")]
    check_keywords({k: v for k, v in backbone_kwargs.items() if k not in own}, accepted_keywords(info.builder),
                   f"rlvision.policy_kwargs with backbone {backbone!r}", extra=tuple(own) + POLICY_KWARGS_PARAMETERS)
    extractor = VisionCombinedExtractor if isinstance(observation_space, spaces.Dict) else VisionExtractor
    # pinned: the init and the registered settings of the backbone (a preset's norm, widths, ...) go into the saved
    # model's kwargs, so a zip keeps rebuilding what it was trained with when a preset's defaults change later
    pinned = {**info.defaults, **backbone_kwargs, "init": resolve_init(backbone, backbone_kwargs.get("init"))}
    if pinned.get("head", "relu") not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {pinned['head']!r}.")
    kwargs: dict[str, Any] = dict(
        features_extractor_class=extractor,
        features_extractor_kwargs=dict(backbone=backbone, features_dim=features_dim, normalized_image=normalized_image,
                                       pool=pool, **pinned),
    )
    if row.encoders != "single":
        kwargs["share_features_extractor"] = row.encoders == "shared"
    if encoder_sharing is not None:
        check_encoder_sharing(row.name, encoder_sharing)
        kwargs["share_features_extractor"] = encoder_sharing != "separate"
    kwargs.update(row.extra_policy_kwargs)
    adam_defaults = dict(row.adam_defaults)
    if fused_optimizer and row.optimizer == "adam":  # SB3's A2C uses RMSprop
        kwargs["optimizer_kwargs"] = dict(adam_defaults, fused=True)
    if backbone_kwargs.get("backbone_lr_scale", 1.0) != 1.0:
        from .optim import ScaledLRAdam

        if row.optimizer != "adam":
            raise ValueError("backbone_lr_scale needs an Adam-based algorithm (SB3's A2C uses RMSprop).")
        kwargs["optimizer_class"] = ScaledLRAdam
        kwargs.setdefault("optimizer_kwargs", adam_defaults)
    if normalized_image:
        kwargs["normalize_images"] = False
    if net_arch is not None:
        kwargs["net_arch"] = net_arch
    return kwargs


# policy_kwargs' own parameters (named next to the backbone's keywords when a keyword is unknown)
POLICY_KWARGS_PARAMETERS = tuple(name for name, p in inspect.signature(policy_kwargs).parameters.items()
                                 if p.kind is p.POSITIONAL_OR_KEYWORD)
