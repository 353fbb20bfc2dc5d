"""GPU check (issue 13 §5): packed training of small-stem resnet18 and cnn_small on one accelerator.

    .venv/bin/python benchmarks/gpu_check.py                      # one GPU, under 5 minutes (make gpu-check)
    .venv/bin/python benchmarks/gpu_check.py --tiny --device cpu  # tiny sizes, seconds on a CPU (the test)

Synthetic CIFAR-shaped data (3×32×32, 10 classes) lives in device memory; each member of a pack draws its
own batches from it (as subset models do). The models are the project's own: `src.training.job.
build_members` per seed (seed k's initialisation, the small stem from conf/model/resnet18.yaml with
`small_input_stem=true`), optimizer from conf/optim (SGD as shipped), batch size from conf/config.yaml.
Every configuration is trained eagerly at pack 1, 4 and 16 by two mechanisms:
- `vmap`: `src.models.packing.Members`, the project's packing (functional_call under vmap at P > 1);
- `grouped`: the K models fused into one module (`src.models.grouped.GroupedPack`, the project's
  `perf.packing=grouped`): each Conv2d becomes one Conv2d with groups=K (members side by side along the
  channels), each BatchNorm one over K·C channels, each Linear one batched matmul. On a GPU this is one cuDNN
  grouped convolution per layer instead of vmap's batching rules; at pack 1 it is the plain model, so it runs
  only at P > 1.
each with bf16 autocast on and off and channels_last on and off. Then only the fastest eager configuration
of each model is run again under `torch.compile`.

Per configuration, before timing: member k after CHECK_STEPS steps against seed k trained alone on the
same batches on the device, TF32 off for the check (fp32: every weight, buffer and logit within the
tolerances of tests/test_packing.py; bf16: prediction agreement against seed k alone in bf16). Timing then
continues the same pack under torch's default TF32 settings, as `trainer.precision=32-true` leaves them, for
`--budget-s` seconds. Every configuration's wall time is capped: an eager one at HARD_CAP_FACTOR x
`--budget-s`, a compiled one at `--compile-budget-s` (compilation included), past which it is abandoned as
`timeout`; the whole run stops starting configurations at `--total-budget-s` (the rest are `skipped`).
One JSON line per configuration goes to `--out` as it finishes; the table prints seconds per model for a
CIFAR-10-sized epoch and the speed-up against pack 1 vmap fp32 eager (contiguous). docs/PERFORMANCE.md says
what the numbers decide.
Exit status: 0, or 1 when a configuration failed its check or raised; 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from machine import table
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.config.compose import compose_config
from src.models.grouped import GroupedPack
from src.models.packing import SINGLE, Members
from src.training.job import build_members

IMAGE_SHAPE = (3, 32, 32)  # CIFAR-10/100
NUM_CLASSES = 10  # CIFAR-10
CIFAR_TRAIN_IMAGES = 50_000  # s/model is reported per epoch of this many images (a CIFAR-10 epoch)
MODEL_OVERRIDES: dict[str, tuple[str, ...]] = {
    # the small stem (3x3 stride-1 conv1, no max-pool) forced, as benchmarks/train_throughput.py does
    "resnet18": ("model=resnet18", "model.small_input_stem=true"),
    "cnn_small": ("model=cnn_small",),
}
# --tiny: the builders take widths, so the models shrink to a few channels (CPU in milliseconds per step)
TINY_MODEL_OVERRIDES: dict[str, tuple[str, ...]] = {
    "resnet18": ("+model.kwargs.stem_width=8", "+model.kwargs.channels=[8,16,16,16]"),
    "cnn_small": ("model.kwargs.channels=[8,8]", "model.kwargs.hidden=16"),
}
METHODS = ("vmap", "grouped")


@dataclasses.dataclass(frozen=True)
class Sizes:
    packs: tuple[int, ...]
    device_images: int  # synthetic training images held in device memory
    batch_size: int | None  # None: conf/config.yaml's batch_size
    check_steps: int  # SGD steps before member k is compared with seed k alone
    check_images: int  # images whose logits / predictions are compared
    warmup_steps: int  # untimed steps: cuDNN autotuning, the allocator, compilation
    max_timed_steps: int | None  # None: as many as the budget allows
    timing_pool: int  # distinct precomputed index batches the timed steps cycle through


# Full: 8,192 images (100 MB fp32) give 64 distinct batches of 128; 3 check steps let momentum and BatchNorm
# statistics move; 3 warm-up steps cover cuDNN's autotuning of forward and both backward convolutions.
FULL = Sizes(packs=(1, 4, 16), device_images=8192, batch_size=None, check_steps=3, check_images=256,
             warmup_steps=3, max_timed_steps=None, timing_pool=8)
# Tiny (the test, on a CPU): a few images, 2 steps everywhere, packs 1 and 2.
TINY = Sizes(packs=(1, 2), device_images=64, batch_size=8, check_steps=2, check_images=16, warmup_steps=1,
             max_timed_steps=2, timing_pool=2)

# tests/test_packing.py's tolerances for member k against seed k alone (weights after training)
FP32_ATOL, FP32_RTOL = 2e-4, 1e-3
# bf16 rounds at ~4e-3 relative, and the packed and single kernels round differently, so only predictions
# are compared; near-ties may flip, a broken pack agrees at chance (~0.1 for 10 classes).
BF16_MIN_AGREEMENT = 0.9
TIMED_MIN_STEPS = 1  # a configuration gets at least one timed step even when a step outlasts the budget
# An eager configuration (build, check, warm-up, timing) still running at this multiple of --budget-s is
# abandoned: building 16 resnet18s, 3 check and 3 warm-up steps with cuDNN autotuning fit in 2x.
HARD_CAP_FACTOR = 3.0
# Timed steps per configuration: >= 25 steps of anything under 0.1 s; 40 eager configurations, each with
# its build, check and warm-up, then fit in ~3 minutes, leaving the compiled ones their caps
DEFAULT_BUDGET_S = 2.5
DEFAULT_COMPILE_BUDGET_S = 45.0  # cap of a compiled configuration: inductor compiles resnet18 in tens of seconds
DEFAULT_TOTAL_BUDGET_S = 270.0  # the 5 minutes, less ~30 s for imports, CUDA start-up, the last config
DEFAULT_OUT = Path("outputs/gpu_check/results.jsonl")
# On a CPU shared with other processes, torch's default OpenMP threads wait for each other: machine.py measured
# 5-8x slower steps with 2 threads than 1; tiny resnet18 steps here took 1-4 s with 2 threads, 0.04 s with 1.
CPU_THREADS = 1
DATA_SEED = 1234  # synthetic images, labels and batch indices (the models are seeded by their own seed)


class ArgumentError(Exception):
    pass


class ConfigTimeout(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one `error:` line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(message)


# ------------------------------------------------------------------------------------------------ the check


@dataclasses.dataclass(frozen=True)
class Setup:
    model: str
    method: str
    pack: int
    bf16: bool
    channels_last: bool
    compile: bool = False

    def row(self) -> dict[str, Any]:
        return {"model": self.model, "method": self.method, "pack": self.pack,
                "precision": "bf16" if self.bf16 else "fp32", "channels_last": self.channels_last,
                "compile": self.compile}


@dataclasses.dataclass
class Model:
    """What one model family needs: its composed config, seeds' CPU models, references, arch key."""

    cfg: DictConfig
    seeds: list[nn.Module]  # seed k's freshly built model (CPU), copied for every configuration
    arch_key: str
    references: dict[bool, list[Reference]] = dataclasses.field(default_factory=dict)  # by bf16


