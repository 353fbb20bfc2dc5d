"""Build the classifiers of the memorization/influence sweeps; every model goes through ``timm.create_model``.

Registry: timm lacks four of the models used here, so importing this module registers them in timm's model
registry (``timm.models.register_model``) under ``meminf_*`` names: ``meminf_mlp``, ``meminf_cnn_small``,
``meminf_inception_small`` and ``meminf_densenet_bc100`` (timm's ``DenseNet`` class). A name that is already
registered is skipped, so re-importing or reloading this module registers nothing twice. Their architecture
numbers are not defaulted in code: they come from the ``kwargs`` of the YAML files in ``conf/model/``.

Small-input stem: ImageNet stems shrink a 32x32 image before the first block (4x by a stride-2 7x7 conv +
max-pool in ResNet and DenseNet, 2x by a stride-2 conv in MobileNetV2). For ResNet, DenseNet and
EfficientNet-family models (which includes MobileNetV2) the stem conv is replaced by a 3x3 stride-1 conv with
the same output channels, initialised like the family's other convs, and the stem pool, where there is one,
by ``Identity``. ``small_input_stem`` in the model config decides: ``true``
always (an error for a model without such a stem), ``false`` never, ``auto`` when the model has such a stem
and ``max(H, W) <= small_input_max_px``. The other models here are built for small inputs and have no stem
to swap.

``build_model`` finishes with one forward pass on a zero batch (eval mode, no grad, no random numbers drawn),
so an input that a model cannot take fails at build time with a ``ModelError`` instead of mid-training.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from timm.models import (
    build_model_with_cfg,
    create_model,
    generate_default_cfgs,
    is_model,
    model_entrypoint,
    register_model,
)
from timm.models.densenet import DenseNet
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet
from torch import nn

from src.errors import ModelError

__all__ = ["build_model"]

# Models that take flattened inputs: build_model passes in_features = prod(input_shape) instead of in_chans.
_FLAT_INPUT_MODELS = frozenset({"meminf_mlp"})
# Keyword arguments that build_model sets itself and a model config must not override.
_RESERVED_KWARGS = frozenset({"pretrained", "num_classes", "in_chans", "in_features"})
# Models built for small inputs, suggested when an input is too small for the configured one.
_SMALL_INPUT_MODELS = ("cnn_small", "inception_small")
# timm modules whose models are built for one input size and take it as ``img_size``: build_model sets it
# from the data (a patch grid and position embeddings of that size), so a config must not.
_IMG_SIZE_MODULES = frozenset({"timm.models.vision_transformer"})


class MLP(nn.Module):
    """Flatten, one Linear + ReLU per width in ``hidden``, then Linear to the classes."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        widths = [in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """timm's interface: everything before the last Linear (the input, flattened, when hidden is empty)."""
        return self.layers[:-1](x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.layers[-1](x)


class SmallCNN(nn.Module):
    """Plain convnet without BatchNorm.

    One 3x3 conv + ReLU + 2x2 max-pool per width in ``channels``, adaptive average pooling to a
    ``pool_grid`` x ``pool_grid`` grid (so the head does not depend on the input size), Linear ``hidden`` +
    ReLU, Linear to the classes.
    """

    def __init__(
        self, in_chans: int, channels: Sequence[int], pool_grid: int, hidden: int, num_classes: int
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        widths = [in_chans, *channels]
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(width_in, width_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool_grid), nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(widths[-1] * pool_grid**2, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm's interface: with pre_logits, the hidden layer's activations (the input of the last Linear)."""
        return self.head[:-1](x) if pre_logits else self.head(x)


class ConvModule(nn.Sequential):
    """k x k conv (no bias, 'same' padding) + BatchNorm + ReLU."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True),
        )
        self.out_chans = out_chans


class InceptionModule(nn.Module):
    """Concatenation of a 1x1 ConvModule (``c1`` channels) and a 3x3 ConvModule (``c3`` channels)."""

    def __init__(self, in_chans: int, c1: int, c3: int) -> None:
        super().__init__()
        self.branch1x1 = ConvModule(in_chans, c1, 1)
        self.branch3x3 = ConvModule(in_chans, c3, 3)
        self.out_chans = c1 + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3(x)], dim=1)


