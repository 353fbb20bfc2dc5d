"""The architectures timm lacks, registered in timm's model registry under ``meminf_*`` names.

Importing this module registers ``meminf_mlp``, ``meminf_cnn_small``, ``meminf_inception_small`` (the torch
modules of src/models/archs.py) and ``meminf_densenet_bc100`` (timm's ``DenseNet`` class) with
``timm.models.register_model``. A name that is already registered is skipped, so re-importing or reloading this
module registers nothing twice. Their architecture numbers are not defaulted in code: they come from the
``kwargs`` of the YAML files in ``conf/model/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, is_model, register_model
from timm.models.densenet import DenseNet

from src.models.archs import MLP, SmallCNN, SmallInception

__all__ = ["MLP", "SmallCNN", "SmallInception"]


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


