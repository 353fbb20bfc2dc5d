"""The one done-rule (src/sweep/done.py): the launcher's pre-flight and every job agree on which seeds are done;
done means the same experiment and a record holding at least what the config asks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from src.config.paths import seed_record_path
from src.contracts.records import read_meta
from src.errors import ConfigError
from src.sweep.plan import pending_seeds
from src.training.job import run_job
from tests.conftest import TINY, run_cli

SEEDS = [0, 1]


def contents(cfg: DictConfig) -> dict[int, bytes]:
    return {seed: seed_record_path(cfg, seed).read_bytes() for seed in SEEDS}


@pytest.fixture
def finished(compose_cfg: Callable[..., DictConfig]) -> Callable[..., DictConfig]:
    """A finished 2-seed sweep (1 epoch, per-epoch correctness after epoch 1); returns a config maker for it."""
    def cfg(*overrides: str) -> DictConfig:
        return compose_cfg("trainer.max_epochs=1", "name=done", "seeds=[0,1]", *overrides)

    run_job(cfg("record.epochs=[1]"))
    return cfg


@pytest.mark.parametrize(("overrides", "trains"), [
    ((), False),  # asks for fewer epochs than recorded: done
    (("record.epochs=[1]",), False),
    (("record.save_model=true",), True),  # no model.pt beside the records
    (("record.scores=[learn_speed]",), False),  # fewer record scores than recorded
    (("overwrite=true",), True),
])
def test_pre_flight_and_job_agree(finished: Callable[..., DictConfig], overrides: tuple[str, ...],
                                  trains: bool) -> None:
    cfg = finished(*overrides)
    before = contents(cfg)
    assert pending_seeds(cfg, SEEDS) == (SEEDS if trains else [])
    written = run_job(cfg)
    assert len(written) == (len(SEEDS) if trains else 0)
    assert (contents(cfg) != before) == trains
    assert pending_seeds(finished(*[o for o in overrides if not o.startswith("overwrite")]), SEEDS) == []


def test_another_training_length_is_another_experiment(finished: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigError, match="holds experiment"):
        pending_seeds(finished("trainer.max_epochs=2", "record.epochs=[1,2]"), SEEDS)


def test_a_refused_relaunch_proposes_a_free_name_that_launches(finished: Callable[..., DictConfig]) -> None:
    """The name the refusal proposes is derived from the change, and the next free one when that is taken."""
    changed = ("trainer.max_epochs=2", "record.epochs=[1,2]")
    with pytest.raises(ConfigError, match=r"trainer.max_epochs: 1 → 2: choose another name, e.g. "
                                          r"name=done_max_epochs2 \(free under "):
        pending_seeds(finished(*changed), SEEDS)
    assert pending_seeds(finished(*changed, "name=done_max_epochs2"), SEEDS) == SEEDS
    (Path(str(finished().paths.output_dir)) / "done_max_epochs2").mkdir()
    with pytest.raises(ConfigError, match=r"e.g. name=done_2 "):
        pending_seeds(finished(*changed), SEEDS)


def test_an_fp32_gpu_sweep_relaunched_after_the_bf16_default_is_refused_naming_its_precision(
        finished: Callable[..., DictConfig]) -> None:
    """Records of trainer=gpu before its default became bf16-mixed are those of trainer=cpu's 32-true (devices are
    not in the identity): relaunched as launched, the sweep is refused with the override that continues it."""
    with pytest.raises(ConfigError, match=r"trainer.precision: 32-true → bf16-mixed: choose another name, e.g. "
                                          r"name=done_precisionbf16-mixed \(free under .*\), or "
                                          r"trainer.precision=32-true to go on with this sweep as it was trained, or "
                                          r"overwrite=true to replace it$"):
        pending_seeds(finished("trainer=gpu"), SEEDS)
    assert pending_seeds(finished("trainer=gpu", "trainer.precision=32-true"), SEEDS) == []
    with pytest.raises(ConfigError, match=r"e.g. name=\S+ \(free under [^)]*\), or overwrite=true"):  # not alone
        pending_seeds(finished("trainer=gpu", "trainer.max_epochs=2", "record.epochs=[1,2]"), SEEDS)


def test_a_relaunch_asking_for_new_epochs_trains_them(tmp_path: Path) -> None:
    args = ["src.run", "-m", *TINY, "trainer.max_epochs=2", f"paths.output_dir={tmp_path}", "name=e", "seed=0..1"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    relaunched = run_cli(*args, "record.epochs=[1,2]", cwd=tmp_path)
    assert relaunched.returncode == 0 and "2 seeds, 0 done, 2 to train" in relaunched.stderr, relaunched.stderr
    assert read_meta(tmp_path / "e" / "seed=0" / "record.npz")["record_epochs"] == [1, 2]
    fewer = run_cli(*args, "record.epochs=[2]", cwd=tmp_path)
    assert "2 seeds, 2 done, 0 to train" in fewer.stderr, fewer.stderr


def test_a_record_in_another_seeds_directory_is_refused(finished: Callable[..., DictConfig]) -> None:
    """Issue 20 §4: seed 1's record replaced by a copy of seed 0's. Neither the pre-flight nor a job counts
    seed 1 as done (before, the job skipped it); both refuse in one line; overwrite=true retrains it."""
    cfg = finished()
    seed_record_path(cfg, 1).write_bytes(seed_record_path(cfg, 0).read_bytes())
    for check in (lambda: pending_seeds(cfg, SEEDS), lambda: run_job(cfg)):
        with pytest.raises(ConfigError, match=r"holds the record of seed 0 in the directory of seed 1; move it to "
                                              r"seed=0/ or delete it") as refused:
            check()
        assert "\n" not in str(refused.value)
    replaced = finished("overwrite=true")
    assert pending_seeds(replaced, SEEDS) == SEEDS
    run_job(replaced)
    assert read_meta(seed_record_path(cfg, 1))["seed"] == 1