class DownsampleModule(nn.Module):
    """Concatenation of a 3x3 stride-2 ConvModule (``c3`` channels) and a 3x3 stride-2 max-pool.

    Both branches pad by 1, so both give ceil(H / 2) x ceil(W / 2) and the pool keeps ``in_chans`` channels.
    """

    def __init__(self, in_chans: int, c3: int) -> None:
        super().__init__()
        self.conv = ConvModule(in_chans, c3, 3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_chans = c3 + in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


class SmallInception(nn.Module):
    """Small Inception of Zhang et al. 2017, "Understanding deep learning requires rethinking generalization".

    3x3 ConvModule with ``stem_channels``, then stages of InceptionModules (``[c1, c3]`` pairs in
    ``inception_stages``) with a DownsampleModule (``downsample_channels``) after every stage but the last,
    global average pooling, Linear to the classes.
    """

    def __init__(
        self,
        in_chans: int,
        stem_channels: int,
        inception_stages: Sequence[Sequence[Sequence[int]]],
        downsample_channels: Sequence[int],
        num_classes: int,
    ) -> None:
        super().__init__()
        if len(downsample_channels) != len(inception_stages) - 1:
            raise ValueError(
                f"inception_stages has {len(inception_stages)} stages, so downsample_channels needs "
                f"{len(inception_stages) - 1} entries, got {len(downsample_channels)}"
            )
        self.num_classes = num_classes
        layers: list[nn.Module] = [ConvModule(in_chans, stem_channels, 3)]
        width = stem_channels
        for stage, downsample_c3 in itertools.zip_longest(inception_stages, downsample_channels):
            for c1, c3 in stage:
                layers.append(InceptionModule(width, c1, c3))
                width = layers[-1].out_chans
            if downsample_c3 is not None:
                layers.append(DownsampleModule(width, downsample_c3))
                width = layers[-1].out_chans
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)


# register_model reads this module's default_cfgs; an entry without weights keeps timm from logging
# "No pretrained configuration specified" on every build.
_REGISTERED_NAMES = ("meminf_mlp", "meminf_cnn_small", "meminf_inception_small", "meminf_densenet_bc100")
default_cfgs = generate_default_cfgs({name: {} for name in _REGISTERED_NAMES})


def _register_once(entrypoint: Any) -> Any:
    """Register with timm unless the name exists (register_model warns and overwrites on a second call)."""
    if not is_model(entrypoint.__name__):
        register_model(entrypoint)
    return entrypoint


@_register_once
def meminf_mlp(pretrained: bool = False, **kwargs: Any) -> MLP:
    # in_chans comes from timm's default pretrained cfg; an MLP takes in_features instead.
    return build_model_with_cfg(MLP, "meminf_mlp", pretrained, kwargs_filter=("in_chans",), **kwargs)


@_register_once
def meminf_cnn_small(pretrained: bool = False, **kwargs: Any) -> SmallCNN:
    return build_model_with_cfg(SmallCNN, "meminf_cnn_small", pretrained, **kwargs)


@_register_once
def meminf_inception_small(pretrained: bool = False, **kwargs: Any) -> SmallInception:
    return build_model_with_cfg(SmallInception, "meminf_inception_small", pretrained, **kwargs)


@_register_once
def meminf_densenet_bc100(
    pretrained: bool = False, *, growth_rate: int, block_config: Sequence[int], **kwargs: Any
) -> DenseNet:
    """timm DenseNet, made DenseNet-BC-100 by the kwargs of conf/model/densenet_bc100.yaml."""
    return build_model_with_cfg(
        DenseNet,
        "meminf_densenet_bc100",
        pretrained,
        growth_rate=growth_rate,
        block_config=tuple(block_config),
        feature_cfg={"flatten_sequential": True},
        **kwargs,
    )


