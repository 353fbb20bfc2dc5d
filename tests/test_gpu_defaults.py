"""What `trainer=gpu` sets and what a device cannot do, checked on the CPU: bf16 autocast (in the identity), the
evaluation under the training step's autocast, channels_last and TF32 on a GPU, a GPU of its own per concurrent
job, the refusals before launch (bf16 without bfloat16 arithmetic, fp16's one loss scaler over a pack), and the
uint8 training set that stays uint8 on a device."""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from joblib import Parallel, delayed
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from src.config.checks import check_device, config_hash
from src.data.dataset import load_dataset
from src.data.subsets import subset_mask
from src.errors import ConfigError
from src.sweep.plan import check_launch, plan_seeds, resolve_pack
from src.training.devices import lock_dir, own_gpu
from src.training.job import build_members, fit, run_job, uses_channels_last
from src.training.module import SubsetClassifier
from src.training.trainer import cuda_graph_skips_reported, make_trainer

IMAGES, ARRAYS = SimpleNamespace(is_image=True), SimpleNamespace(is_image=False)


def test_gpu_trainer_trains_in_bf16_with_channels_last_and_stays_a_trainer_key(
        compose_cfg: Callable[..., DictConfig]) -> None:
    for trainer in ("gpu", "ddp"):
        cfg = compose_cfg(f"trainer={trainer}")
        assert (cfg.trainer.precision, cfg.trainer.benchmark, cfg.perf.channels_last) == ("bf16-mixed", True, "auto")
        assert uses_channels_last(cfg, IMAGES, "single") and uses_channels_last(cfg, IMAGES, "grouped")
        assert not uses_channels_last(cfg, IMAGES, "vmap") and not uses_channels_last(cfg, ARRAYS, "single")
    assert not uses_channels_last(compose_cfg(), IMAGES, "single")  # the CPU: as before
    assert compose_cfg().trainer.precision == "32-true"
    # A bf16 GPU sweep is another experiment than an fp32 one; an fp32 one is trainer.precision=32-true.
    assert config_hash(compose_cfg("trainer=gpu"), "fp") != config_hash(compose_cfg(), "fp")
    assert config_hash(compose_cfg("trainer=gpu", "trainer.precision=32-true"), "fp") == config_hash(compose_cfg(),
                                                                                                     "fp")


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")


def test_a_gpu_without_bfloat16_is_refused_before_launch(compose_cfg: Callable[..., DictConfig],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 1, bf16=False)
    with pytest.raises(ConfigError, match=r"^trainer.precision=bf16-mixed: this GPU \(Tesla V100-SXM2-16GB\) has no "
                                          r"bfloat16 arithmetic; add trainer.precision=16-mixed \(pack=1 only\) or "
                                          r"trainer.precision=32-true$"):
        check_launch(compose_cfg("trainer=gpu"), 1, local=True)
    check_device(compose_cfg("trainer=gpu", "trainer.precision=32-true").trainer)
    check_launch(compose_cfg("trainer=gpu"), 1, local=False)  # the jobs run elsewhere; each job checks its own GPU
    with pytest.raises(ConfigError, match="no bfloat16"):
        run_job(compose_cfg("trainer=gpu", "seed=0"))


def test_fp16_loss_scaling_is_not_shared_by_packed_members(compose_cfg: Callable[..., DictConfig]) -> None:
    fp16 = ("trainer.precision=16-mixed",)
    with pytest.raises(ConfigError, match=r"^trainer.precision=16-mixed at pack=2: its one loss scaler would skip "
                                          r"every member's step"):
        plan_seeds(compose_cfg(*fp16, "pack=2"), [0, 1, 2, 3], multirun=True, local=True)
    with pytest.raises(ConfigError, match="one loss scaler"):
        run_job(compose_cfg(*fp16, "seeds=[0,1]"))
    auto = plan_seeds(compose_cfg(*fp16), [0, 1, 2, 3], multirun=True, local=True)  # the MLP packs 16 at auto
    assert (auto.pack, auto.why) == (1, "trainer.precision=16-mixed: one loss scaler per job")
    assert resolve_pack("auto", compose_cfg().model, 4, precision="bf16-mixed")[0] == 4


