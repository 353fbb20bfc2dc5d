"""Launchers and distributed training: the SLURM preset, Lightning's SLURM requeue turned off, DDP shares of
each batch and its equivalence with one process, jobs that share a process, submitit_local."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src.contracts.records import find_records, read_record
from src.errors import ConfigError
from src.training.epochs import EpochPlan
from src.training.job import run_job
from src.training.trainer import SRUN_HINT, end_process_group, make_trainer
from tests.conftest import CONF, ROOT, TINY, cli_env, run_cli

# Largest |probability difference| allowed between a 2-rank DDP record and the 1-process record of the same seed:
# float32 sums in another order (measured: 4.4e-6 after 2 epochs of the digits MLP, docs/CLUSTER.md).
DDP_PROB_ATOL = 1e-4


# ------------------------------------------------------------------------------------------------- SLURM


def slurm_launcher_config() -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher


def test_slurm_preset_becomes_an_sbatch_array_with_one_gpu_per_job(tmp_path: Path) -> None:
    """The preset through the plugin's and submitit's own parameter conversion to the sbatch script."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    launcher = slurm_launcher_config()
    assert launcher._target_.endswith("SlurmLauncher") and launcher.max_num_timeout == 3
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    from hydra_plugins.meminf_sweep.slurm import MEMINF_KEYS

    params = {key: value for key, value in OmegaConf.to_container(launcher).items()
              if key not in ("_target_", "submitit_folder", "max_num_timeout", "setup", "additional_parameters",
                             *MEMINF_KEYS) and value is not None}
    translated = {SlurmExecutor._equivalence_dict().get(key, key) if key in shared else key: value
                  for key, value in params.items()}
    translated["mem"] = f"{translated['mem']}GB"
    script = _make_sbatch_string(command="python -m src.run", folder=tmp_path, map_count=1000, **translated)
    for line in ("--gpus-per-node=1", "--ntasks-per-node=1", "--cpus-per-task=8", "--mem=64GB", "--time=240",
                 "--signal=USR2@120", "--array=0-999%256"):
        assert f"#SBATCH {line}\n" in script, line


def test_cluster_doc_starts_the_test_cluster() -> None:
    """docs/CLUSTER.md's local cluster is tests/slurm_cluster.py's: the same slurm.conf (shell variables in place
    of the directory, host, CPUs and memory; SLURM's default ports) and the same daemons."""
    from tests.slurm_cluster import slurm_conf

    doc = (ROOT / "docs" / "CLUSTER.md").read_text()
    heredoc = doc.split("cat > $DIR/slurm.conf <<EOF\n", 1)[1].split("\nEOF\n", 1)[0] + "\n"
    assert heredoc == slurm_conf(root="$DIR", host="$HOST", cpus="$CPUS", memory_mb="$MEM_MB")
    for command in ("munged --key-file=$DIR/munge/munge.key --socket=$DIR/munge/munge.socket",
                    "slurmctld -i -f $DIR/slurm.conf", "slurmd -f $DIR/slurm.conf -N $HOST",
                    "apt-get install -y slurm-wlm munge"):
        assert command in doc, command


SLURM_TASK = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "meminf", "SLURM_JOB_ID": "42", "SLURM_PROCID": "0",
              "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "SLURM_STEP_ID": "0"}
