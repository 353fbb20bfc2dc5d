"""The real conf/ composes for every option, and the experiment hash sees exactly what changes a model."""

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from src.config.checks import config_hash as experiment_hash
from src.config.checks import validate_config
from src.config.paths import seed_record_path
from src.errors import ConfigError
from tests.conftest import options_having

CONF = Path(__file__).resolve().parent.parent / "conf"
# Every config group of conf/ (a folder holding options), found on disk so that a new group is tested too.
GROUPS = sorted(str(path.parent.relative_to(CONF)) for path in CONF.rglob("*.yaml") if path.parent != CONF)
GROUPS = sorted(set(GROUPS))


def test_the_groups_are_found() -> None:
    assert {"dataset", "model", "optim", "schedule", "trainer", "logger", "subset", "estimator", "experiment",
            "hydra/launcher", "paths"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))
                                               if g != "hydra"])
def test_every_option_composes(compose_cfg: Callable[..., DictConfig], group: str, option: str) -> None:
    cfg = compose_cfg(f"{group}={option}", tiny=False)
    if group == "experiment":
        assert cfg.name == option
    elif group == "hydra/launcher":
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            launcher = compose("config", overrides=[f"{group}={option}"], return_hydra_config=True).hydra.launcher
        assert launcher._target_.startswith("hydra_plugins.")
    elif group != "subset":
        assert cfg[group.split("/")[0]]
    validate_config(cfg)