def test_concurrent_one_gpu_jobs_each_take_a_gpu_of_their_own(compose_cfg: Callable[..., DictConfig],
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    fake_gpus(monkeypatch, 4)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the lock directory's parent
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    workers = 4
    ready = threading.Barrier(workers)

    def job(cfg: DictConfig) -> list[int]:
        with own_gpu(cfg):
            ready.wait(timeout=30)  # every worker holds its GPU at once
            devices = list(cfg.trainer.devices)
        assert cfg.trainer.devices == 1  # the job's config as it was
        return devices

    # joblib's workers, as hydra/launcher=joblib runs a sweep's jobs (threads here, so that the fake GPUs apply)
    cfgs = [compose_cfg("trainer=gpu") for _ in range(workers)]  # (Hydra composes in one thread at a time)
    claimed = Parallel(n_jobs=workers, backend="threading")(delayed(job)(cfg) for cfg in cfgs)
    assert sorted(claimed) == [[0], [1], [2], [3]]
    with ExitStack() as stack:  # more jobs than GPUs: the GPUs are shared evenly
        cfgs = [compose_cfg("trainer=gpu") for _ in range(6)]
        for cfg in cfgs:
            stack.enter_context(own_gpu(cfg))
        assert [list(cfg.trainer.devices) for cfg in cfgs] == [[0], [1], [2], [3], [0], [1]]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # another process shown other GPUs locks those
    fake_gpus(monkeypatch, 2)
    with own_gpu(cfg := compose_cfg("trainer=gpu")):
        assert list(cfg.trainer.devices) == [0]
    assert {"gpu0.slot0.lock", "gpu3.slot0.lock", "gpu1.slot1.lock", "gpu5.slot0.lock"} <= {
        path.name for path in lock_dir().iterdir()}
    for overrides in ((), ("trainer=ddp",), ("trainer=gpu", "trainer.devices=2")):  # not one GPU: as asked
        with own_gpu(cfg := compose_cfg(*overrides)):
            assert cfg.trainer.devices == compose_cfg(*overrides).trainer.devices


@pytest.fixture
def tf32_flags() -> Iterator[None]:
    """torch's TF32 flags put back as they were (monkeypatch cannot: they are properties of torch's modules)."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.parametrize(("precision", "tf32_matmuls"), [("bf16-mixed", True), ("32-true", False)])
@pytest.mark.usefixtures("tf32_flags")
def test_gpu_jobs_set_tf32_from_the_precision(compose_cfg: Callable[..., DictConfig], tmp_path: Path,
                                              precision: str, tf32_matmuls: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = not tf32_matmuls, False
    with pytest.raises(MisconfigurationException):  # no GPU here: Lightning's Trainer stops after meminf set TF32
        make_trainer(compose_cfg("trainer=gpu", f"trainer.precision={precision}"), tmp_path, None)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (tf32_matmuls, True)


def trained(cfg: DictConfig) -> SubsetClassifier:
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    mask = subset_mask(0, len(dataset.y_train), 0.7, 0, "round_half_up")
    return fit(cfg, dataset, [0], mask[None])


@pytest.mark.parametrize(("precision", "dtype"), [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)])
def test_evaluation_runs_under_the_training_autocast(compose_cfg: Callable[..., DictConfig], precision: str,
                                                     dtype: torch.dtype) -> None:
    """bf16 autocast on the CPU stands for the GPU's: the members' outputs in evaluation have training's dtype."""
    module = trained(compose_cfg("seed=0", "trainer.max_epochs=1", f"trainer.precision={precision}"))
    seen: list[torch.dtype] = []
    module.members.register_forward_hook(lambda _module, _inputs, output: seen.append(output.dtype))
    evaluation = module.evaluate("test", 128)
    assert seen and set(seen) == {dtype}
    assert evaluation.prob.dtype == np.float32 and np.isfinite(evaluation.loss).all()


def test_the_training_set_stays_uint8_off_the_cpu(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("seeds=[0,1]", "dataset=mnist5k")
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    assert dataset.x_train.dtype == np.uint8

    def module() -> SubsetClassifier:
        return SubsetClassifier(build_members(cfg, dataset, [0, 1]), cfg.optim, cfg.schedule, dataset,
                                list(cfg.dataset.normalize.mean), list(cfg.dataset.normalize.std), 0, False, False)

    on_device = module().to("meta")  # stands for a GPU: any device but the CPU
    on_device.on_fit_start()
    assert on_device.train_inputs is None and on_device.x_train.dtype == torch.uint8
    on_cpu = module()
    on_cpu.on_fit_start()  # the CPU keeps its normalised copy (tests/test_training.py: the same bits)
    assert on_cpu.train_inputs is not None and on_cpu.train_inputs.dtype == torch.float32


def test_a_cuda_graph_mode_says_when_inductor_ran_graphs_without_them(caplog: pytest.LogCaptureFixture) -> None:
    """Inductor reports a skipped CUDA graph only to its `cudagraphs` log artifact (off by default) and its
    counter; a job with perf.compile_mode=reduce-overhead or max-autotune says so in its log."""
    from torch._dynamo.utils import counters

    with caplog.at_level(logging.WARNING, logger="src.training.trainer"):
        with cuda_graph_skips_reported("reduce-overhead"):
            counters["inductor"]["cudagraph_skips"] += 2
        assert "perf.compile_mode=reduce-overhead: inductor ran 2 compiled graph(s) of this job without CUDA " \
               "graphs" in caplog.text
        caplog.clear()
        with cuda_graph_skips_reported("reduce-overhead"), cuda_graph_skips_reported("default"):
            pass  # nothing skipped; the default mode records no CUDA graphs
        assert not caplog.text
