"""Pretrained ImageNet weights for the paper's MobileNet-v4 configs, read from timm checkpoints without timm.

A user downloads timm's file once on a machine with internet, e.g.
``huggingface_hub.hf_hub_download("timm/mobilenetv4_conv_small.e2400_r224_in1k", "model.safetensors")``, and passes
its path: ``create_backbone("mnv4_conv_small", in_channels=4, pretrained="model.safetensors")``.

Key names are mapped by name (:func:`timm_to_rlvision`), never by position:

============================================  ================================================
timm                                          rlvision
============================================  ================================================
``conv_stem``, ``bn1``                        ``features.0.conv``, ``features.0.norm``
``blocks.S.I.<rest>``                         ``features.N.<rest'>``, N = 1 + blocks in stages < S + I
  ConvBnAct: ``conv``, ``bn1``                ``conv``, ``norm``
  EdgeResidual: ``conv_exp``, ``bn1``,        ``expand.conv``, ``expand.norm``,
  ``conv_pwl``, ``bn2``                       ``project.conv``, ``project.norm``
  UIR: ``dw_start``/``pw_exp``/``dw_mid``/    ``dw_start``/``expand``/``dw_mid``/``project``,
  ``pw_proj`` (``.conv``, ``.bn``)            (``.conv``, ``.norm``)
  MobileAttention: ``attn.query.proj``,       ``query``, ``key_down.conv``, ``key_down.norm``, ``key``,
  ``attn.key.down_conv``/``norm``/``proj``,   same for value, ``out``
  ``attn.value...``, ``attn.output.proj``
  ``layer_scale.gamma``, ``norm``             ``layer_scale.gamma``, ``norm``
``conv_head``, ``norm_head``                  ``head.1.conv``, ``head.1.norm`` (models with a classifier)
``classifier``                                ``head.4``
============================================  ================================================

Headless models (``num_classes=0``, what the RL extractor uses) drop ``conv_head``, ``norm_head`` and
``classifier``. The stem is adapted to the input channels (:func:`adapt_stem`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import torch
from torch import nn

# ImageNet statistics (per RGB colour) and their luminance-weighted versions for grey frames (ITU-R 601 weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)
GREY_MEAN = sum(w * m for w, m in zip(LUMA, IMAGENET_MEAN, strict=False))
GREY_STD = sum(w * s for w, s in zip(LUMA, IMAGENET_STD, strict=False))

_TOP = {"conv_stem.": "features.0.conv.", "bn1.": "features.0.norm.", "conv_head.": "head.1.conv.",
        "norm_head.": "head.1.norm.", "classifier.": "head.4."}
_HEAD_PREFIXES = ("conv_head.", "norm_head.", "classifier.")
# within a block, by block kind (told apart by the names the block holds)
_BLOCK = {
    "edge": {"conv_exp.": "expand.conv.", "bn1.": "expand.norm.", "conv_pwl.": "project.conv.",
             "bn2.": "project.norm."},
    "uir": {"dw_start.conv.": "dw_start.conv.", "dw_start.bn.": "dw_start.norm.", "pw_exp.conv.": "expand.conv.",
            "pw_exp.bn.": "expand.norm.", "dw_mid.conv.": "dw_mid.conv.", "dw_mid.bn.": "dw_mid.norm.",
            "pw_proj.conv.": "project.conv.", "pw_proj.bn.": "project.norm.", "layer_scale.": "layer_scale."},
    "attn": {"norm.": "norm.", "attn.query.proj.": "query.", "attn.key.down_conv.": "key_down.conv.",
             "attn.key.norm.": "key_down.norm.", "attn.key.proj.": "key.", "attn.value.down_conv.": "value_down.conv.",
             "attn.value.norm.": "value_down.norm.", "attn.value.proj.": "value.", "attn.output.proj.": "out.",
             "layer_scale.": "layer_scale."},
    "conv": {"conv.": "conv.", "bn1.": "norm."},
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


class PretrainedWeightsError(ValueError):
    """A weights file that cannot be loaded into the requested backbone; the message says what it holds."""


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors``, ``.pth``/``.pt`` or ``.bin`` file (``torch.load(weights_only=True)``; a
    ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No weights file at {path!r}. Download timm's checkpoint on a machine with internet "
                                f"(README: 'Pretrained encoders') and pass its path.")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (truncated or foreign files fail in many ways)
        pickled = "weights only load failed" in str(error).lower()
        fix = ("It holds pickled Python objects (a whole model saved with torch.save(model)?), which are never "
               "unpickled here: save its weights instead, torch.save(model.state_dict(), path), or pass timm's "
               "model.safetensors." if pickled else
               "Download the file again (it may be truncated) or pass timm's model.safetensors.")
        raise PretrainedWeightsError(f"{path!r} is not a readable checkpoint (truncated or not a safetensors / "
                                     f"torch file): {type(error).__name__}: {str(error)[:300]}. {fix}") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path!r} holds {type(state).__name__}, not a dict of tensors (a state_dict). "
                                     f"Pass a state_dict file: timm's model.safetensors, or "
                                     f"torch.save(model.state_dict(), path).")
    return state


def _block_kind(names: list[str]) -> str:
    if any(n.startswith("attn.") for n in names):
        return "attn"
    if any(n.startswith("conv_exp.") for n in names):
        return "edge"
    if any(n.startswith(("pw_exp.", "dw_start.", "pw_proj.")) for n in names):
        return "uir"
    return "conv"


def timm_to_rlvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm MobileNetV4 ``state_dict`` to rlvision's ``mnv4_*`` names (table in the module docstring).
    Raises :class:`PretrainedWeightsError` for names that are not a timm MobileNetV4's."""
    blocks: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in state.items():
        match = _BLOCK_KEY.match(name)
        if match:
            blocks.setdefault((int(match[1]), int(match[2])), {})[match[3]] = tensor
            continue
        prefix = next((p for p in _TOP if name.startswith(p)), None)
        if prefix is None:
            unknown.append(name)
        else:
            out[_TOP[prefix] + name[len(prefix):]] = tensor
    if unknown or not blocks:
        shown = ", ".join(unknown[:5]) or "no 'blocks.*' entries"
        raise PretrainedWeightsError(f"Not a timm MobileNetV4 checkpoint: unexpected names ({shown}"
                                     f"{', ...' if len(unknown) > 5 else ''}).")
    stages = sorted({s for s, _ in blocks})
    sizes = {s: 1 + max(i for t, i in blocks if t == s) for s in stages}
    offset, start = 1, {}
    for s in stages:
        start[s] = offset
        offset += sizes[s]
    for (s, i), params in sorted(blocks.items()):
        table = _BLOCK[_block_kind(list(params))]
        for rest, tensor in params.items():
            prefix = next((p for p in table if rest.startswith(p)), None)
            if prefix is None:
                raise PretrainedWeightsError(f"Not a timm MobileNetV4 checkpoint: unexpected name "
                                             f"'blocks.{s}.{i}.{rest}'.")
            out[f"features.{start[s] + i}.{table[prefix]}{rest[len(prefix):]}"] = tensor
    return out


