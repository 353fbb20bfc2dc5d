"""Training throughput of subset models: seconds per model through `run_job` at pack=1 and pack=P.

    .venv/bin/python benchmarks/train_throughput.py                 # full run (~11 min on 2 idle cores)
    .venv/bin/python benchmarks/train_throughput.py --quick         # ~2 min
    .venv/bin/python benchmarks/train_throughput.py --workloads fz_mnist --threads 1
    .venv/bin/python benchmarks/train_throughput.py --end-to-end    # issue 13 §4, ~3 min: see end_to_end_table
    .venv/bin/python benchmarks/train_throughput.py --workloads cnn_small,resnet18 --quick --packing grouped,vmap \
        --rounds 3                                                      # issue 21 §2: grouped vs vmap vs P=1

For each workload, s/model through `src.training.job.run_job` (the real Lightning path: data, model
building, Trainer.fit, evaluation of every train and test example, record writing), against
- a hand-written loop doing the same training arithmetic with no framework (MLP: P models stacked,
  one `torch.baddbmm` per layer; convnets: the plain PyTorch loop, models one after another), and
- the best GEMM rate of this machine, measured in the same run.
FLOP convention: `FlopCounterMode` over one real training step (`Trainer.fit` of one batch of the real
module, forward and backward: the first layer computes no input gradient) and over the real evaluation pass;
it counts 2 FLOPs per multiply-add of matmuls and convolutions (bias, activations, pooling, BatchNorm, loss
and optimizer are not counted). GFLOP/s counts training FLOPs only, divided by the whole s/model, which also
holds evaluation (forward over all train + test examples) and the fixed costs of a job. A table of where a
packed fz_mnist job's time goes follows.
Every P > 1 runs with each `--packing` (perf.packing: how the pack runs as one, src/models/packing.py).
The machine is shared: each ratio is taken within one run, each timing starts at a quiet moment and
reports the cores other processes used meanwhile ("others' cores", the most of any round), rounds alternate
every configuration and the table gives each one's median round.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from end_to_end import LAUNCHER, launch
from end_to_end import breakdown_rows as sweep_breakdown_rows
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from machine import busy_cores_s, table, wait_for_quiet
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

import src.run  # noqa: F401  registers the meminf_job_dir resolver that conf/hydra uses
from src.data.dataset import load_dataset
from src.data.subsets import subset_mask, subset_seed, subset_size
from src.models.build import build_model
from src.training import job, trainer

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
MISSING = object()
T = TypeVar("T")


@dataclass(frozen=True)
class Workload:
    name: str
    overrides: tuple[str, ...]
    packs: tuple[int, ...]
    epochs: int
    repeats: int  # rounds of every P (hand loop and run_job side by side); the table gives the median round
    images: tuple[int, int] | None = None  # synthetic 3x32x32 npz (n_train, n_test); None: the config's data


# Sizes fit ~11 min on 2 idle cores (measured 643 s). The convnets get a few hundred images and one
# epoch: per model, through run_job, cnn_small takes ~1.4 s at P=1 and ~2.2 s at P>=4 on 1,000 + 200
# images, resnet18 (small stem) ~17 s at P=1 and ~21 s at P=2, 4 on 400 + 100 images, so the full
# P range of fz_mnist would take hours for resnet18; per-model times scale with the data.
WORKLOADS = {
    "fz_mnist": Workload("fz_mnist", ("experiment=fz_mnist",), (1, 2, 4, 8, 16, 32), epochs=10, repeats=2),
    "cnn_small": Workload("cnn_small", ("model=cnn_small",), (1, 2, 4, 8, 16, 32), epochs=1, repeats=1,
                          images=(1000, 200)),
    "resnet18": Workload("resnet18", ("model=resnet18", "model.small_input_stem=true"), (1, 2, 4), epochs=1,
                         repeats=1, images=(400, 100)),
}
COMPILES = {"off": (False,), "on": (True,), "both": (False, True)}  # --compile: perf.compile values of every run
QUICK_PACKS = {"fz_mnist": (1, 4, 16), "cnn_small": (1, 4), "resnet18": (1, 2)}


def quick(workload: Workload) -> Workload:
    images = None if workload.images is None else (workload.images[0] // 2, workload.images[1] // 2)
    return replace(workload, packs=QUICK_PACKS[workload.name], epochs=max(1, workload.epochs // 3), repeats=1,
                   images=images)


# ------------------------------------------------------------------------------------------------ helpers


def compose_cfg(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def seeds_override(pack: int, first: int = 0) -> str:
    seeds = list(range(first, first + pack))
    return f"seed={first}" if pack == 1 else "seeds=[" + ",".join(map(str, seeds)) + "]"


def write_images(path: Path, n_train: int, n_test: int) -> Path:
    """Random uint8 3x32x32 images with 10 classes (throughput does not depend on the pixel values)."""
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
             y_train=rng.integers(0, 10, n_train), x_test=rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
             y_test=rng.integers(0, 10, n_test))
    return path


def best_rate(flops: float, call: Callable[[], Any], min_s: float = 0.2, rounds: int = 3) -> float:
    """GFLOP/s of the fastest of `rounds` timed batches of calls (each batch runs >= min_s)."""
    call()
    best = 0.0
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_s or calls == 0:
            call()
            calls += 1
        best = max(best, flops * calls / elapsed / 1e9)
    return best


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


QUIET_CORES = 0.15  # a timing during which others used more than this beyond the cores torch leaves free is retried
RETRY_BUDGET_S = [300.0]  # seconds of the whole run that retries of contended timings may use
QUIET_WAIT_S = [60.0]  # seconds each timing waits for a quiet moment (--quiet-wait-s)


def spare_cores() -> int:
    """Cores torch does not use (with --threads 1, another process may use one without slowing us)."""
    return max(0, (os.cpu_count() or 1) - torch.get_num_threads())


def wait_for_quiet_here(threshold: float = 0.3) -> None:
    """wait_for_quiet for at most --quiet-wait-s, with the cores torch leaves free allowed to be busy."""
    wait_for_quiet(QUIET_WAIT_S[0], threshold + spare_cores())


def timed_call(func: Callable[[], T], retries: int = 2) -> tuple[T, float]:
    """func() after a quiet moment, and the cores other processes used meanwhile (mean over its wall time).

    Retried while others used more than QUIET_CORES and the retry budget lasts; the least contended
    attempt is returned.
    """
    attempts: list[tuple[float, int, T]] = []
    for attempt in range(retries + 1):
        wait_for_quiet_here()
        busy, own, start = busy_cores_s(), own_cpu_s(), time.perf_counter()
        result = func()
        elapsed = time.perf_counter() - start
        others = max(0.0, (busy_cores_s() - busy) - (own_cpu_s() - own)) / elapsed
        attempts.append((others, attempt, result))
        if others < QUIET_CORES + spare_cores() or RETRY_BUDGET_S[0] < elapsed:
            break
        RETRY_BUDGET_S[0] -= elapsed
        print(f"  (other processes used {others:.2f} cores: timing again)", flush=True)
    others, _, result = min(attempts, key=lambda item: item[:2])
    return result, others


# ------------------------------------------------------------------------------------------------ GEMM


def gemm_rates() -> list[tuple[str, float]]:
    """Best GFLOP/s of torch.bmm / torch.mm on the MLP's shapes (P=16, B=128) and big square ones."""
    shapes = [  # (batch or 0 for mm, m, k, n)
        (16, 128, 784, 512), (16, 128, 512, 256), (16, 128, 256, 10),  # forward of the 3 layers at P=16
        (16, 784, 128, 512), (16, 128, 256, 512),  # layer-1 weight gradient, layer-2 input gradient
        (0, 128, 784, 512),  # one model's first layer, B=128
        (0, 1024, 1024, 1024), (0, 2048, 2048, 2048), (0, 4096, 4096, 4096), (16, 512, 512, 512),
    ]
    rates = []
    for batch, m, k, n in shapes:
        a, b = (torch.randn(batch, m, k), torch.randn(batch, k, n)) if batch else (torch.randn(m, k), torch.randn(k, n))
        op = torch.bmm if batch else torch.mm
        label = f"{op.__name__} ({batch}, {m}x{k} @ {k}x{n})" if batch else f"mm {m}x{k} @ {k}x{n}"
        wait_for_quiet_here()
        rates.append((label, best_rate(2.0 * max(batch, 1) * m * k * n, lambda a=a, b=b, op=op: op(a, b))))
    return rates