@dataclasses.dataclass
class Reference:
    state: dict[str, torch.Tensor]
    logits: torch.Tensor  # (check_images, classes), eval mode


@dataclasses.dataclass
class Context:
    device: torch.device
    sizes: Sizes
    batch_size: int
    images: torch.Tensor  # (N, 3, 32, 32) on the device
    labels: torch.Tensor  # (N,)
    check_idx: torch.Tensor  # (check_steps, max pack, B)
    timing_idx: torch.Tensor  # (timing_pool, max pack, B)
    check_images: torch.Tensor
    models: dict[str, Model]


DATASET = SimpleNamespace(input_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, is_image=True)  # for build_members


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def tf32(enabled: bool | None) -> Iterator[None]:
    """TF32 for matmuls and cuDNN convs set (None: torch's defaults, left alone), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextmanager
def hard_cap(seconds: float) -> Iterator[None]:
    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        raise ConfigTimeout(f"still running after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def per_member_channels_last(t: torch.Tensor) -> torch.Tensor:
    """(P, N, C, H, W) with each member's (N, C, H, W) in channels_last memory order."""
    return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


class Pack:
    """One configuration's K models on the device: a train step, eval logits and member k's state."""

    def __init__(self, ctx: Context, setup: Setup, seeds: Sequence[int]) -> None:
        self.ctx, self.setup = ctx, setup
        family = ctx.models[setup.model]
        models = [copy.deepcopy(family.seeds[k]) for k in seeds]
        cl = setup.channels_last
        if setup.method == "grouped":
            self.module: nn.Module = GroupedPack(models, cl).to(ctx.device)
            self.train_forward: Callable[..., torch.Tensor] = (
                torch.compile(self.module) if setup.compile else self.module)
        else:
            if cl and len(models) == 1:  # as build_members does for perf.channels_last at pack=1
                models[0] = models[0].to(memory_format=torch.channels_last)
            mechanism = SINGLE if len(models) == 1 else "vmap"
            self.module = Members(models, family.arch_key + f"|cl={cl}", mechanism,
                                  compile="default" if setup.compile else None).to(
                ctx.device)
            if cl and len(models) > 1:  # the project refuses this; the benchmark times it
                for param in self.module.network.stacked:
                    if param.dim() == 5:
                        param.data = per_member_channels_last(param.data)
            self.train_forward = self.module
        self.optimizer = instantiate(family.cfg.optim)(self.module.parameters())

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.ctx.images[idx], self.ctx.labels[idx]  # (K, B, 3, 32, 32), (K, B)
        if self.setup.channels_last and self.setup.method == "vmap":  # GroupedPack lays out its own input
            x = per_member_channels_last(x)  # at pack 1, Members takes x[0]: channels_last as build_members'
        return x, y

    def step(self, idx: torch.Tensor) -> None:
        x, y = self.batch(idx)
        with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.setup.bf16):
            logits = self.train_forward(x)
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
        self.optimizer.zero_grad(set_to_none=True)
        losses.mean(1).sum().backward()  # a sum of per-member losses: no gradient mixes members
        self.optimizer.step()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits of every member on shared images, by the eager forward (compiled or not)."""
        module = self.module
        saved = getattr(module, "compile", None)
        if isinstance(module, Members):
            module.compile = None
        if self.setup.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        module.eval()
        try:
            with torch.no_grad(), torch.autocast(self.ctx.device.type, dtype=torch.bfloat16,
                                                 enabled=self.setup.bf16):
                return module(x, shared_input=True).float()
        finally:
            module.train()
            if isinstance(module, Members):
                module.compile = saved

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        return self.module.member_state_dict(k)


def train_for_check(ctx: Context, setup: Setup, seeds: Sequence[int]) -> Pack:
    pack = Pack(ctx, setup, seeds)
    with tf32(False):
        for step in range(ctx.sizes.check_steps):
            pack.step(ctx.check_idx[step, list(seeds)])
    return pack


def reference(ctx: Context, model: str, bf16: bool, k: int) -> Reference:
    """Seed k trained alone (pack 1, plain module, contiguous, eager) on its check batches, TF32 off."""
    alone = train_for_check(ctx, Setup(model, "vmap", 1, bf16, False), [k])
    with tf32(False):
        logits = alone.logits(ctx.check_images)[0]
    return Reference(alone.member_state_dict(0), logits)


def check(ctx: Context, setup: Setup) -> tuple[Pack, dict[str, Any]]:
    """This configuration's pack after the check steps, and member k against seed k alone, for every k."""
    family = ctx.models[setup.model]
    pack = train_for_check(ctx, setup, range(setup.pack))
    return pack, compare(ctx, setup, pack, family)