def test_default_is_mnist5k_mlp_at_07(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg(tiny=False)
    assert (cfg.dataset.name, cfg.model.name, cfg.subset.ratio, cfg.logger._target_) == ("mnist5k", "mlp", 0.7,
                                                                                  "src.tracking.loggers.csv_logger")
    assert seed_record_path(cfg, 12).as_posix().endswith("mnist5k_mlp_r0.7/seed=12/record.npz")


def test_experiments_set_the_papers_settings(compose_cfg: Callable[..., DictConfig]) -> None:
    mnist = compose_cfg("experiment=fz_mnist", tiny=False)
    assert (mnist.dataset.name, mnist.model.name, list(mnist.model.kwargs.hidden)) == ("mnist5k", "mlp", [512, 256])
    assert (mnist.optim.lr, mnist.optim.momentum, mnist.batch_size) == (0.1, 0.9, 128)
    cifar = compose_cfg("experiment=fz_cifar100", tiny=False)
    assert (cifar.dataset.name, cifar.model.name, cifar.subset.ratio) == ("cifar100", "resnet50", 0.7)


UNCHANGED = ["seed=7", "logger=wandb", "logger=none", "paths.output_dir=/elsewhere",
             "paths.data_dir=/data", "overwrite=true", "dataset.eval_batch_size=7", "trainer.deterministic=true",
             "name=other", "record.save_model=true", "progress=true", "model.pack_default=3", "pack=4",
             "model.init=default", "subset.size_rule=round_half_up", "+trainer.gradient_clip_val=null",
             "+trainer.accumulate_grad_batches=1", "record.epochs=[1]", "+dataset.path=/moved/data.npz",
             "subset.repeats=1", "perf.channels_last=true", "perf.compile=true"]
CHANGED = ["optim.lr=0.05", "optim=adamw", "subset.ratio=0.5", "subset.salt=1", "dataset.normalize.mean=[0.5]",
           "schedule=cosine", "+trainer.gradient_clip_val=1.0", "model.kwargs.hidden=[64]",
           "model=cnn_small", "trainer.max_epochs=3", "batch_size=32", "trainer.precision=bf16-mixed", "trainer=gpu",
           "dataset.augment.hflip=true", "model.init=stax", "subset.size_rule=floor", "subset.repeats=2"]


@pytest.mark.parametrize("override", UNCHANGED)
def test_hash_ignores_what_does_not_change_the_model(compose_cfg: Callable[..., DictConfig], override: str) -> None:
    assert experiment_hash(compose_cfg(override), "fp") == experiment_hash(compose_cfg(), "fp")


@pytest.mark.parametrize("override", CHANGED)
def test_hash_covers_what_changes_the_model(compose_cfg: Callable[..., DictConfig], override: str) -> None:
    assert experiment_hash(compose_cfg(override), "fp") != experiment_hash(compose_cfg(), "fp")


def test_hash_covers_the_data(compose_cfg: Callable[..., DictConfig]) -> None:
    assert experiment_hash(compose_cfg(), "a") != experiment_hash(compose_cfg(), "b")


@pytest.mark.parametrize("override", ["subset.ratio=0", "subset.ratio=1.5", "seed=-1", "batch_size=0",
                                      "trainer.max_epochs=0", "subset.salt=-2", "name=a/b",
                                      "subset.repeats=0"])
def test_validate_config_rejects(compose_cfg: Callable[..., DictConfig], override: str) -> None:
    with pytest.raises(ConfigError):
        validate_config(compose_cfg(override))


@pytest.mark.parametrize(("overrides", "message"), [
    (["perf.compile=true", "perf.compile_mode=max_autotune"], "perf.compile_mode=max_autotune is none of default, "),
    (["perf.compile_mode=max-autotune-no-cudagraphs"], "takes effect with perf.compile=true: add it"),
    (["perf.compile=true", "perf.compile_mode=reduce-overhead"], "records CUDA graphs, which need trainer=gpu"),
])
def test_compile_mode_is_refused_where_it_would_not_take_effect(compose_cfg: Callable[..., DictConfig],
                                                                overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_cfg(*overrides))


def test_cuda_graph_compile_modes_pass_the_config_check_of_a_gpu_trainer(
        compose_cfg: Callable[..., DictConfig]) -> None:
    for mode in ("reduce-overhead", "max-autotune"):
        validate_config(compose_cfg("trainer=gpu", "perf.compile=true", f"perf.compile_mode={mode}"))


def _boolean_leaves(node: object, prefix: str = "") -> set[str]:
    """Dotted keys of every boolean value in a composed config (lists left out)."""
    if isinstance(node, DictConfig):
        found: set[str] = set()
        for key in node:
            if not OmegaConf.is_missing(node, key) and not str(key).startswith("_"):  # Hydra's own keys
                found |= _boolean_leaves(node[key], f"{prefix}{key}.")
        return found
    return {prefix[:-1]} if isinstance(node, bool) else set()


ALL_OPTIONS = [(g, p.stem) for g in [*GROUPS, "subset", "estimator"] for p in sorted((CONF / g).glob("*.yaml"))]


def test_every_boolean_default_is_a_checked_boolean(compose_cfg: Callable[..., DictConfig]) -> None:
    from src.config.checks import BOOLEAN_KEYS, BOOLEAN_OR_AUTO_KEYS

    found = set().union(*(_boolean_leaves(compose_cfg(f"{g}={o}", tiny=False)) for g, o in ALL_OPTIONS))
    assert found - {"hydra"} <= set(BOOLEAN_KEYS) | set(BOOLEAN_OR_AUTO_KEYS), found - set(BOOLEAN_KEYS)


@pytest.mark.parametrize("word", ["flase", "no", "maybe", "1", "yes"])
def test_every_boolean_setting_refuses_a_word(compose_cfg: Callable[..., DictConfig], word: str) -> None:
    from src.config.checks import BOOLEAN_KEYS, BOOLEAN_OR_AUTO_KEYS

    for key in (*BOOLEAN_KEYS, *BOOLEAN_OR_AUTO_KEYS):
        cfg = compose_cfg(*options_having(key), f"++{key}={word}")
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=\S+ is not a boolean"):
            validate_config(cfg)
    for key in BOOLEAN_OR_AUTO_KEYS:
        validate_config(compose_cfg(*options_having(key), f"++{key}=auto"))