# ------------------------------------------------------------------------------------------ hand-written loops


def hand_mlp(pack: int, n: int, dims: Sequence[int], batch: int, epochs: int, classes: int, optim_cfg: DictConfig,
             evaluate: int = 0, eval_batch: int = 1) -> float:
    """s/model: P MLPs as stacked (P, in, out) weights, one baddbmm per layer, the `optim` config's optimizer;
    then, with `evaluate`, a forward pass of that many examples shared by the P models (as run_job evaluates).

    Each step gathers a (P, B, in) batch by index from a pool of n examples, as run_job does: a sliced
    view would be 17x slower (measured: baddbmm's backward on a non-contiguous batch view).
    """
    pool, labels = torch.randn(max(n, evaluate), dims[0]), torch.randint(0, classes, (n,))
    weights = [(torch.randn(pack, i, o) * i ** -0.5).requires_grad_() for i, o in itertools.pairwise(dims)]
    biases = [torch.zeros(pack, 1, o, requires_grad=True) for o in dims[1:]]
    optimizer = instantiate(optim_cfg)(weights + biases)

    def forward(x: torch.Tensor) -> torch.Tensor:
        for layer, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            x = torch.baddbmm(bias, x, weight)
            x = torch.relu_(x) if layer < len(weights) - 1 else x
        return x

    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.stack([torch.randperm(n) for _ in range(pack)])
        for first in range(0, n, batch):
            idx = order[:, first:first + batch]
            logits = forward(pool[idx])
            loss = F.cross_entropy(logits.flatten(0, 1), labels[idx].flatten(), reduction="none").view(pack, -1)
            optimizer.zero_grad()
            loss.mean(1).sum().backward()
            optimizer.step()
    with torch.no_grad():
        for first in range(0, evaluate, eval_batch):
            forward(pool[first:first + eval_batch].expand(pack, -1, -1)).argmax(2)
    return (time.perf_counter() - start) / pack