def compare(ctx: Context, setup: Setup, pack: Pack, family: Model) -> dict[str, Any]:
    with tf32(False):
        logits = pack.logits(ctx.check_images)
    if not setup.bf16:
        worst_state, worst_logit, passed = 0.0, 0.0, True
        for k, ref in enumerate(family.references[False][:setup.pack]):
            state = pack.member_state_dict(k)
            if sorted(state) != sorted(ref.state):
                return {"kind": "fp32", "passed": False, "why": "member state names differ from seed k alone"}
            for name, value in ref.state.items():
                got, want = state[name].float(), value.float()
                worst_state = max(worst_state, (got - want).abs().max().item())
                passed &= torch.allclose(got, want, rtol=FP32_RTOL, atol=FP32_ATOL)
            worst_logit = max(worst_logit, (logits[k] - ref.logits).abs().max().item())
            passed &= torch.allclose(logits[k], ref.logits, rtol=FP32_RTOL, atol=FP32_ATOL)
        return {"kind": "fp32", "passed": bool(passed), "max_abs_state_diff": worst_state,
                "max_abs_logit_diff": worst_logit, "atol": FP32_ATOL, "rtol": FP32_RTOL}
    predictions = logits.argmax(-1)
    agreement = min((predictions[k] == ref.logits.argmax(-1)).float().mean().item()
                    for k, ref in enumerate(family.references[True][:setup.pack]))
    vs_fp32 = min((predictions[k] == ref.logits.argmax(-1)).float().mean().item()
                  for k, ref in enumerate(family.references[False][:setup.pack]))
    return {"kind": "bf16", "passed": agreement >= BF16_MIN_AGREEMENT, "min_agreement": agreement,
            "min_agreement_vs_fp32_alone": vs_fp32, "threshold": BF16_MIN_AGREEMENT}


