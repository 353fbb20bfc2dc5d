"""Structured configs: the schema of conf/ and of every config group, registered in Hydra's ConfigStore as the
groups' bases (Hydra's "structured config schema" pattern). Each YAML option names its base in its defaults
list (`- base_dataset_embedded`, ...), so that types are checked while Hydra composes: `subset.ratio=abc` or
`optim.lr=abc` fails there. Keys that every option of a group shares (a data set's label noise, noise seed and
evaluation batch size; a model's small-input threshold and pack default) take their defaults here, once.

Settings that take a boolean are typed `Any` and checked strictly by src/config/checks.py: OmegaConf's bool
would read `no` or `off` as false, and a misspelt true/false must be refused, never read as some value.

`trainer` and `optim` have no dataclass: their keys are the keyword arguments of `pytorch_lightning.Trainer`
and of the optimizer class named by `optim._target_`, so that every option of those stays available;
src/config/checks.py checks them against those signatures. Importing this module registers the schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# OmegaConf reads annotations at run time: the Optional[...] and List forms below are what it understands.
# ruff: noqa: UP045


@dataclass
class Normalize:
    mean: list[float] = MISSING
    std: list[float] = MISSING


@dataclass
class Augment:
    crop_padding: int = 0
    hflip: Any = False  # a boolean


@dataclass
class DatasetBase:
    name: str = MISSING
    source: str = MISSING
    label_noise: float = 0.0  # fraction of training labels flipped (src/data/dataset.py)
    noise_seed: int = 0
    normalize: Normalize = field(default_factory=Normalize)
    augment: Augment = field(default_factory=Augment)
    eval_batch_size: int = 1024


@dataclass
class EmbeddedDataset(DatasetBase):
    """mnist5k, digits: data that ship with a package, split once by `split_seed`."""

    split_seed: int = 0
    n_train: int = MISSING


@dataclass
class MnistDataset(DatasetBase):
    download: Any = False  # a boolean


@dataclass
class CifarDataset(MnistDataset):
    verify_checksums: Any = True  # a boolean


@dataclass
class NpzDataset(DatasetBase):
    path: str = MISSING
    num_classes: Optional[int] = None


@dataclass
class LongtailDataset(DatasetBase):
    n_subpops: int = MISSING
    zipf_exponent: float = MISSING
    n_train: int = MISSING
    n_test: int = MISSING
    dim: int = MISSING
    num_classes: int = MISSING
    center_scale: float = MISSING
    noise_scale: float = MISSING
    generator_seed: int = 0


@dataclass
class FolderDataset(DatasetBase):
    root: str = MISSING
    image_size: int = MISSING
    num_workers: int = MISSING


@dataclass
class ImagenetDataset(DatasetBase):
    image_size: int = MISSING
    num_workers: int = MISSING


@dataclass
class ModelSchema:
    name: str = MISSING
    timm_name: str = MISSING
    small_input_stem: Any = "auto"  # true, false or auto (src/models/build.py)
    small_input_max_px: int = 64
    kwargs: dict[str, Any] = field(default_factory=dict)
    pack_default: int = 1  # models per job at pack=auto (docs/PERFORMANCE.md)
    init: str = "default"  # weight initialisation by name (src/models/init.py)


@dataclass
class ScheduleBase:
    _target_: str = MISSING
    _partial_: bool = True
    warmup_epochs: float = 0


@dataclass
class StepSchedule(ScheduleBase):
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class LoggerBase:
    _target_: str = MISSING
    _partial_: bool = True


@dataclass
class WandbLogger(LoggerBase):
    project: str = "meminf"
    entity: Optional[str] = None
    mode: str = "auto"
    tags: list[str] = field(default_factory=list)


@dataclass
class Subset:
    ratio: float = 0.7
    salt: int = 0
    size_rule: str = "round_half_up"  # src/data/subsets.py SIZE_RULES
    repeats: int = 1  # seeds per subset (src/data/subsets.py subset_seed)


@dataclass
class Paths:
    output_dir: str = MISSING
    data_dir: str = MISSING


@dataclass
class SubsampleEstimator:
    name: str = "subsample"


@dataclass
class TurnoverEstimator:
    name: str = "turnover"
    influence: str = "topk"
    influence_cap: Optional[int] = None
    eval_rows: int = 32768
    out_dir: str = MISSING
    theta_mem: Optional[float] = None  # null: the paper's (src/contracts/estimates.py Thresholds)
    theta_infl: Optional[float] = None
    top_k: Optional[int] = None


@dataclass
class Perf:
    channels_last: Any = "auto"  # a boolean or auto
    compile: Any = False  # a boolean
    compile_mode: str = "default"  # one of src.config.checks.COMPILE_MODES
    packing: str = "auto"  # auto or one of src.models.packing.MECHANISMS, checked by src.sweep.plan.pack_mechanism


@dataclass
class Curvature:
    directions: int = 10  # Rademacher directions per example and epoch (src/estimators/curvature.py)
    step: float = 1.0e-3  # the finite-difference step h


@dataclass
class Record:
    save_model: Any = False  # a boolean
    epochs: list[int] = field(default_factory=list)
    scores: list[str] = field(default_factory=lambda: ["learn_speed", "loss", "margin"])
    curvature: Curvature = field(default_factory=Curvature)


@dataclass
class Config:
    """conf/config.yaml: the groups, then the settings of a run."""

    dataset: DatasetBase = MISSING
    model: ModelSchema = MISSING
    optim: Any = MISSING
    schedule: ScheduleBase = MISSING
    trainer: Any = MISSING
    subset: Subset = MISSING
    logger: LoggerBase = MISSING
    paths: Paths = MISSING
    estimator: Any = MISSING
    seed: int = 0
    name: str = MISSING
    batch_size: int = 128
    overwrite: Any = False  # a boolean
    pack: Any = "auto"  # a positive integer or auto
    seeds: Optional[list[int]] = None
    progress: Any = "auto"  # true, false or auto
    perf: Perf = field(default_factory=Perf)
    record: Record = field(default_factory=Record)


GROUP_BASES: dict[str, dict[str, type]] = {
    "dataset": {"embedded": EmbeddedDataset, "mnist": MnistDataset, "cifar": CifarDataset, "npz": NpzDataset,
                "longtail": LongtailDataset, "folder": FolderDataset, "imagenet": ImagenetDataset},
    "model": {"model": ModelSchema},
    "schedule": {"schedule": ScheduleBase, "step": StepSchedule},
    "logger": {"logger": LoggerBase, "wandb": WandbLogger},
    "subset": {"subset": Subset},
    "paths": {"paths": Paths},
    "estimator": {"subsample": SubsampleEstimator, "turnover": TurnoverEstimator},
}


def register() -> None:
    """Store the schemas in Hydra's ConfigStore: `base_config`, and `base_<group>_<kind>` in each group."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group, bases in GROUP_BASES.items():
        for kind, node in bases.items():
            store.store(group=group, name=f"base_{group}" if kind == group else f"base_{group}_{kind}", node=node)


register()
