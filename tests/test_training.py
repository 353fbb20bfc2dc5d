"""One training job in-process: data plan, augmentation, schedules, the record it writes, reruns."""

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.config.paths import seed_record_path
from src.contracts.records import read_record
from src.data.dataset import load_dataset
from src.data.subsets import subset_mask
from src.errors import ConfigError, TrainingError
from src.training.epochs import EpochPlan, pad_crop_flip
from src.training.job import build_members, run_job
from src.training.module import SubsetClassifier


def plan_batches(seed: int, epoch: int, n: int = 50) -> list[tuple[torch.Tensor, ...]]:
    """One member's batches (the plan's items without the member dimension)."""
    plan = EpochPlan(torch.arange(n)[None], batch_size=16, seeds=[seed], crop_padding=4, hflip=True)
    plan.set_epoch(epoch)
    return [tuple(part[0] for part in item) for item in plan]


def test_each_member_of_a_plan_gets_the_batches_of_its_seed_alone() -> None:
    subsets = torch.stack([torch.randperm(100)[:50] for _ in range(3)])
    plan = EpochPlan(subsets, batch_size=16, seeds=[5, 6, 7], crop_padding=2, hflip=True)
    plan.set_epoch(2)
    packed = list(plan)
    for k, seed in enumerate([5, 6, 7]):
        alone = EpochPlan(subsets[k:k + 1], batch_size=16, seeds=[seed], crop_padding=2, hflip=True)
        alone.set_epoch(2)
        for together, single in zip(packed, alone, strict=True):
            assert all(torch.equal(a[k], b[0]) for a, b in zip(together, single, strict=True))


def test_epoch_plan_covers_each_example_once_and_depends_on_seed_and_epoch_only() -> None:
    batches = plan_batches(seed=3, epoch=1)
    order = torch.cat([idx for idx, _, _ in batches])
    assert sorted(order.tolist()) == list(range(50)) and len(batches) == 4
    again = plan_batches(seed=3, epoch=1)
    assert all(torch.equal(a, b) for x, y in zip(batches, again, strict=True) for a, b in zip(x, y, strict=True))
    assert not torch.equal(order, torch.cat([idx for idx, _, _ in plan_batches(seed=3, epoch=2)]))
    assert not torch.equal(order, torch.cat([idx for idx, _, _ in plan_batches(seed=4, epoch=1)]))
    shifts = torch.cat([s for _, s, _ in batches])
    assert shifts.min() >= 0 and shifts.max() <= 8


def test_pad_crop_flip_matches_a_per_example_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 5, 7, generator=gen)
    shifts = torch.randint(0, 5, (6, 2), generator=gen)
    flips = torch.tensor([True, False, True, False, False, True])
    out = pad_crop_flip(x, shifts, flips, padding=2)
    for b in range(6):
        padded = torch.nn.functional.pad(x[b], (2, 2, 2, 2))
        dy, dx = shifts[b].tolist()
        expected = padded[:, dy:dy + 5, dx:dx + 7]
        torch.testing.assert_close(out[b], expected.flip(2) if flips[b] else expected)


def test_pad_zero_leaves_images_alone_without_flips() -> None:
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(pad_crop_flip(x, torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, dtype=torch.bool), 0), x)


@pytest.mark.parametrize(("schedule", "step", "expected"), [
    ("constant", 50, 1.0), ("cosine", 0, 1.0), ("cosine", 100, 0.0), ("cosine", 50, 0.5), ("linear", 25, 0.75),
    ("step", 59, 1.0), ("step", 60, 0.1), ("step", 90, 0.01)])
def test_lr_schedules(compose_cfg: Callable[..., DictConfig], schedule: str, step: int, expected: float) -> None:
    cfg = compose_cfg(f"schedule={schedule}", *(["schedule.milestones=[60,80]"] if schedule == "step" else []))
    factor = instantiate(cfg.schedule)(total_steps=100, steps_per_epoch=1)
    assert factor(step) == pytest.approx(expected, abs=1e-9)


def test_lr_warmup_and_an_unknown_schedule(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("schedule.warmup_epochs=10")
    assert instantiate(cfg.schedule)(total_steps=100, steps_per_epoch=1)(0) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="schedule=exponential is unknown; choose one of constant, cosine"):
        compose_cfg("schedule=exponential")


