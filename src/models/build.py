"""Build the classifiers of the memorization/influence sweeps through ``timm.create_model``, or, for meminf's own
torch architectures (src/models/archs.py: ``meminf_mlp``, ``meminf_cnn_small``, ``meminf_inception_small``), from
their classes with the same arguments and without importing timm: `import timm` imports every timm model module
(and wandb), about a second of each job's start-up (docs/PERFORMANCE.md, End to end). timm's own path builds the
same modules (`build_model_with_cfg` without weights draws no random numbers of its own; tests/test_models.py
checks that both give the same weights). The four models timm lacks are registered under ``meminf_*`` names by
src/models/zoo.py, imported with timm.

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
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.errors import ModelError
from src.models.archs import MLP, SmallCNN, SmallInception
from src.models.init import apply_init
from src.util.cli import first_line

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

@dataclasses.dataclass(frozen=True)
class SmallStem:
    """Where a model family keeps its stem, and how it initialises convs."""

    conv: str  # dotted path of the stride-2 stem conv, replaced by a 3x3 stride-1 conv
    pool: str | None  # dotted path of the stem pool, replaced by Identity
    init_mode: Literal["fan_in", "fan_out"]  # kaiming_normal_ mode the family's own init uses for convs


def _small_stems() -> dict[type[nn.Module], SmallStem]:
    from timm.models.densenet import DenseNet
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet

    return {
        ResNet: SmallStem("conv1", "maxpool", "fan_out"),  # ResNet.init_weights: kaiming_normal_ fan_out, relu
        DenseNet: SmallStem("features.conv0", "features.pool0", "fan_in"),  # DenseNet.__init__: kaiming_normal_
        # _init_weight_goog: normal(0, sqrt(2 / fan_out)), which is kaiming_normal_ fan_out, relu
        EfficientNet: SmallStem("conv_stem", None, "fan_out"),
    }


# meminf's torch architectures by their timm names: built without importing timm (the module docstring).
NATIVE_MODELS: dict[str, type[nn.Module]] = {
    "meminf_mlp": MLP, "meminf_cnn_small": SmallCNN, "meminf_inception_small": SmallInception}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One conf/model/*.yaml file."""

    name: str
    timm_name: str
    small_input_stem: bool | Literal["auto"] = "auto"
    small_input_max_px: int = 64
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pack_default: int = 1  # models per job with pack=auto (src/models/packing.py; docs/PERFORMANCE.md)
    init: str = "default"  # a name in src/models/init.py INITS: the model's own, or `stax` (the MNIST demo's)

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


def build_model(cfg: DictConfig | Mapping, input_shape: tuple[int, ...], num_classes: int,
                check_forward: bool = True) -> nn.Module:
    """Create ``cfg.timm_name`` for inputs of ``input_shape`` (no batch dim) and ``num_classes`` logits; with
    ``check_forward``, run it once on zeros (a packed job checks its first member only: the rest are the same
    architecture).

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
    apply_init(model, config.init, config.name)
    if check_forward:
        _check_forward(model, config, input_shape, stem_unused=stem is not None and not use_small_stem)
    return model


def _create(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if config.timm_name in NATIVE_MODELS:
        return _create_native(config, input_shape, num_classes)
    from timm.models import create_model, is_model

    import src.models.zoo  # noqa: F401  (registers the meminf_* models with timm)

    if not is_model(config.timm_name):
        raise ModelError(
            f"model '{config.name}': timm has no model '{config.timm_name}'; "
            "use a name from timm.list_models() or a meminf_* model registered by src/models/zoo.py"
        )
    input_kwargs = _input_kwargs(config, input_shape)
    try:
        return create_model(
            config.timm_name, pretrained=False, num_classes=num_classes, **input_kwargs, **config.kwargs
        )
    except (TypeError, ValueError) as err:
        raise _rejected(config, err) from err


def _create_native(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    input_kwargs = _input_kwargs(config, input_shape)
    try:
        return NATIVE_MODELS[config.timm_name](num_classes=num_classes, **input_kwargs, **config.kwargs)
    except (TypeError, ValueError) as err:
        raise _rejected(config, err) from err


def _rejected(config: ModelConfig, err: Exception) -> ModelError:
    return ModelError(f"model '{config.name}' ({config.timm_name}) rejected kwargs {dict(config.kwargs)}: "
                      f"{first_line(err)}; fix kwargs in conf/model/{config.name}.yaml")


def _input_kwargs(config: ModelConfig, input_shape: tuple[int, ...]) -> dict[str, int]:
    if config.timm_name in _FLAT_INPUT_MODELS:
        return {"in_features": math.prod(input_shape)}
    if len(input_shape) != 3:
        kind = "vectors" if len(input_shape) == 1 else "inputs"
        raise ModelError(
            f"model '{config.name}' needs images (C, H, W) but the data set gives {kind} of shape "
            f"{input_shape}; use model=mlp"
        )
    if config.timm_name in NATIVE_MODELS or _entrypoint_module(config.timm_name) not in _IMG_SIZE_MODULES:
        return {"in_chans": input_shape[0]}
    if "img_size" in config.kwargs:
        raise ModelError(f"model '{config.name}': kwargs.img_size is set from the data ({input_shape[1]}x"
                         f"{input_shape[2]}); remove it from conf/model/{config.name}.yaml")
    return {"in_chans": input_shape[0], "img_size": input_shape[1:]}


def _entrypoint_module(timm_name: str) -> str:
    from timm.models import model_entrypoint

    return model_entrypoint(timm_name).__module__


def _check_patch_grid(model: nn.Module, config: ModelConfig, input_shape: tuple[int, ...]) -> None:
    """A patch size that does not divide the image would silently drop its last rows and columns."""
    patch_embed = getattr(model, "patch_embed", None)
    patch = getattr(patch_embed, "patch_size", None)
    if patch is not None and any(side % size for side, size in zip(input_shape[1:], patch, strict=True)):
        raise ModelError(f"model '{config.name}': patch_size {tuple(patch)} does not divide the "
                         f"{input_shape[1]}x{input_shape[2]} images; set model.kwargs.patch_size to a divisor "
                         "of both sides (or change dataset.image_size)")


def _stem_of(model: nn.Module) -> SmallStem | None:
    if type(model) in NATIVE_MODELS.values():
        return None  # built for small inputs: no stem to swap (and no timm to import)
    return next((stem for cls, stem in _small_stems().items() if isinstance(model, cls)), None)


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
            f"model '{config.name}' cannot run on inputs of shape {input_shape}: {first_line(err)}; "
            f"{_too_small_fixes(config, stem_unused)}"
        ) from err
    finally:
        model.train(was_training)


def _too_small_fixes(config: ModelConfig, stem_unused: bool) -> str:
    fixes = ["set model.small_input_stem=true"] if stem_unused else []
    fixes.append("use larger inputs")
    fixes += [f"use model={name}" for name in _SMALL_INPUT_MODELS if name != config.name]
    return " or ".join(fixes)


