"""No host round trip in a training step (issue 21 §3): the subset job with each record score, and turn-over
dropout's job, call none of the torch.Tensor methods that copy a device value to the host inside
`training_step`; curvature's epoch end draws its directions where it trains.

On a GPU each such call (`.item()`, `.cpu()`, `.numpy()`, `.tolist()`, `.to("cpu")`, `bool`/`float`/`int`/`index`
of a tensor, a Python branch on a device value) waits for every queued kernel: one per step keeps the device idle
while the host catches up. These tests run on the CPU, so they count the calls instead (wrapping those
torch.Tensor methods; the CPU profiler shows `.cpu()` only as `aten::to`) and fail if any happens inside a
step. Here the training device is the host, so a `.to(device)` in a step counts too. Syncs that no Tensor
method shows (boolean-mask indexing, `nonzero`, `torch.tensor([...], device=...)` from host values) are not
counted: `torch.cuda.set_sync_debug_mode("error")` on a GPU shows those.

Calls inside `training_step`, per step, on the tiny jobs below (digits, 8 steps an epoch, SGD):
    job                                   before (issue 21)                                         after
    subset job, default record scores     2: .to(device) of the epoch sums, made on the host        0
    subset job, every record score        2, the same                                               0
    turn-over dropout                     6: .cpu() and .numpy() of the batch's indices for its     0
                                          masks, .to(device) of its 2 masks and of the 2 epoch sums
Curvature's epoch end (its directions): before, 1 `.to(device)` a batch of its subset; after, 0.
Outside those, before and after: 3 an epoch at its end (the divergence check, the epoch's log), and 3
`.to(device)` a step (Lightning's copy of the batch to the device: host to device, no sync on a GPU).
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_lightning.strategies import Strategy

from src.data.dataset import load_dataset
from src.estimators.curvature import InputCurvature
from src.estimators.registry import RECORD_SCORES
from src.estimators.turnover import network
from src.estimators.turnover.job import fit_turnover
from src.estimators.turnover.network import HALVES_TABLE_BYTES
from src.training.job import run_job
from tests.conftest import CONF, TINY

HOST_COPIES = ("item", "cpu", "numpy", "tolist", "__bool__", "__float__", "__int__", "__index__")
STEPS_PER_EPOCH = 8  # digits: 1,006 examples at subset.ratio 0.7 in batches of 128; all 1,437 in batches of 192
SUBSET_JOB = ["trainer.max_epochs=2", "batch_size=128"]
TURNOVER_JOB = ["estimator=turnover", "trainer.max_epochs=2", "batch_size=192", "estimator.influence=none"]


class HostCopies:
    """Calls of the host-copying Tensor methods in each call of the marked functions, and outside them."""

    def __init__(self) -> None:
        self.calls: dict[str, list[Counter[str]]] = defaultdict(list)  # marked function -> per call
        self.outside: Counter[str] = Counter()
        self._current: Counter[str] | None = None

    def hit(self, name: str) -> None:
        (self.outside if self._current is None else self._current)[name] += 1

    def mark(self, monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> None:
        """Count the host copies of every call of `owner.name` apart."""
        function = getattr(owner, name)

        @functools.wraps(function)
        def marked(*args: Any, **kwargs: Any) -> Any:
            self._current = Counter()
            self.calls[name].append(self._current)
            try:
                return function(*args, **kwargs)
            finally:
                self._current = None
        monkeypatch.setattr(owner, name, marked)

    def assert_none_in(self, name: str, calls: int) -> None:
        assert len(self.calls[name]) == calls
        inside = sum(self.calls[name], Counter())
        assert not inside, f"host copies inside {name}: {dict(inside)} over {calls} calls"


def _to_host(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether Tensor.to's arguments name the CPU."""
    return any(isinstance(arg, (str, torch.device)) and torch.device(arg).type == "cpu"
               for arg in (*args, *kwargs.values()))


@pytest.fixture
def host_copies(monkeypatch: pytest.MonkeyPatch) -> HostCopies:
    """Every host-copying Tensor method counted while the test runs, and Lightning's training step marked."""
    copies = HostCopies()

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if name != "to" or _to_host(args, kwargs):
                copies.hit(name)
            return method(self, *args, **kwargs)
        return wrapper

    for name in (*HOST_COPIES, "to"):
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    copies.mark(monkeypatch, Strategy, "training_step")
    return copies


def assert_no_host_copy_in_a_step(copies: HostCopies, epochs: int) -> None:
    copies.assert_none_in("training_step", epochs * STEPS_PER_EPOCH)


def test_a_subset_job_step_with_every_record_score_copies_nothing_to_the_host(
        compose_cfg: Callable[..., Any], host_copies: HostCopies) -> None:
    scores = ",".join(RECORD_SCORES)
    assert run_job(compose_cfg(*SUBSET_JOB, f"record.scores=[{scores}]", "record.curvature.directions=2"))
    assert_no_host_copy_in_a_step(host_copies, epochs=2)


def test_curvature_draws_its_directions_where_it_trains(compose_cfg: Callable[..., Any], host_copies: HostCopies,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21's trap: the directions were drawn on the host and copied to the device at every epoch end (~126
    MB per 1,024 CIFAR images); now from a generator on the training device."""
    host_copies.mark(monkeypatch, InputCurvature, "on_epoch_end")
    assert run_job(compose_cfg(*SUBSET_JOB, "record.scores=[curvature]", "record.curvature.directions=2"))
    host_copies.assert_none_in("on_epoch_end", calls=2)


def test_an_augmented_packed_convnet_step_copies_nothing_to_the_host(compose_cfg: Callable[..., Any],
                                                                     host_copies: HostCopies) -> None:
    assert run_job(compose_cfg(*SUBSET_JOB, "model=cnn_small", "seeds=[0,1]", "dataset.augment.crop_padding=1",
                               "dataset.augment.hflip=true", "trainer.max_epochs=1"))
    assert_no_host_copy_in_a_step(host_copies, epochs=1)


@pytest.mark.parametrize("table_bytes", [HALVES_TABLE_BYTES, 0])  # halves gathered from the table; computed
def test_a_turnover_step_copies_nothing_to_the_host(tmp_path: Path, host_copies: HostCopies,
                                                    monkeypatch: pytest.MonkeyPatch, table_bytes: int) -> None:
    from hydra import compose, initialize_config_dir

    monkeypatch.setattr(network, "HALVES_TABLE_BYTES", table_bytes)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, *TURNOVER_JOB, f"paths.output_dir={tmp_path}",
                                           f"paths.data_dir={tmp_path / 'data'}"])
    module = fit_turnover(cfg, load_dataset(cfg.dataset, cfg.paths.data_dir), Path(cfg.estimator.out_dir))
    assert_no_host_copy_in_a_step(host_copies, epochs=2)
    assert (module.train_halves is None) == (table_bytes == 0)