# Where a job's Python can run, as the environment variables tell (tests/test_slurm.py sees the same in real jobs).
PLACES = {
    "local": {},
    "SLURM task (srun, as submitit starts it)": SLURM_TASK,
    "batch script of 2 tasks, no srun": {**{k: v for k, v in SLURM_TASK.items() if k != "SLURM_STEP_ID"},
                                         "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2"},
    "interactive step (srun --pty bash)": {**SLURM_TASK, "SLURM_JOB_NAME": "bash"},
    "torchrun in a SLURM task": {**SLURM_TASK, "TORCHELASTIC_RUN_ID": "none", "RANK": "0", "GROUP_RANK": "0",
                                 "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "1",
                                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29562"},
}
EXPECTED_ENVIRONMENT = {"local": "LightningEnvironment", "SLURM task (srun, as submitit starts it)": "SLURMEnvironment",
                        "batch script of 2 tasks, no srun": "LightningEnvironment",
                        "interactive step (srun --pty bash)": "LightningEnvironment",
                        "torchrun in a SLURM task": "TorchElasticEnvironment"}


def fake_srun_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An `srun` on PATH, as on every SLURM login and compute node (Lightning only looks it up)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def place_job(place: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in {*SLURM_TASK, "SLURM_NTASKS_PER_NODE", *PLACES["torchrun in a SLURM task"]}:
        monkeypatch.delenv(name, raising=False)
    for name, value in PLACES[place].items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("place", PLACES)
def test_cluster_environment_is_chosen_without_the_srun_hint(
    place: str, compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A SLURM task gets SLURM's ranks with Lightning's auto-requeue off (submitit requeues); a batch script or
    an allocation's shell without srun is one process of rank 0, whatever SLURM_NTASKS says; torchrun's ranks
    win inside a SLURM task. Lightning's own hint to prepend srun is never printed."""
    import warnings

    from pytorch_lightning.plugins.environments import SLURMEnvironment

    fake_srun_on_path(tmp_path, monkeypatch)
    place_job(place, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(compose_cfg(), tmp_path, logger=False)
    environment = trainer._accelerator_connector.cluster_environment
    assert type(environment).__name__ == EXPECTED_ENVIRONMENT[place]
    assert (environment.global_rank(), environment.world_size(), trainer.global_rank, trainer.world_size) == (
        0, 1, 0, 1)
    assert not [str(warning.message) for warning in caught if "srun" in str(warning.message)]
    if isinstance(environment, SLURMEnvironment):
        assert environment.auto_requeue is False and environment.job_id() == 42


def test_lightning_alone_prints_the_srun_hint_outside_slurm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What make_trainer avoids: Lightning's own detection on a machine with srun, outside a SLURM task."""
    import pytorch_lightning as pl

    fake_srun_on_path(tmp_path, monkeypatch)
    place_job("local", monkeypatch)
    with pytest.warns(UserWarning, match=SRUN_HINT.replace("`", ".")):
        pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)


def test_a_local_job_on_a_machine_with_srun_prints_no_srun_hint(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """A whole job (Trainer.fit asks Lightning's SLURM detection again, for its hpc-checkpoint resume)."""
    fake_srun_on_path(tmp_path, monkeypatch)
    place_job("local", monkeypatch)
    result = run_cli("src.run", *TINY, "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'out'}", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert SRUN_HINT not in result.stderr + result.stdout


# --------------------------------------------------------------------------------------------------- DDP


@pytest.mark.parametrize(("n", "batch_size", "world_size"), [(10, 4, 2), (11, 4, 3), (7, 8, 2)])
def test_ddp_ranks_get_disjoint_shares_of_every_global_batch(n: int, batch_size: int, world_size: int) -> None:
    subset_idx = torch.arange(100, 100 + n)[None]
    single = EpochPlan(subset_idx, batch_size, [3], crop_padding=2, hflip=True)
    shards = [EpochPlan(subset_idx, batch_size, [3], crop_padding=2, hflip=True) for _ in range(world_size)]
    for rank, plan in enumerate(shards):
        plan.shard(rank, world_size)
    losses = torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for batch_idx, (whole, *parts) in enumerate(zip(single, *shards, strict=True)):
        idx = torch.cat([part[0] for part in parts], 1)
        order = idx[0].argsort()
        assert torch.equal(idx[0][order], whole[0][0].sort().values)  # the ranks split the batch, no overlap
        for field in (1, 2):  # every example keeps its crop shift and flip
            assert torch.equal(torch.cat([part[field] for part in parts], 1)[0][order],
                               whole[field][0][whole[0][0].argsort()])
        # Summed losses times the weight, averaged over the ranks (DDP's gradient average) = the batch mean.
        ddp_mean = sum(losses[part[0]].sum() * plan.loss_weight(batch_idx) for part, plan in zip(parts, shards,
                                                                                               strict=True))
        assert torch.isclose(ddp_mean / world_size, losses[whole[0]].mean())
        assert single.loss_weight(batch_idx) * whole[0].shape[1] == 1


def test_ddp_refuses_a_packed_job(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "seeds=[0,1]")
    with pytest.raises(ConfigError, match="add pack=1"):
        run_job(cfg)
    assert not find_records(cfg.paths.output_dir)


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_ddp_ranks_that_lightning_would_start_itself_are_refused(
    strategy: str, compose_cfg: Callable[..., DictConfig]
) -> None:
    cfg = compose_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"trainer.strategy={strategy}")
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"):
        run_job(cfg)


def test_the_process_group_ends_before_exit() -> None:
    """A real (one-rank, gloo) process group is destroyed by the teardown registered at exit; without one (one
    process), or twice, the teardown does nothing."""
    import torch.distributed as dist

    end_process_group()  # no process group
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        end_process_group()
        assert not dist.is_initialized()
        end_process_group()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_two_rank_ddp_writes_one_record_per_seed_equal_to_one_process(tmp_path: Path) -> None:
    """torchrun starts two CPU ranks (gloo), as SLURM starts one task per GPU: both run every job."""
    common = ["-m", *TINY, "pack=1", "name=eq", "seed=0..1"]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29561", "-m",
         "src.run", *common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
         "trainer.precision=32-true",  # as the one process (trainer=ddp inherits trainer=gpu's bf16-mixed)
         f"paths.output_dir={tmp_path / 'ddp'}"],
        cwd=ROOT, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_cli("src.run", *common, f"paths.output_dir={tmp_path / 'one'}", cwd=ROOT, OMP_NUM_THREADS="1")
    assert single.returncode == 0, single.stderr
    ddp_records, single_records = (find_records(tmp_path / kind / "eq") for kind in ("ddp", "one"))
    assert [path.parent.name for path in ddp_records] == ["seed=0", "seed=1"]  # one record per seed
    for ddp_path, single_path in zip(ddp_records, single_records, strict=True):
        ddp_record, single_record = read_record(ddp_path), read_record(single_path)
        assert np.array_equal(ddp_record.subset_mask, single_record.subset_mask)
        for name in ("train_prob", "test_prob"):
            np.testing.assert_allclose(getattr(ddp_record, name), getattr(single_record, name), atol=DDP_PROB_ATOL)
        # Both ranks' steps are counted: every subset example was seen, as in one process.
        learn_speed = ddp_record.proxies["learn_speed"]
        assert np.array_equal(np.isnan(learn_speed), ~single_record.subset_mask)
        np.testing.assert_allclose(learn_speed, single_record.proxies["learn_speed"], atol=0.5)


# -------------------------------------------------------------------------------- jobs sharing a process

JOBS_IN_ONE_PROCESS = """
import json, sys
import numpy as np, torch
from hydra import compose, initialize_config_dir
from src.training import job, trainer as training
from src.contracts.records import read_record

out, first_job_too = sys.argv[1], sys.argv[2] == "yes"
seen = {}
make_trainer = training.make_trainer
def spy(cfg, *args, **kwargs):  # the global state a job trains under, once its Trainer exists
    trainer = make_trainer(cfg, *args, **kwargs)
    seen[int(cfg.seed)] = {"deterministic": torch.are_deterministic_algorithms_enabled(),
                           "threads": torch.get_num_threads()}
    return trainer
training.make_trainer = spy
base = %(tiny)r + [f"paths.output_dir={out}", "name=leak"]
with initialize_config_dir(config_dir=%(conf)r, version_base="1.3"):
    first = compose("config", overrides=base + ["seed=7", "trainer.deterministic=true", "logger=wandb",
                                                "logger.mode=offline", "name=other", "batch_size=32"])
    second = compose("config", overrides=base + ["seed=3"])
if first_job_too:
    torch.manual_seed(123); np.random.seed(123)  # as a job that drew random numbers would leave them
    job.run_job(first)
    import wandb
    seen["wandb_run_after_first"] = wandb.run is not None
record = read_record(job.run_job(second)[0])
np.savez(f"{out}/second.npz", train_prob=record.train_prob, test_prob=record.test_prob,
         learn_speed=record.proxies["learn_speed"])
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_a_job_after_another_in_the_same_process_equals_it_run_fresh(tmp_path: Path) -> None:
    """Hydra's basic and joblib launchers run many jobs in one process: nothing the first leaves behind
    (global seeds, deterministic mode, a wandb run) may change the second job's record."""
    import json

    script = JOBS_IN_ONE_PROCESS % {"tiny": TINY, "conf": str(CONF)}
    results = {}
    for case in ("yes", "no"):
        out = tmp_path / case
        out.mkdir()
        done = subprocess.run([sys.executable, "-c", script, str(out), case], cwd=ROOT, capture_output=True,
                              text=True, timeout=600, env=cli_env(WANDB_DIR=str(tmp_path), OMP_NUM_THREADS="1"))
        assert done.returncode == 0, done.stderr[-3000:]
        results[case] = json.loads(done.stdout.strip().splitlines()[-1])
    after_first, fresh = results["yes"], results["no"]
    assert after_first["7"]["deterministic"] is True  # the first job really set the global flag
    assert after_first["3"] == fresh["3"] == {"deterministic": False, "threads": 1}
    assert after_first["wandb_run_after_first"] is False
    with np.load(tmp_path / "yes" / "second.npz") as reused, np.load(tmp_path / "no" / "second.npz") as alone:
        for name in ("train_prob", "test_prob", "learn_speed"):
            assert np.array_equal(reused[name], alone[name], equal_nan=True), name


@pytest.mark.slow
def test_submitit_local_jobs_equal_the_basic_launcher(tmp_path: Path) -> None:
    args = ["-m", *TINY, "pack=1", "name=sub", "seed=0..1"]
    submitted = run_cli("src.run", *args, "hydra/launcher=submitit_local", f"paths.output_dir={tmp_path / 'sub'}",
                        cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    basic = run_cli("src.run", *args, f"paths.output_dir={tmp_path / 'basic'}", cwd=tmp_path)
    assert basic.returncode == 0, basic.stderr
    for sub_path, basic_path in zip(*(find_records(tmp_path / kind / "sub") for kind in ("sub", "basic")),
                                    strict=True):
        sub_record, basic_record = read_record(sub_path), read_record(basic_path)
        assert sub_record.seed == basic_record.seed and sub_record.meta["pid"] != os.getpid()
        np.testing.assert_array_equal(sub_record.test_prob, basic_record.test_prob)
    requeued = run_cli("src.run", *args, "hydra/launcher=submitit_local", f"paths.output_dir={tmp_path / 'sub'}",
                       cwd=tmp_path)
    assert requeued.returncode == 0 and "2 seeds, 2 done, 0 to train" in requeued.stderr