def timed(ctx: Context, setup: Setup, pack: Pack, budget_s: float) -> dict[str, Any]:
    """Warm-up, then timed steps until budget_s is spent; s per step.

    The pack continues from its check steps: the weights do not change the step's cost, and a compiled
    forward is not compiled twice.
    """
    pool, sizes = ctx.timing_idx[:, :setup.pack], ctx.sizes
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    warm_start = time.perf_counter()
    for step in range(sizes.warmup_steps):
        pack.step(pool[step % sizes.timing_pool])
    sync(ctx.device)
    warmup_s = time.perf_counter() - warm_start
    steps, chunk, start = 0, 1, time.perf_counter()
    while True:
        for _ in range(chunk):
            pack.step(pool[steps % sizes.timing_pool])
            steps += 1
        sync(ctx.device)
        now = time.perf_counter()
        left = budget_s - (now - start)
        if steps >= TIMED_MIN_STEPS and (left <= 0 or (sizes.max_timed_steps and steps >= sizes.max_timed_steps)):
            break
        per_step = (now - start) / steps
        chunk = max(1, min(2 * chunk, int(left / per_step)))  # doubling, never past the budget
        if sizes.max_timed_steps:
            chunk = min(chunk, sizes.max_timed_steps - steps)
    s_per_step = (time.perf_counter() - start) / steps
    steps_per_epoch = math.ceil(CIFAR_TRAIN_IMAGES / ctx.batch_size)
    result = {"s_per_step": s_per_step, "timed_steps": steps, "warmup_s": warmup_s,
              "s_per_model_epoch": s_per_step * steps_per_epoch / setup.pack}
    if ctx.device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
    return result