def test_job_writes_a_valid_record_against_the_trained_labels(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("seed=4", "dataset.label_noise=0.1", "trainer.max_epochs=3")
    [path] = run_job(cfg)
    assert path == seed_record_path(cfg, 4)
    record = read_record(path)
    n = record.meta["n_train"]
    assert np.array_equal(record.subset_mask, subset_mask(4, n, 0.7))
    assert len(record.flipped_idx) == round(0.1 * n)
    assert np.all(record.train_label[record.flipped_idx] != record.flipped_orig_label)
    assert record.meta["train_in_acc"] == pytest.approx(record.train_correct[record.subset_mask].mean())
    assert record.meta["test_acc"] > 0.5  # 3 epochs on digits: far above chance (0.1)
    # Memorizing a flipped label means predicting it: flipped training examples in the subset are fitted
    # to their flipped label more often than out-of-subset ones.
    flipped_in = record.subset_mask[record.flipped_idx]
    correct_flipped = record.train_correct[record.flipped_idx]
    assert correct_flipped[flipped_in].mean() > correct_flipped[~flipped_in].mean()
    for key in ("versions", "git", "config", "wall_time_s", "experiment_hash"):
        assert record.meta[key] is not None
    assert record.meta["config"]["dataset"]["label_noise"] == 0.1


def test_rerun_skips_another_experiment_errors_overwrite_replaces(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("seed=1")
    [path] = run_job(cfg)
    stamp = path.stat().st_mtime_ns
    assert run_job(cfg) == [] and path.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match=r"overwrite=true"):
        run_job(compose_cfg("seed=1", "optim.lr=0.01"))
    assert path.stat().st_mtime_ns == stamp
    assert run_job(compose_cfg("seed=1", "optim.lr=0.01", "overwrite=true")) == [path]
    assert read_record(path).meta["config"]["optim"]["lr"] == 0.01


def test_same_seed_same_record(compose_cfg: Callable[..., DictConfig]) -> None:
    first = read_record(run_job(compose_cfg("seed=2", "trainer.deterministic=true", "name=a"))[0])
    second = read_record(run_job(compose_cfg("seed=2", "trainer.deterministic=true", "name=b"))[0])
    for key in ("subset_mask", "train_pred", "train_prob", "test_pred", "test_prob"):
        assert np.array_equal(getattr(first, key), getattr(second, key)), key


def test_diverging_run_writes_no_record(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("seed=0", "optim.lr=1e12")
    with pytest.raises(TrainingError, match=r"optim\.lr"):
        run_job(cfg)
    path = seed_record_path(cfg)
    assert not path.exists()
    assert not list(path.parent.glob("record.npz*"))


def test_bf16_mixed_precision_runs_on_cpu(compose_cfg: Callable[..., DictConfig]) -> None:
    # The GPU recipe's precision option, exercised on the CPU: Lightning autocasts to bfloat16.
    record = read_record(run_job(compose_cfg("seed=0", "trainer.precision=bf16-mixed", "trainer.max_epochs=3"))[0])
    assert record.meta["config"]["trainer"]["precision"] == "bf16-mixed"
    assert record.meta["test_acc"] > 0.5


def test_augmented_image_job_and_saved_weights_load_without_pickle(
        compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("seed=0", "model=cnn_small", "model.kwargs.hidden=32", "dataset.augment.crop_padding=1",
                      "dataset.augment.hflip=true",
                      "record.save_model=true")
    [path] = run_job(cfg)
    state = torch.load(path.parent / "model.pt", weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in state.values())


def test_logged_epoch_means_are_what_lightning_made_of_a_log_per_step(
        compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    """train/loss and train/acc, summed on the device and logged once per epoch, equal bit for bit what
    Lightning's mean reduction of a self.log per step gives (checked beside them, at pack 3)."""
    cfg = compose_cfg("seeds=[0,1,2]", "trainer.max_epochs=2", "logger=csv", "name=logged")
    original = SubsetClassifier.training_step

    def also_logged_per_step(self: SubsetClassifier, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        idx, shifts, flips = batch
        with torch.no_grad():  # the step's own logits: the weights change only after training_step
            logits = self.members(self.normalize_batch(self.x_train[idx], shifts, flips))
            y = self.y_train[idx]
            losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
            member_loss = losses.sum(1) * self.trainer.datamodule.plan.loss_weight(batch_idx)
            alive = self.alive.float()
            accuracy = (logits.argmax(2) == y).float().mean(1)
            self.log("check/loss", (member_loss * alive).sum() / alive.sum(), on_step=False, on_epoch=True)
            self.log("check/acc", (accuracy * alive).sum() / alive.sum(), on_step=False, on_epoch=True)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SubsetClassifier, "training_step", also_logged_per_step)
    run_job(cfg)
    [metrics] = (Path(cfg.paths.output_dir) / "logged").rglob("metrics.csv")
    rows = [row for row in csv.DictReader(metrics.open()) if row.get("train/loss")]
    assert len(rows) == 2
    for row in rows:
        assert (row["train/loss"], row["train/acc"]) == (row["check/loss"], row["check/acc"]), row


def test_prepared_training_inputs_are_the_normalised_batch_bit_for_bit(compose_cfg: Callable[..., DictConfig]) -> None:
    dataset = load_dataset(compose_cfg().dataset, compose_cfg().paths.data_dir)
    cfg = compose_cfg("seeds=[0,1]")
    module = SubsetClassifier(build_members(cfg, dataset, [0, 1]), cfg.optim, cfg.schedule, dataset,
                              list(cfg.dataset.normalize.mean), list(cfg.dataset.normalize.std), 0, False, False)
    module.on_fit_start()  # on the CPU: normalised once there
    idx = torch.randint(0, len(dataset.y_train), (2, 64))
    no_shift, no_flip = torch.zeros(2, 64, 2, dtype=torch.long), torch.zeros(2, 64, dtype=torch.bool)
    assert module.train_inputs is not None
    assert torch.equal(module.train_inputs[idx], module.normalize_batch(module.x_train[idx], no_shift, no_flip))