def hand_sequential(cfg: DictConfig, models: int, n: int, batch: int, epochs: int) -> float:
    """s/model: the plain PyTorch loop (model, SGD momentum 0.9, cross-entropy), models one after another."""
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    shape, classes = dataset.input_shape, dataset.num_classes
    pool, labels = torch.randn(n, *shape), torch.randint(0, classes, (n,))
    start = time.perf_counter()
    for seed in range(models):
        torch.manual_seed(seed)
        model = build_model(cfg.model, shape, classes).train()
        optimizer = instantiate(cfg.optim)(model.parameters())
        for _ in range(epochs):
            order = torch.randperm(n)
            for first in range(0, n, batch):
                idx = order[first:first + batch]
                loss = F.cross_entropy(model(pool[idx]), labels[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return (time.perf_counter() - start) / models


# ------------------------------------------------------------------------------------------------ run_job


@dataclass(frozen=True)
class Flops:
    """FLOPs of one model, counted by FlopCounterMode on the real module (pack=1)."""

    train_example: float  # one example of one training step: forward and backward
    evaluation: float  # the evaluation pass of run_job: every train and test example, forward only
    train_examples: int  # example-steps of training (subset size x epochs)

    @property
    def training(self) -> float:
        return self.train_example * self.train_examples

    @property
    def total(self) -> float:
        return self.training + self.evaluation


def counted_flops(base: Sequence[str], out: Path) -> Flops:
    """A real Trainer.fit of one batch (seed 0) under FlopCounterMode, then run_job's evaluation pass under it.

    Matmul FLOPs are linear in the batch, so one full batch gives the cost per example-step.
    """
    cfg = compose_cfg([*base, "seed=0", "logger=none", f"paths.output_dir={out}", "name=flop_count",
                       "+trainer.limit_train_batches=1"])
    epochs, cfg.trainer.max_epochs = int(cfg.trainer.max_epochs), 1  # one step in all
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    mask = subset_mask(subset_seed(0, cfg.subset.repeats), len(dataset.y_train), cfg.subset.ratio,
                       cfg.subset.salt, cfg.subset.size_rule)
    with FlopCounterMode(display=False) as step:
        module = job.fit(cfg, dataset, [0], mask[None])
    with FlopCounterMode(display=False) as evaluation:
        for split in ("train", "test"):
            module.evaluate(split, int(cfg.dataset.eval_batch_size))
    shutil.rmtree(out / "flop_count", ignore_errors=True)  # the job directory fit made, if any
    n = int(mask.sum())
    return Flops(step.get_total_flops() / min(int(cfg.batch_size), n), evaluation.get_total_flops(),
                 n * epochs)


def time_run_job(base: Sequence[str], pack: int, out: Path, name: str) -> float:
    """s/model of one fresh job of `pack` seeds (new sweep directory, removed afterwards)."""
    cfg = compose_cfg([*base, seeds_override(pack), "logger=none", f"paths.output_dir={out}", f"name={name}"])
    start = time.perf_counter()
    written = job.run_job(cfg)
    elapsed = time.perf_counter() - start
    assert len(written) == pack, f"{name}: {len(written)} records for {pack} seeds"
    shutil.rmtree(out / name)
    return elapsed / pack


@contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = vars(owner).get(name, MISSING)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if original is MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


def timed(totals: dict[str, float], key: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start
    return wrapper


def job_breakdown(base: Sequence[str], pack: int, out: Path, name: str) -> dict[str, float]:
    """Seconds per part of one real run_job: its own functions wrapped with timers, nothing else changed."""
    totals: dict[str, float] = defaultdict(float)
    marks: dict[str, float] = {}
    classifier = job.SubsetClassifier
    # training_step holds the forward, the loss, the record scores' on_step and Lightning's log calls; the
    # optimizer's arithmetic is torch.optim.sgd.sgd (SGD.step calls it after the closure: no overlap)
    wraps = [(job, "load_dataset"), (job, "build_members"), (trainer, "make_trainer"),
             (pl.Trainer, "fit"), (classifier, "evaluate"), (job, "member_record"), (job, "write_record"),
             (classifier, "training_step"), (classifier, "log"), (classifier, "backward"),
             (sys.modules[torch.optim.SGD.__module__], "sgd"), (torch.optim.Optimizer, "zero_grad")]
    with ExitStack() as stack:
        for hook, mark in (("on_train_start", "start"), ("on_train_end", "end")):
            stamp = lambda self, mark=mark: marks.__setitem__(mark, time.perf_counter())  # noqa: E731
            stack.enter_context(patched(classifier, hook, stamp))
        for owner, attr in wraps:
            stack.enter_context(patched(owner, attr, timed(totals, attr, getattr(owner, attr))))
        totals["total"] = time_run_job(base, pack, out, name) * pack
    totals["epochs"] = marks["end"] - marks["start"]
    return totals


def breakdown_rows(parts: dict[str, float], pack: int, hand_s: float, steps: int) -> list[list[str]]:
    fit_rest = parts["fit"] - parts["epochs"]
    in_steps = [("  forward, loss and record scores (training_step without its log calls)",
                 parts["training_step"] - parts["log"]),
                ("  Lightning's self.log in training_step", parts["log"]),
                ("  backward", parts["backward"]),
                ("  optimizer arithmetic (torch.optim.sgd.sgd)", parts["sgd"]),
                ("  zero_grad", parts["zero_grad"])]
    framework = parts["epochs"] - sum(seconds for _, seconds in in_steps)
    named = [("model building (build_members, P models)", parts["build_members"]),
             ("Trainer construction (make_trainer)", parts["make_trainer"]),
             ("Trainer.fit: epoch loop (on_train_start..on_train_end), of which", parts["epochs"]),
             *in_steps,
             (f"  framework per step: loop, batches, hooks, scheduler ({1e3 * framework / steps:.2f} ms/step)",
              framework),
             ("Trainer.fit: set-up and teardown around the epochs", fit_rest),
             ("evaluation (every train + test example, P models)", parts["evaluate"]),
             ("record building (member_record)", parts["member_record"]),
             ("record writing (write_record)", parts["write_record"]),
             ("data (load_dataset, cached in the process)", parts["load_dataset"])]
    top = [seconds for label, seconds in named if not label.startswith("  ")]
    named.append(("other (subset masks, hash, SubsetClassifier with data buffers)", parts["total"] - sum(top)))
    rows = [[label, f"{s:.3f}", f"{100 * s / parts['total']:.1f}%"] for label, s in named]
    rows.append(["total run_job", f"{parts['total']:.3f}", "100%"])
    rows.append([f"hand-written baddbmm loop, same steps, P={pack} (for the epoch loop)", f"{hand_s * pack:.3f}", ""])
    return rows


# ------------------------------------------------------------------------------------------------ driver


def median_round(rounds: list[tuple[float, float]]) -> tuple[float, float]:
    """The median s/model of (s/model, others' cores) rounds, and the most cores others used in any of them."""
    return statistics.median(s for s, _ in rounds), max(others for _, others in rounds)


def measure(workload: Workload, out: Path, best_gemm: float, packings: Sequence[str],
            compiles: Sequence[bool]) -> tuple[list[list[str]], Sequence[str]]:
    base = [*workload.overrides, f"trainer.max_epochs={workload.epochs}"]
    if workload.images:
        path = write_images(out / f"{workload.name}.npz", *workload.images)
        base += ["dataset=npz", f"dataset.path={path}", "dataset.normalize.mean=[0.5]", "dataset.normalize.std=[0.25]"]
    cfg = compose_cfg(base)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    n = subset_size(len(dataset.y_train), float(cfg.subset.ratio))
    train_flops = counted_flops(base, out).training
    hand = hand_for(workload, cfg, n)
    # Warm-up: the first job of a process pays once-per-process costs (first Trainer, git metadata) that
    # measured 7.5 s of a 9.8 s first fz_mnist job, so one small job runs untimed first.
    time_run_job([*base, "trainer.max_epochs=1", "subset.ratio=0.05"], 1, out, f"{workload.name}_warmup")
    runs = [(pack, packing, compiled) for pack in workload.packs for packing in (packings if pack > 1 else ["-"])
            for compiled in compiles]
    first_job_s = {run: compiled_warm_up(base, run, out, workload.name) for run in runs if run[2]}
    seconds: dict[tuple[int, str, bool], list[tuple[float, float]]] = defaultdict(list)  # (s/model, others' cores)
    hand_s: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for round_ in range(workload.repeats):
        for run in runs:
            pack, packing, compiled = run
            # next to run_job, under the same load
            hand_s[pack].append(timed_call(lambda pack=pack: hand(pack)) if callable(hand) else hand)
            name, how = f"{workload.name}_p{pack}_{packing}_c{int(compiled)}_r{round_}", run_overrides(run)
            seconds[run].append(timed_call(
                lambda pack=pack, name=name, how=how: time_run_job([*base, *how], pack, out, name)))
            print(f"  {workload.name} P={pack} {packing}{' compiled' if compiled else ''}: run_job "
                  f"{seconds[run][-1][0]:.3f} s/model, hand {hand_s[pack][-1][0]:.3f} s/model (others used "
                  f"{seconds[run][-1][1]:.2f} and {hand_s[pack][-1][1]:.2f} cores)", flush=True)
    rows = []
    one_at_a_time = median_round(seconds[1, "-", False] if False in compiles else seconds[1, "-", True])[0]
    for run in runs:
        pack, packing, compiled = run
        (s, others), (h, hand_others) = median_round(seconds[run]), median_round(hand_s[pack])
        rate = train_flops / s / 1e9
        rows.append([workload.name, pack, packing, "yes" if compiled else "no", f"{s:.3f}",
                     f"{one_at_a_time / s:.2f}x", f"{rate:.1f}", f"{100 * rate / best_gemm:.0f}%", f"{h:.3f}",
                     f"{100 * h / s:.0f}%", f"{max(others, hand_others):.2f}",
                     f"{first_job_s[run]:.1f}" if compiled else "-"])
    return rows, base


def run_overrides(run: tuple[int, str, bool]) -> list[str]:
    pack, packing, compiled = run
    return [*([f"perf.packing={packing}"] if pack > 1 else []), *(["perf.compile=true"] if compiled else [])]


def compiled_warm_up(base: Sequence[str], run: tuple[int, str, bool], out: Path, workload: str) -> float:
    """s/model of the first compiled job of `run` in this process, outside the rounds: it compiles the forward,
    which later jobs of the process (of the same architecture) reuse, as the jobs of a sweep do. Timed once, not
    by `timed_call`: inductor compiles in worker processes, whose cores would read as another process's and
    make it time again, warm. Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR) of an earlier run makes it
    cheaper: point it at an empty directory for a first compilation."""
    pack, packing, _ = run
    wait_for_quiet_here()
    seconds = time_run_job([*base, *run_overrides(run)], pack, out, f"{workload}_p{pack}_{packing}_compile")
    print(f"  {workload} P={pack} {packing} compiled: first job {seconds:.3f} s/model, compiling included",
          flush=True)
    return seconds


def hand_for(workload: Workload, cfg: DictConfig, n: int) -> Callable[[int], float] | tuple[float, float]:
    """The MLP's hand loop as a function of P, or the convnets' sequential loop timed once: (s/model, others).

    Models one after another: s/model does not depend on P, so it is measured once (on 1 model) and
    reused for every P: a P-model sequential loop would cost P times as long for the same figure.
    """
    batch = int(cfg.batch_size)
    if workload.name == "fz_mnist":
        dims = [784, *cfg.model.kwargs.hidden, 10]
        return lambda pack: hand_mlp(pack, n, dims, batch, workload.epochs, 10, cfg.optim)
    return timed_call(lambda: hand_sequential(cfg, 1, n, batch, workload.epochs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer P values, epochs and images")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ",".join(WORKLOADS))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's, one per core); 1 keeps ratios stable "
                             "while another process keeps a core busy")
    parser.add_argument("--end-to-end", action="store_true",
                        help="issue 13 §4: the real fz_mnist sweep command against the hand loop and the machine's "
                             "limit, in one run, and where its time goes (~3 min)")
    parser.add_argument("--seeds", type=int, default=64, help="--end-to-end: seeds of the sweep (a multiple of --pack)")
    parser.add_argument("--pack", type=int, default=16, help="--end-to-end: models per hand-loop pack")
    parser.add_argument("--repeats", type=int, default=1,
                        help="--end-to-end: sweep and hand loop pairs, back to back (the table gives medians)")
    parser.add_argument("--packing", default="auto",
                        help="comma-separated perf.packing values each P > 1 runs with: auto, grouped, vmap, baddbmm")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off",
                        help="perf.compile of every configuration: off, on, or both side by side (issue 21 §5)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every configuration (default: the "
                                                                 "workload's; the table gives medians)")
    parser.add_argument("--packs", default=None, help="comma-separated P values (default: the workload's)")
    parser.add_argument("--quiet-wait-s", type=float, default=QUIET_WAIT_S[0],
                        help="seconds each timing waits for a quiet moment (0 on a machine that is never quiet: "
                             "then compare medians of --rounds)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    QUIET_WAIT_S[0] = args.quiet_wait_s
    if args.repeats < 1 or (args.rounds is not None and args.rounds < 1):
        parser.error(f"--repeats {args.repeats}, --rounds {args.rounds}: give at least 1")
    packings = [name.strip() for name in args.packing.split(",") if name.strip()]
    packs = None if args.packs is None else tuple(int(pack) for pack in args.packs.split(","))
    if packs is not None and 1 not in packs:
        parser.error(f"--packs {args.packs}: include 1 (the speed-ups are against it)")
    if args.end_to_end:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
        with tempfile.TemporaryDirectory(prefix="meminf_bench_") as tmp:
            end_to_end_table(args.seeds, args.pack, args.threads, Path(tmp), args.repeats)
        print(f"load average at the end {os.getloadavg()}")
        return
    names = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}", flush=True)
    gemm = gemm_rates()
    best_gemm = max(rate for _, rate in gemm)
    print("\nGEMM rates (best of 3 batches of calls, >= 0.2 s each)\n")
    print(table(["shape", "GFLOP/s"], [[label, f"{rate:.1f}"] for label, rate in gemm]), flush=True)
    rows, breakdown_base = [], None
    with tempfile.TemporaryDirectory(prefix="meminf_bench_") as tmp:
        out = Path(tmp)
        for name in names:
            workload = quick(WORKLOADS[name]) if args.quick else WORKLOADS[name]
            workload = replace(workload, packs=packs or workload.packs, repeats=args.rounds or workload.repeats)
            print(f"\n{name}: P in {workload.packs}, {workload.epochs} epoch(s), {workload.repeats} round(s)",
                  flush=True)
            workload_rows, base = measure(workload, out, best_gemm, packings, COMPILES[args.compile])
            rows += workload_rows
            if name == "fz_mnist":
                breakdown_base = (base, workload_rows, workload.epochs)
        print(f"\nThroughput (best GEMM rate of this run: {best_gemm:.1f} GFLOP/s)\n")
        print(table(["workload", "P", "packing", "compiled", "s/model", "speed-up vs P=1", "GFLOP/s", "% best GEMM",
                     "hand s/model", "% of hand loop", "others' cores", "first compiled job s/model"], rows),
              flush=True)
        if breakdown_base:
            print_breakdown(*breakdown_base, out)
    print(f"\ntotal {time.perf_counter() - started:.0f} s, load average at the end {os.getloadavg()}")


def print_breakdown(base: Sequence[str], rows: list[list[Any]], epochs: int, out: Path) -> None:
    best = min(rows, key=lambda row: float(row[4]))[1]  # the P of the fastest s/model
    cfg = compose_cfg(base)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    n = subset_size(len(dataset.y_train), float(cfg.subset.ratio))
    dims, batch = [784, *cfg.model.kwargs.hidden, 10], int(cfg.batch_size)
    for pack in sorted({1, best}):
        name = f"fz_mnist_breakdown_p{pack}"
        parts, others = timed_call(lambda pack=pack, name=name: job_breakdown(base, pack, out, name))
        hand_s, hand_others = timed_call(lambda pack=pack: hand_mlp(pack, n, dims, batch, epochs, 10, cfg.optim))
        which = "fastest P of the table" if pack == best else "pack=1"
        steps = math.ceil(n / batch) * epochs
        print(f"\nWhere a fz_mnist job's time goes, P={pack} ({which}), {steps} steps; other processes used "
              f"{others:.2f} cores during the job, {hand_others:.2f} during the hand loop\n")
        print(table(["part", "s", "% of job"], breakdown_rows(parts, pack, hand_s, steps)), flush=True)


# ------------------------------------------------------------------------------------- end to end (issue 13 §4)


def end_to_end_table(seeds: int, pack: int, threads: int | None, out: Path, repeats: int) -> None:
    """In one run: the real sweep command of `seeds` fz_mnist seeds (pack=auto as shipped, records written)
    against the hand loop on the same seeds at `pack` (training and the evaluation pass) and the machine's
    limit (FLOPs per model counted on the real module / best GEMM rate), `repeats` times back to back; then where
    the last sweep's time goes."""
    base = ["experiment=fz_mnist"]
    best_gemm = max(rate for _, rate in gemm_rates())
    flops = counted_flops(base, out)
    cfg = compose_cfg(base)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    n, batch, epochs = subset_size(len(dataset.y_train), float(cfg.subset.ratio)), int(cfg.batch_size), \
        int(cfg.trainer.max_epochs)
    dims, classes = [int(np.prod(dataset.input_shape)), *cfg.model.kwargs.hidden, dataset.num_classes], \
        dataset.num_classes
    evaluated = len(dataset.y_train) + len(dataset.y_test)
    (out / "launcher.py").write_text(LAUNCHER)
    jobs = seeds // pack
    pairs = []  # (meminf s/model, hand loop s/model), measured back to back: a shared host's speed drifts
    for repeat in range(repeats):
        command = ["-m", *base, "logger=none", f"seed=0..{seeds - 1}", f"paths.output_dir={out / f'sweep{repeat}'}"]
        print(f"running python -m src.run {' '.join(command)}", flush=True)
        sweep = launch(f"meminf{repeat}", command, seeds, out, threads=threads)
        records = len(list((out / f"sweep{repeat}").rglob("record.npz")))
        assert records == seeds, f"the sweep wrote {records} records for {seeds} seeds"
        hand_s, hand_others = timed_call(lambda: sum(
            hand_mlp(pack, n, dims, batch, epochs, classes, cfg.optim, evaluated, int(cfg.dataset.eval_batch_size))
            for _ in range(jobs)) / jobs, retries=1)
        pairs.append(((sweep.ended - sweep.launched) / seeds, hand_s))
        print(f"  pair {repeat + 1}: meminf {pairs[-1][0]:.3f} s/model, hand loop {hand_s:.3f}: "
              f"{pairs[-1][0] / hand_s:.2f}x", flush=True)
    ratio = statistics.median(meminf / hand for meminf, hand in pairs)
    meminf_s, hand_s = (statistics.median(column) for column in zip(*pairs, strict=True))
    limit_s = flops.total / best_gemm / 1e9
    rows = [[f"machine's limit: FLOPs per model / best GEMM ({best_gemm:.1f} GFLOP/s)", f"{limit_s:.3f}",
             f"{limit_s / hand_s:.2f}x", f"{best_gemm:.1f}", "100%", "-"],
            [f"hand-written packed baddbmm loop, {jobs} x P={pack}, training + evaluation pass", f"{hand_s:.3f}",
             "1.00x", f"{flops.total / hand_s / 1e9:.1f}", f"{100 * limit_s / hand_s:.0f}%", f"{hand_others:.2f}"],
            [f"meminf: python -m src.run {' '.join(command[:-1])}, end to end, {records} records",
             f"{meminf_s:.3f}", f"{ratio:.2f}x", f"{flops.total / meminf_s / 1e9:.1f}",
             f"{100 * limit_s / meminf_s:.0f}%", f"{sweep.others:.2f}"]]
    print(f"\nFLOPs per model (FlopCounterMode, real module): training {flops.training / 1e9:.1f} GFLOP "
          f"({flops.train_examples} example-steps x {flops.train_example / 1e6:.3f} MFLOP), evaluation pass "
          f"{flops.evaluation / 1e9:.2f} GFLOP ({evaluated} examples), total {flops.total / 1e9:.1f} GFLOP\n")
    print(f"Medians of {repeats} back-to-back pairs (the ratio: the median of the pairs' ratios); others' cores "
          "of the last pair\n")
    print(table(["", "s/model", "/ hand loop (goal <= 1.2x)", "GFLOP/s", "fraction of the limit",
                 "others' cores"], rows), flush=True)
    print(f"\nWhere the sweep's time goes ({seeds} seeds; end_to_end.py's timestamps, mean over jobs)\n")
    print(table(["part", "s", "% of job"], sweep_breakdown_rows(sweep)), flush=True)
    time_run_job([*base, "trainer.max_epochs=1", "subset.ratio=0.05"], 1, out, "warmup")  # once-per-process costs
    parts, others = timed_call(lambda: job_breakdown(base, pack, out, "breakdown"), retries=1)
    steps = math.ceil(n / batch) * epochs
    print(f"\nInside one job in-process, P={pack}, {steps} steps (timing wrappers; other processes used "
          f"{others:.2f} cores)\n")
    print(table(["part", "s", "% of job"], breakdown_rows(parts, pack, hand_s, steps)), flush=True)


if __name__ == "__main__":
    main()