def run_setup(ctx: Context, setup: Setup, budget_s: float, cap_s: float) -> dict[str, Any]:
    """One configuration: check, then time for budget_s; all of it abandoned (status timeout) at cap_s."""
    started = time.perf_counter()
    line: dict[str, Any] = {**setup.row(), "budget_s": budget_s, "cap_s": cap_s}
    try:
        with hard_cap(cap_s):
            pack, line["check"] = check(ctx, setup)
            line["check_s"] = time.perf_counter() - started
            line.update(timed(ctx, setup, pack, budget_s))
        line["status"] = "ok"
    except ConfigTimeout as err:
        line.update(status="timeout", why=str(err))
    except Exception as err:  # out of memory, an unsupported layer, a compiler error: this line says which
        line.update(status="error", why=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    line["wall_s"] = time.perf_counter() - started
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return line


# ------------------------------------------------------------------------------------------------ the run


def eager_setups(models: Sequence[str], packs: Sequence[int]) -> list[Setup]:
    """Every eager configuration, pack 1 vmap fp32 contiguous (the baseline) first for each model."""
    return [Setup(model, method, pack, bf16, cl)
            for model in models for method in METHODS for pack in packs
            if not (method == "grouped" and pack == 1)  # the grouped pack of one model is the model
            for bf16 in (False, True) for cl in (False, True)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda (default when available), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (packs 1, 2; few images; 2 steps)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"timed seconds per configuration; an eager one is capped at {HARD_CAP_FACTOR:g}x this")
    parser.add_argument("--compile-budget-s", type=float, default=DEFAULT_COMPILE_BUDGET_S,
                        help="each compiled configuration's cap (compilation included)")
    parser.add_argument("--total-budget-s", type=float, default=DEFAULT_TOTAL_BUDGET_S,
                        help="the whole run's cap; configurations past it are written as skipped")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="compile the best eager configuration per model (auto: on, off with --tiny)")
    parser.add_argument("--models", default=",".join(MODEL_OVERRIDES), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch threads on a CPU device (default {CPU_THREADS}); the GPU run leaves them")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON lines, one per configuration")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise ArgumentError("--threads must be a positive integer")
    for name in ("budget_s", "compile_budget_s", "total_budget_s"):
        if not getattr(args, name) > 0:
            raise ArgumentError(f"--{name.replace('_', '-')} must be a positive number of seconds")
    args.models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(args.models) - set(MODEL_OVERRIDES))
    if unknown or not args.models:
        raise ArgumentError(f"--models {','.join(unknown)}: choose from {','.join(MODEL_OVERRIDES)}")
    args.device = resolve_device(args.device)
    return args


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ArgumentError(f"--device {name}: not a device name (use cuda, cuda:N or cpu)") from err
    if device.type not in ("cuda", "cpu"):
        raise ArgumentError(f"--device {name}: this check runs on cuda or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"--device {name}: CUDA is not available here (torch {torch.__version__}, "
                            f"built for CUDA {torch.version.cuda or 'none'}, {torch.cuda.device_count()} GPUs)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ArgumentError(f"--device {name}: only {torch.cuda.device_count()} GPUs")
    return device


def build_context(args: argparse.Namespace, sizes: Sizes) -> Context:
    device, max_pack = args.device, max(sizes.packs)
    models: dict[str, Model] = {}
    batch_size = sizes.batch_size
    for name in args.models:
        overrides = [*MODEL_OVERRIDES[name], *(TINY_MODEL_OVERRIDES[name] if args.tiny else ()),
                     "perf.channels_last=false", "perf.compile=false"]
        cfg = compose_config(overrides)
        batch_size = batch_size or int(cfg.batch_size)
        seeds = [build_members(cfg, DATASET, [k]).single for k in range(max_pack)]  # seed k as if alone
        arch_key = json.dumps([OmegaConf.to_container(cfg.model, resolve=True), IMAGE_SHAPE, NUM_CLASSES])
        models[name] = Model(cfg, seeds, arch_key)
    generator = torch.Generator().manual_seed(DATA_SEED)
    n = sizes.device_images
    images = torch.randn(n, *IMAGE_SHAPE, generator=generator)
    labels = torch.randint(NUM_CLASSES, (n,), generator=generator)
    check_idx = torch.randint(n, (sizes.check_steps, max_pack, batch_size), generator=generator)
    timing_idx = torch.randint(n, (sizes.timing_pool, max_pack, batch_size), generator=generator)
    check_images = torch.randn(sizes.check_images, *IMAGE_SHAPE, generator=generator)
    return Context(device, sizes, batch_size, images.to(device), labels.to(device), check_idx.to(device),
                   timing_idx.to(device), check_images.to(device), models)


def environment(device: torch.device) -> dict[str, Any]:
    env = {"device": str(device), "torch": torch.__version__,
           "tf32_when_timing": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                "cudnn": torch.backends.cudnn.allow_tf32}}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["threads"] = torch.get_num_threads()
    return env


def print_table(lines: Sequence[dict[str, Any]]) -> None:
    headers = ["model", "method", "pack", "precision", "channels_last", "compile", "s/model (50k-image epoch)",
               "speed-up", "check", "status"]
    rows = []
    for line in lines:
        check_text = "-"
        if "check" in line:
            result = line["check"]
            detail = (f"{result['max_abs_state_diff']:.1e}" if result["kind"] == "fp32" and "max_abs_state_diff"
                      in result else f"agree {result['min_agreement']:.2f}" if result["kind"] == "bf16" else "")
            check_text = ("ok " if result["passed"] else "FAIL ") + detail
        s_model = f"{line['s_per_model_epoch']:.3f}" if "s_per_model_epoch" in line else "-"
        speedup = f"{line['speedup']:.2f}x" if line.get("speedup") else "-"
        rows.append([line["model"], line["method"], line["pack"], line["precision"],
                     "on" if line["channels_last"] else "off", "on" if line["compile"] else "off", s_model,
                     speedup, check_text, line["status"]])
    print(table(headers, rows))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ArgumentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    sizes = TINY if args.tiny else FULL
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)
        torch.backends.cudnn.benchmark = True  # as trainer=gpu sets it (cuDNN autotuning)
    else:
        torch.set_num_threads(args.threads or CPU_THREADS)
    compile_on = args.compile == "on" or (args.compile == "auto" and not args.tiny)
    env = environment(args.device)
    print(f"gpu_check: {env}, tiny={args.tiny}, packs {sizes.packs}, out {args.out}", flush=True)
    ctx = build_context(args, sizes)
    for name, family in ctx.models.items():
        for bf16 in (False, True):
            family.references[bf16] = [reference(ctx, name, bf16, k) for k in range(max(sizes.packs))]
    print(f"gpu_check: models and references ready after {time.perf_counter() - started:.1f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines: list[dict[str, Any]] = []
    compile_reserve = args.compile_budget_s * len(args.models) if compile_on else 0.0
    with args.out.open("w") as out:
        def emit(line: dict[str, Any]) -> None:
            base = next((b for b in [*lines, line] if b["model"] == line["model"] and b["method"] == "vmap"
                         and b["pack"] == 1 and b["precision"] == "fp32" and not b["channels_last"]
                         and not b["compile"] and "s_per_model_epoch" in b), None)
            if base is not None and "s_per_model_epoch" in line:
                line["speedup"] = base["s_per_model_epoch"] / line["s_per_model_epoch"]
            line.update(env=env, tiny=args.tiny)
            lines.append(line)
            out.write(json.dumps(line) + "\n")
            out.flush()
            print(f"  {line['model']} {line['method']} pack={line['pack']} {line['precision']} "
                  f"channels_last={line['channels_last']} compile={line['compile']}: {line['status']} "
                  f"{line.get('s_per_model_epoch', float('nan')):.3f} s/model", flush=True)

        def run_or_skip(setup: Setup, cap_s: float, deadline_s: float) -> None:
            left = deadline_s - (time.perf_counter() - started)
            if left < args.budget_s:
                emit({**setup.row(), "status": "skipped", "why": f"total budget: {left:.1f} s left"})
            else:
                emit(run_setup(ctx, setup, args.budget_s, min(cap_s, left)))

        for setup in eager_setups(args.models, sizes.packs):
            run_or_skip(setup, HARD_CAP_FACTOR * args.budget_s, args.total_budget_s - compile_reserve)
        for name in args.models:
            passed = [ln for ln in lines if ln["model"] == name and ln["status"] == "ok" and ln["check"]["passed"]]
            best = min(passed, key=lambda ln: ln["s_per_model_epoch"], default=None)
            if best is None:
                continue
            setup = Setup(name, best["method"], best["pack"], best["precision"] == "bf16", best["channels_last"],
                          compile=True)
            if compile_on:
                run_or_skip(setup, args.compile_budget_s, args.total_budget_s)
            else:
                emit({**setup.row(), "status": "skipped", "why": "--compile off (the default with --tiny)"})
    print_table(lines)
    for name in args.models:
        done = [ln for ln in lines if ln["model"] == name and ln["status"] == "ok" and ln["check"]["passed"]]
        if done:
            best = min(done, key=lambda ln: ln["s_per_model_epoch"])
            print(f"best {name}: {best['method']} pack={best['pack']} {best['precision']} "
                  f"channels_last={best['channels_last']} compile={best['compile']}: "
                  f"{best['s_per_model_epoch']:.3f} s/model per 50k-image epoch, {best.get('speedup', 1):.2f}x")
    failed = [ln for ln in lines if ln["status"] == "error" or (ln["status"] == "ok" and not ln["check"]["passed"])]
    print(f"gpu_check: {len(lines)} configurations in {time.perf_counter() - started:.1f} s, "
          f"{len(failed)} failed; lines in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