@dataclasses.dataclass(frozen=True)
class SmallStem:
    """Where a model family keeps its stem, and how it initialises convs."""

    conv: str  # dotted path of the stride-2 stem conv, replaced by a 3x3 stride-1 conv
    pool: str | None  # dotted path of the stem pool, replaced by Identity
    init_mode: Literal["fan_in", "fan_out"]  # kaiming_normal_ mode the family's own init uses for convs


_SMALL_STEMS: dict[type[nn.Module], SmallStem] = {
    ResNet: SmallStem("conv1", "maxpool", "fan_out"),  # ResNet.init_weights: kaiming_normal_ fan_out, relu
    DenseNet: SmallStem("features.conv0", "features.pool0", "fan_in"),  # DenseNet.__init__: kaiming_normal_
    # _init_weight_goog: normal(0, sqrt(2 / fan_out)), which is kaiming_normal_ fan_out, relu
    EfficientNet: SmallStem("conv_stem", None, "fan_out"),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One conf/model/*.yaml file."""

    name: str
    timm_name: str
    small_input_stem: bool | Literal["auto"] = "auto"
    small_input_max_px: int = 64
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pack_default: int = 1  # models per job with pack=auto (src/packing.py; measured in docs/PERFORMANCE.md)

    @classmethod
    def parse(cls, cfg: DictConfig | Mapping) -> ModelConfig:
        # Through OmegaConf so that nested DictConfig/ListConfig values become plain dicts and lists for timm.
        container = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        values = OmegaConf.to_container(container, resolve=True)
        fields = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ModelError(f"model config has unknown keys {unknown}; allowed keys: {fields}")
        missing = [key for key in ("name", "timm_name") if key not in values]
        if missing:
            raise ModelError(f"model config lacks keys {missing}; every conf/model/*.yaml needs them")
        config = cls(**values)
        if config.small_input_stem not in (True, False, "auto"):
            raise ModelError(
                f"model '{config.name}': small_input_stem is {config.small_input_stem!r}; "
                "use auto, true or false"
            )
        reserved = sorted(_RESERVED_KWARGS & set(config.kwargs))
        if reserved:
            raise ModelError(f"model '{config.name}': kwargs {reserved} are set by build_model; remove them")
        return config


def build_model(cfg: DictConfig | Mapping, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Create ``cfg.timm_name`` for inputs of ``input_shape`` (no batch dim) and ``num_classes`` logits.

    Raises:
        ModelError: unknown model, bad config, or an input the model cannot take (one-line message).
    """
    config = ModelConfig.parse(cfg)
    input_shape = tuple(int(dim) for dim in input_shape)
    model = _create(config, input_shape, num_classes)
    _check_patch_grid(model, config, input_shape)
    stem = _stem_of(model)
    use_small_stem = _use_small_stem(config, stem, input_shape)
    if use_small_stem:
        _apply_small_stem(model, stem)
    _check_forward(model, config, input_shape, stem_unused=stem is not None and not use_small_stem)
    return model


def _create(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if not is_model(config.timm_name):
        raise ModelError(
            f"model '{config.name}': timm has no model '{config.timm_name}'; "
            "use a name from timm.list_models() or a meminf_* model registered by src.models"
        )
    input_kwargs = _input_kwargs(config, input_shape)
    try:
        return create_model(
            config.timm_name, pretrained=False, num_classes=num_classes, **input_kwargs, **config.kwargs
        )
    except (TypeError, ValueError) as err:
        raise ModelError(
            f"model '{config.name}' ({config.timm_name}) rejected kwargs {dict(config.kwargs)}: "
            f"{_first_line(err)}; fix kwargs in conf/model/{config.name}.yaml"
        ) from err


def _input_kwargs(config: ModelConfig, input_shape: tuple[int, ...]) -> dict[str, int]:
    if config.timm_name in _FLAT_INPUT_MODELS:
        return {"in_features": math.prod(input_shape)}
    if len(input_shape) != 3:
        kind = "vectors" if len(input_shape) == 1 else "inputs"
        raise ModelError(
            f"model '{config.name}' needs images (C, H, W) but the data set gives {kind} of shape "
            f"{input_shape}; use model=mlp"
        )
    if model_entrypoint(config.timm_name).__module__ not in _IMG_SIZE_MODULES:
        return {"in_chans": input_shape[0]}
    if "img_size" in config.kwargs:
        raise ModelError(f"model '{config.name}': kwargs.img_size is set from the data ({input_shape[1]}x"
                         f"{input_shape[2]}); remove it from conf/model/{config.name}.yaml")
    return {"in_chans": input_shape[0], "img_size": input_shape[1:]}


def _check_patch_grid(model: nn.Module, config: ModelConfig, input_shape: tuple[int, ...]) -> None:
    """A patch size that does not divide the image would silently drop its last rows and columns."""
    patch_embed = getattr(model, "patch_embed", None)
    patch = getattr(patch_embed, "patch_size", None)
    if patch is not None and any(side % size for side, size in zip(input_shape[1:], patch, strict=True)):
        raise ModelError(f"model '{config.name}': patch_size {tuple(patch)} does not divide the "
                         f"{input_shape[1]}x{input_shape[2]} images; set model.kwargs.patch_size to a divisor "
                         "of both sides (or change dataset.image_size)")


def _stem_of(model: nn.Module) -> SmallStem | None:
    return next((stem for cls, stem in _SMALL_STEMS.items() if isinstance(model, cls)), None)


def _use_small_stem(config: ModelConfig, stem: SmallStem | None, input_shape: tuple[int, ...]) -> bool:
    if config.small_input_stem is True and stem is None:
        raise ModelError(
            f"model '{config.name}' has no stem that small_input_stem knows how to replace; "
            "set model.small_input_stem=false"
        )
    if config.small_input_stem == "auto":
        return stem is not None and max(input_shape[1:]) <= config.small_input_max_px
    return config.small_input_stem


def _apply_small_stem(model: nn.Module, stem: SmallStem) -> None:
    old_conv = model.get_submodule(stem.conv)
    if not isinstance(old_conv, nn.Conv2d):
        raise ModelError(
            f"stem '{stem.conv}' of {type(model).__name__} is a {type(old_conv).__name__}, not a single conv "
            "(a deep-stem variant?); set model.small_input_stem=false"
        )
    new_conv = nn.Conv2d(old_conv.in_channels, old_conv.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(new_conv.weight, mode=stem.init_mode, nonlinearity="relu")
    _replace_submodule(model, stem.conv, new_conv)
    if stem.pool is not None:
        _replace_submodule(model, stem.pool, nn.Identity())


def _replace_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, new)


def _check_forward(
    model: nn.Module, config: ModelConfig, input_shape: tuple[int, ...], stem_unused: bool
) -> None:
    """One eval-mode forward pass on zeros: draws no random numbers, leaves BatchNorm statistics alone."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *input_shape))
    except RuntimeError as err:
        raise ModelError(
            f"model '{config.name}' cannot run on inputs of shape {input_shape}: {_first_line(err)}; "
            f"{_too_small_fixes(config, stem_unused)}"
        ) from err
    finally:
        model.train(was_training)


def _too_small_fixes(config: ModelConfig, stem_unused: bool) -> str:
    fixes = ["set model.small_input_stem=true"] if stem_unused else []
    fixes.append("use larger inputs")
    fixes += [f"use model={name}" for name in _SMALL_INPUT_MODELS if name != config.name]
    return " or ".join(fixes)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