def adapt_stem(weight: torch.Tensor, in_channels: int, frames: str = "auto") -> torch.Tensor:
    """An RGB stem kernel (O, 3, k, k) for ``in_channels`` inputs.

    - RGB frame stacks (``frames="rgb"``, or "auto" with a multiple of 3 channels, k = in_channels / 3 frames): the
      RGB kernel divided by k for each frame, so k identical frames give the RGB model's output.
    - Grey frame stacks (``frames="grey"``, or "auto" otherwise): every channel gets the kernel summed over colour and
      divided by n = in_channels, so n identical grey frames give the RGB model's output on that grey image
      repeated over R, G and B.
    """
    if weight.shape[1] != 3:
        raise PretrainedWeightsError(f"The checkpoint's stem takes {weight.shape[1]} channels, expected RGB (3).")
    if frames not in ("auto", "rgb", "grey"):
        raise ValueError(f"frames must be 'auto', 'rgb' or 'grey', got {frames!r}.")
    rgb = frames == "rgb" or (frames == "auto" and in_channels % 3 == 0)
    if rgb:
        if in_channels % 3:
            raise ValueError(f"frames='rgb' needs a multiple of 3 input channels, got {in_channels}.")
        k = in_channels // 3
        return weight.repeat(1, k, 1, 1) / k
    return weight.sum(1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels


def _which_variant(mapped: dict[str, torch.Tensor], candidates: dict[str, Callable[[], dict[str, torch.Size]]]
                   ) -> str | None:
    """The candidate whose headless shapes the mapped checkpoint matches (classifier shapes ignored), if any."""
    def body(shapes: dict) -> dict:
        return {k: v for k, v in shapes.items() if not k.startswith("head.") and not k.endswith("num_batches_tracked")}

    found = body({k: v.shape for k, v in mapped.items()})
    return next((name for name, shapes in candidates.items() if body(shapes()) == found), None)


def load_timm_weights(model: nn.Module, variant: str, path: str, frames: str = "auto",
                      candidates: dict[str, Callable[[], dict[str, torch.Size]]] | None = None) -> nn.Module:
    """Load timm's checkpoint at ``path`` into ``model`` (a ``create_backbone(variant, ...)`` mnv4_* model, any
    input channels, headless or with 1000 classes), all or nothing. Returns ``model``.

    ``candidates``: name -> the headless state-dict shapes of each model the file might hold instead (the family's
    hook passes its configs), so a mismatch can say which one it is. This module imports no backbone family: the
    family registers its loader with the registry (``register_backbone(..., load_pretrained=...)``)."""
    try:
        mapped = timm_to_rlvision(read_checkpoint(path))
    except PretrainedWeightsError as error:
        if str(error).startswith("Not a timm"):  # names of another model: say which file, and what to pass
            raise PretrainedWeightsError(f"{path!r}: {error} Pass a timm MobileNetV4 checkpoint (e.g. "
                                         f"timm/mobilenetv4_conv_small.e2400_r224_in1k's model.safetensors) to an "
                                         f"mnv4_* backbone. Nothing was loaded.") from None
        raise
    target = model.state_dict()
    read = dict(mapped)
    for key in target:  # timm's own strict load accepts files saved without BatchNorm's batch counters
        if key.endswith("num_batches_tracked") and key not in mapped:
            mapped[key] = torch.zeros_like(target[key])
    in_channels = model.in_channels
    if "features.0.conv.weight" in mapped and (in_channels != 3 or frames == "grey"):
        mapped["features.0.conv.weight"] = adapt_stem(mapped["features.0.conv.weight"], in_channels, frames)
    if not any(k.startswith("head.") for k in target):
        mapped = {k: v for k, v in mapped.items() if not k.startswith("head.")}
    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    wrong = sorted(k for k in set(target) & set(mapped) if target[k].shape != mapped[k].shape)
    if missing or unexpected or wrong:
        guess = _which_variant(read, candidates or {})
        holds = (f"it holds timm weights of {guess}" if guess else
                 f"it holds a timm MobileNetV4 checkpoint of {sum(v.numel() for v in mapped.values()):,} values "
                 f"that matches no mnv4_* config")
        details = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                   f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                   "shape mismatches: " + ", ".join(f"{k} {tuple(mapped[k].shape)} vs {tuple(target[k].shape)}"
                                                    for k in wrong[:3]) if wrong else ""]
        head = mapped.get("head.4.weight")
        if guess and guess != variant:
            advice = f" Use create_backbone({guess!r}, ...)."
        elif wrong and all(k.startswith("head.") for k in wrong) and head is not None:
            advice = (f" Its classifier has {head.shape[0]} classes: create the backbone with "
                      f"num_classes={head.shape[0]}, or headless (num_classes=0, what the RL extractor uses).")
        elif unexpected and not missing and not wrong:
            advice = (" Remove the extra entries from the file (or pass the file timm saved), and check it is "
                      "the model you meant.")
        else:
            advice = " Pass the timm checkpoint of this config."
        raise PretrainedWeightsError(f"{path!r} does not fit {variant}: {holds}; "
                                     + "; ".join(d for d in details if d) + "." + advice + " Nothing was loaded.")
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in mapped.items()})
    return model


class ImageNetNormalize(nn.Module):
    """(x - mean) / std per channel for a frame stack in [0, 1]: ImageNet's per-colour statistics for RGB frames
    (3k channels), their luminance-weighted mean and std for grey frames. (B, C, H, W) -> (B, C, H, W).
    The statistics are buffers outside the state_dict (derived from the channel count)."""

    def __init__(self, channels: int, frames: str = "auto"):
        super().__init__()
        rgb = frames == "rgb" or (frames == "auto" and channels % 3 == 0)
        mean = torch.tensor(IMAGENET_MEAN * (channels // 3)) if rgb else torch.full((channels,), GREY_MEAN)
        std = torch.tensor(IMAGENET_STD * (channels // 3)) if rgb else torch.full((channels,), GREY_STD)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("inv_std", (1 / std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std
