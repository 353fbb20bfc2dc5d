"""Turn-over dropout (Kobayashi et al. 2020, arXiv 2012.04207): memorization and influence from ONE run.

    python -m src.run estimator=turnover experiment=fz_mnist                 # one run, seed 0
    python -m src.run estimator=turnover experiment=fz_mnist seed=3 estimator.influence=none
    python -m src.run -m estimator=turnover experiment=fz_mnist seed=0..1    # two independent runs

Every training example i owns a fixed half m_i of the units of every hidden layer; the model trains on the
whole training set (`subset.ratio` is ignored) with example i passing only through m_i, and is then
evaluated under m_i and under the complement ~m_i, a sub-network that never saw i directly:
    mem(i)     = correct(x_i; m_i)  - correct(x_i; ~m_i)     mem_soft: the same with the probability
    infl(i, j) = correct(x'_j; m_i) - correct(x'_j; ~m_i)    of the trained label (infl_soft likewise)
`seed` fixes the initialisation, the data order and the masks, so several seeds are independent runs (a
noise floor for src.compare); a `-m` sweep over seeds runs one job per seed, never packed.

Masks (nothing stored: any example's mask is recomputed from (seed, domain, index) alone, `half_masks`):
    splitmix64(z) = z += 0x9E3779B97F4A7C15; z = (z ^ z>>30) * 0xBF58476D1CE4E5B9;
                    z = (z ^ z>>27) * 0x94D049BB133111EB; z ^ z>>31                  (all mod 2^64)
    key(u) = splitmix64(splitmix64(splitmix64(splitmix64(splitmix64(seed) + domain) + index) + point) + u)
m at mask point `point` (width w) holds the units whose key is below the (w // 2)-th smallest (counting
from 0), i.e. exactly w // 2 units unless two 64-bit keys of one example collide (probability about
w^2 / 2^65); the complement holds the other w - w // 2. Domain 0 are training examples;
domain 1 gives every test example a half of its own, used only for the accuracy of half-networks. Kept
units are scaled by 1 / KEEP = 2 as in dropout with p = 0.5 (soskek/turnover_dropout), the same for a half
and its complement, so both sub-networks see inputs of the full network's scale.

Mask points (explicit wrappers; any other model is refused by `check_turnover_config`):
- mlp (meminf_mlp), cnn_small (meminf_cnn_small): the output of every ReLU: each hidden Linear layer, each
  conv block's activation (channel masks, before its max-pool) and the head's hidden layer.
- timm ResNets (resnet18, resnet50, ...): the stem activation and every block's output (the residual stream,
  channel masks), and inside every block after the activation of each conv but the last, so no path from
  the input to the logits avoids the masks.
Then every weight, bias and BatchNorm affine parameter except the classifier's bias gets gradient from
example i only if it connects units of m_i (tests/test_turnover.py checks it on all three families).

What still leaks between the halves (the estimates are of a dropout sub-network, not of leave-one-out):
- indirectly through other examples: example j's half overlaps both m_i and ~m_i, so updates that i caused
  in m_i shape j's gradient on the units it shares with ~m_i; the complement never saw i, but it did not
  train independently of i;
- the classifier's bias is shared by all examples;
- BatchNorm (ResNets): batch statistics mix examples of both halves in a batch during training (a masked
  channel is zero for i but still in the batch mean and variance), and the running statistics used at
  evaluation average over all examples;
- weight decay and the optimizer's learning-rate schedule act on all weights each step alike: they carry
  no information about an example, but the halves are not two separately regularised models;
  trainer.gradient_clip_val (global norm) would couple the halves through the clipping factor.

Outputs (written atomically after everything is computed) in `estimator.out_dir`
(default <output_dir>/<name>/turnover/seed=<seed>/, which is also the job's directory for run.log): the
files of src.estimate that src.compare and the evaluation read, with the same keys and thresholds —
estimates.npz, memorization.csv, pairs.csv, summary.json ("estimator": "turnover", runs_used 1, model
"<model> turnover" so that src.compare treats it as another architecture, never as a noise floor, and
ratio 1.0: it trains on everything). With a single run there is no replicate: mem_se, mem_soft_se and
pair_infl_se are NaN (a noise floor comes from a second seed); n_in = n_out = 1; acc_in / acc_out are the
correctness under m_i / ~m_i. Pairs: infl >= theta_infl (hard, so infl = 1), mem >= theta_mem, same class.
topk_idx / topk_infl rank by infl_soft (the hard difference is -1, 0 or 1 and ties almost everywhere), ties
to the lower training index. No influence.npy.

Cost: training is one run on all n examples; memorization is 2 n masked forward passes; influence is
2 n_infl n_test (n_infl = all training examples, or `estimator.influence_cap` of them), done as passes of up
to `estimator.eval_rows` rows: a block of training examples' halves and complements times a batch of test
examples, the layers before the first mask point computed once per test batch and then repeated for every
mask. Wall and CPU times of the three stages are in summary.json (turnover.time_s).
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from src.data import Dataset, load_dataset, record_extras
from src.errors import ConfigError
from src.estimate import MEM_FRACTION_THRESHOLDS, TRAIN_IN_ACC_WARNING, csv_text
from src.experiment import experiment_hash, validate_config
from src.models import MLP, SmallCNN, build_model
from src.packing import Members
from src.records import write_atomic
from src.training import SubsetClassifier, SubsetDataModule, train_module

log = logging.getLogger(__name__)

SUPPORTED_TIMM_NAMES = re.compile(r"meminf_mlp|meminf_cnn_small|resnet\d+")
SUPPORTED_TEXT = "model=mlp, model=cnn_small or a timm ResNet (model=resnet18, model=resnet50)"
INFLUENCE_MODES = ("topk", "none")
TRAIN_DOMAIN, TEST_DOMAIN = 0, 1
KEEP = 0.5  # fraction of units in a half; kept units are scaled by 1 / KEEP as in dropout with p = 0.5
PROGRESS_STEPS = 10  # influence progress lines per run
_GOLDEN, _MIX1, _MIX2 = (np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


# ------------------------------------------------------------------------------------------------ masks

def splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, element-wise on uint64 (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def half_masks(seed: int, domain: int, indices: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    """Per mask point, (len(indices), width) bool: the half of each example (module docstring)."""
    example_key = splitmix64(splitmix64(splitmix64(np.array([seed], dtype=np.uint64)) + np.uint64(domain))
                             + np.asarray(indices, dtype=np.uint64))
    masks = []
    for point, width in enumerate(widths):
        point_key = splitmix64(example_key + np.uint64(point))
        keys = splitmix64(point_key[:, None] + np.arange(width, dtype=np.uint64))
        masks.append(keys < np.partition(keys, width // 2, axis=1)[:, width // 2, None])
    return masks


# ------------------------------------------------------------------------------------------ the network

MaskPoint = tuple[nn.Module, int]  # a module whose output is masked, and its width (features or channels)


def relu_points(model: nn.Module) -> list[MaskPoint]:
    """Every ReLU of a plain feed-forward net, its width that of the Linear or Conv2d before it."""
    points, width = [], 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            width = module.out_features
        elif isinstance(module, nn.Conv2d):
            width = module.out_channels
        elif isinstance(module, nn.ReLU):
            points.append((module, width))
    return points


def resnet_points(model: ResNet) -> list[MaskPoint]:
    """The stem activation, then per block the inner activations and the block's output."""
    points: list[MaskPoint] = [(model.act1, model.bn1.num_features)]
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            if isinstance(block, BasicBlock):
                points += [(block.act1, block.bn1.num_features), (block, block.bn2.num_features)]
            elif isinstance(block, Bottleneck):
                points += [(block.act1, block.bn1.num_features), (block.act2, block.bn2.num_features),
                           (block, block.bn3.num_features)]
            else:
                raise ConfigError(f"estimator=turnover does not know ResNet blocks of type {type(block).__name__}; "
                                  f"use {SUPPORTED_TEXT}")
    return points


MASK_POINTS: dict[type[nn.Module], Callable[[Any], list[MaskPoint]]] = {
    MLP: relu_points, SmallCNN: relu_points, ResNet: resnet_points}


class HalfMaskedNetwork(nn.Module):
    """A classifier whose mask points multiply their output by per-example masks (forward hooks).

    `use(masks, rows_per_mask)` sets the masks for the next forward passes: masks[p] is (G, width) bool.
    The input has G * rows_per_mask rows (rows g*r .. g*r + r-1 use mask g), or only rows_per_mask rows: the
    first mask point then repeats them for every mask, so the layers before it run once per input row.
    """

    def __init__(self, model: nn.Module, seed: int) -> None:
        super().__init__()
        builder = next((points for cls, points in MASK_POINTS.items() if isinstance(model, cls)), None)
        if builder is None:
            raise ConfigError(f"estimator=turnover supports {SUPPORTED_TEXT}, not {type(model).__name__}")
        self.model, self.seed = model, seed
        points = builder(model)
        self.widths = [width for _, width in points]
        self._masks: list[torch.Tensor] | None = None
        self._rows_per_mask = 1
        for point, (module, _) in enumerate(points):
            module.register_forward_hook(partial(self._mask_output, point))

    def halves(self, indices: np.ndarray, domain: int, device: torch.device) -> list[torch.Tensor]:
        return [torch.from_numpy(mask).to(device) for mask in half_masks(self.seed, domain, indices, self.widths)]

    def use(self, masks: list[torch.Tensor], rows_per_mask: int = 1) -> None:
        self._masks = [mask.float() / KEEP for mask in masks]
        self._rows_per_mask = rows_per_mask

    def _mask_output(self, point: int, module: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor:
        mask, rows = self._masks[point], self._rows_per_mask
        groups = mask.shape[0]
        if out.shape[0] == rows and groups > 1:
            out = out.unsqueeze(0).expand(groups, *out.shape).reshape(groups * rows, *out.shape[1:])
        if out.shape[0] != groups * rows or out.shape[1] != mask.shape[1]:
            raise RuntimeError(f"mask point {point} got output {tuple(out.shape)} for masks {tuple(mask.shape)} "
                               f"x {rows} rows")
        grouped = out.reshape(groups, rows, *out.shape[1:])
        return (grouped * mask.view(groups, 1, mask.shape[1], *([1] * (out.ndim - 2)))).reshape(out.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._masks is None:
            raise RuntimeError("HalfMaskedNetwork.use(masks) must come before the first forward")
        return self.model(x)


class TurnoverClassifier(SubsetClassifier):
    """SubsetClassifier (one member, the masked network) whose training step sets every example's half."""

    @property
    def network(self) -> HalfMaskedNetwork:
        return self.members.single

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        self.network.use(self.network.halves(batch[0][0].cpu().numpy(), TRAIN_DOMAIN, self.device))
        return super().training_step(batch, batch_idx)


# -------------------------------------------------------------------------------------------- the job

def check_turnover_config(cfg: DictConfig) -> None:
    """What a turnover job needs beyond validate_config; ConfigError with one line."""
    validate_config(cfg)
    est = cfg.estimator
    if not SUPPORTED_TIMM_NAMES.fullmatch(str(cfg.model.timm_name)):
        raise ConfigError(f"estimator=turnover supports {SUPPORTED_TEXT}, not model={cfg.model.name}; "
                          "choose one of those or estimator=subsample")
    if est.influence not in INFLUENCE_MODES:
        raise ConfigError(f"estimator.influence={est.influence!r} is unknown; use topk or none")
    cap = est.influence_cap
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ConfigError(f"estimator.influence_cap={cap!r} must be a positive integer or null (all)")
    for key in ("top_k", "eval_rows"):
        if not isinstance(est[key], int) or est[key] < 1:
            raise ConfigError(f"estimator.{key}={est[key]!r} must be a positive integer")
    if not all(np.isfinite(float(est[key])) for key in ("theta_mem", "theta_infl")):
        raise ConfigError("estimator.theta_mem and estimator.theta_infl must be finite numbers")
    if cfg.get("seeds") or cfg.perf.compile or cfg.perf.channels_last:
        raise ConfigError("estimator=turnover trains one unpacked, uncompiled model per job: drop seeds=, "
                          "perf.compile and perf.channels_last")


def fit_turnover(cfg: DictConfig, dataset: Dataset, out_dir: Path) -> TurnoverClassifier:
    """Train the masked network on the whole training set (seed: initialisation, data order, masks)."""
    seed = int(cfg.seed)
    pl.seed_everything(seed, workers=False, verbose=False)
    network = HalfMaskedNetwork(build_model(cfg.model, dataset.input_shape, dataset.num_classes), seed)
    augment = cfg.dataset.augment
    module = TurnoverClassifier(Members([network], arch_key="turnover"), cfg.optim, dataset,
                                list(cfg.dataset.normalize.mean), list(cfg.dataset.normalize.std),
                                augment.crop_padding, augment.hflip, channels_last=False)
    everything = np.ones((1, len(dataset.y_train)), dtype=bool)
    datamodule = SubsetDataModule(everything, [seed], cfg.batch_size, augment.crop_padding, augment.hflip)
    train_module(cfg, module, datamodule, out_dir, pack=1)
    return module


def _outputs(module: TurnoverClassifier, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Correctness and probability of `labels` for the rows of the forward pass on x (masks already set)."""
    prob = torch.softmax(module.network(module.prepare(x)).float(), dim=1)
    labels = labels.repeat(len(prob) // len(labels))
    return (prob.argmax(1) == labels).float().cpu(), prob.gather(1, labels[:, None])[:, 0].cpu()


@torch.inference_mode()
def own_half_outputs(module: TurnoverClassifier, split: str, domain: int, batch: int) -> dict[str, np.ndarray]:
    """Every example of `split` under its own half and under the complement: correct/prob, (n,) each."""
    module.eval()
    x, labels = getattr(module, f"x_{split}"), getattr(module, f"y_{split}")
    parts: dict[str, list[torch.Tensor]] = {"correct_own": [], "prob_own": [], "correct_flip": [], "prob_flip": []}
    for start in range(0, len(labels), batch):
        rows = slice(start, start + batch)
        own = module.network.halves(np.arange(len(labels))[rows], domain, module.device)
        for side, masks in (("own", own), ("flip", [~mask for mask in own])):
            module.network.use(masks)
            correct, prob = _outputs(module, x[rows], labels[rows])
            parts[f"correct_{side}"].append(correct)
            parts[f"prob_{side}"].append(prob)
    return {key: torch.cat(values).numpy().astype(np.float64) for key, values in parts.items()}


class RunningTopK:
    """Top-k training examples per test example by a score, over blocks of increasing training index; ties
    to the lower index (a stable sort in which earlier rows come first)."""

    def __init__(self, k: int, n_test: int) -> None:
        self.values = np.full((k, n_test), -np.inf)
        self.indices = np.full((k, n_test), -1, dtype=np.int64)

    def merge(self, train_idx: np.ndarray, scores: np.ndarray) -> None:
        values = np.concatenate([self.values, scores])
        indices = np.concatenate([self.indices, np.broadcast_to(train_idx[:, None], scores.shape)])
        best = np.argsort(-values, axis=0, kind="stable")[:len(self.values)]
        self.values, self.indices = (np.take_along_axis(a, best, axis=0) for a in (values, indices))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, values), each (n_test, k), descending; -1/NaN padding."""
        values, indices = self.values.T.astype(np.float32), self.indices.T.copy()
        values[indices < 0] = np.nan
        return indices, values


@torch.inference_mode()
def influence_pass(module: TurnoverClassifier, train_idx: np.ndarray, mem: np.ndarray, est: DictConfig,
                   train_label: np.ndarray) -> dict[str, np.ndarray]:
    """infl(i, j) for the training examples `train_idx` (increasing) and every test example: top-k by
    infl_soft and the high-influence pairs (hard infl >= theta_infl, mem >= theta_mem, same class)."""
    module.eval()
    x_test, y_test = module.x_test, module.y_test
    n_test = len(y_test)
    test_rows = max(1, min(n_test, est.eval_rows // 2))
    group = max(1, est.eval_rows // (2 * test_rows))
    test_label = y_test.cpu().numpy()
    topk = RunningTopK(int(est.top_k), n_test)
    pair_train, pair_test, pair_infl = [], [], []
    started, next_report = time.perf_counter(), 1
    for start in range(0, len(train_idx), group):
        block = train_idx[start:start + group]
        own = module.network.halves(block, TRAIN_DOMAIN, module.device)
        both = [torch.cat([mask, ~mask]) for mask in own]
        correct, prob = np.empty((2 * len(block), n_test)), np.empty((2 * len(block), n_test))
        for test_start in range(0, n_test, test_rows):
            cols = slice(test_start, test_start + test_rows)
            module.network.use(both, rows_per_mask=len(y_test[cols]))
            block_correct, block_prob = _outputs(module, x_test[cols], y_test[cols])
            correct[:, cols] = block_correct.view(2 * len(block), -1).numpy()
            prob[:, cols] = block_prob.view(2 * len(block), -1).numpy()
        infl = correct[:len(block)] - correct[len(block):]
        topk.merge(block, prob[:len(block)] - prob[len(block):])
        hits = ((infl >= est.theta_infl) & (mem[block] >= est.theta_mem)[:, None]
                & (train_label[block][:, None] == test_label[None, :]))
        rows, cols = np.nonzero(hits)
        pair_train.append(block[rows])
        pair_test.append(cols)
        pair_infl.append(infl[rows, cols])
        done = start + len(block)
        if done * PROGRESS_STEPS >= next_report * len(train_idx):
            elapsed = time.perf_counter() - started
            log.info("influence: %d/%d training examples x %d test, %.0f s, about %.0f s to go", done,
                     len(train_idx), n_test, elapsed, elapsed * (len(train_idx) - done) / done)
            next_report = done * PROGRESS_STEPS // len(train_idx) + 1
    topk_idx, topk_infl = topk.result()
    train, test, infl = (np.concatenate(parts) if parts else np.zeros(0) for parts in
                         (pair_train, pair_test, pair_infl))
    order = np.lexsort((train, test, -infl))
    return {"topk_idx": topk_idx, "topk_infl": topk_infl, "pair_train_idx": train[order].astype(np.int64),
            "pair_test_idx": test[order].astype(np.int64), "pair_infl": infl[order].astype(np.float64)}


def clock() -> np.ndarray:
    """(wall, CPU) seconds now; CPU is this process's time over all its threads, less sensitive than wall time
    to other processes on a shared machine."""
    return np.array([time.perf_counter(), time.process_time()])


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def _fraction(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def turnover_summary(cfg: DictConfig, dataset: Dataset, arrays: dict[str, np.ndarray],
                     test: dict[str, np.ndarray], widths: list[int], n_influence: int,
                     times: dict[str, dict[str, float]]) -> dict[str, Any]:
    """summary.json: the keys of src.estimate's summary that src.compare reads, plus the turnover details."""
    est, mem = cfg.estimator, arrays["mem"]
    own_acc = float(arrays["train_in_acc"][0])
    warning = None
    if own_acc < TRAIN_IN_ACC_WARNING:
        warning = (f"own-half train accuracy {own_acc:.4f} < {TRAIN_IN_ACC_WARNING}: the halves do not fit their "
                   "examples, so memorization is underestimated; train longer or lower optim.lr (experiment="
                   "fz_mnist fits at optim.lr=0.02, not at 0.1)")
    influencers = np.bincount(arrays["pair_test_idx"], minlength=len(dataset.y_test))
    forward_rows = 2 * len(mem) + 2 * n_influence * len(dataset.y_test)
    return {
        "estimator": "turnover", "runs_used": 1, "n_runs": 1, "problems_excluded": 0,
        "identical_duplicates_skipped": 0, "dataset": dataset.name, "model": f"{cfg.model.name} turnover",
        "experiment_name": str(cfg.name), "experiment_hash": experiment_hash(cfg, dataset.fingerprint),
        "data_fingerprint": dataset.fingerprint, "num_classes": dataset.num_classes, "ratio": 1.0, "salt": 0,
        "seed": int(cfg.seed), "n_train": len(mem), "n_test": len(dataset.y_test),
        "n_flipped": int(dataset.flipped_idx.size),
        "mean_test_acc": float(np.mean(arrays["test_acc"])), "mean_train_in_acc": own_acc,
        "train_in_acc_warning": warning, "examples_with_estimate": len(mem), "examples_without_estimate": 0,
        **{f"frac_mem_ge_{theta}": float(np.mean(mem >= theta)) for theta in MEM_FRACTION_THRESHOLDS},
        "memorized": int(np.sum(mem >= est.theta_mem)), "pairs": int(arrays["pair_infl"].size),
        "pair_train_examples": int(np.unique(arrays["pair_train_idx"]).size),
        "pair_test_examples": int(np.sum(influencers > 0)), "test_with_one_influencer": int(np.sum(influencers == 1)),
        "null_pair_counts": [], "expected_false_pairs": None,
        "thresholds": {"theta_mem": float(est.theta_mem), "theta_infl": float(est.theta_infl),
                       "top_k": int(est.top_k), "null_perms": 0, "seed": int(cfg.seed)},
        "influence_npy": False,
        "estimators": {
            "mem": "correct(x_i; own half m_i) - correct(x_i; complement ~m_i), one run; SE NaN (no replicate)",
            "mem_soft": "the same with the probability of the trained label",
            "pairs": "infl >= theta_infl and mem >= theta_mem and same trained class; infl = correct(x'_j; m_i) "
                     "- correct(x'_j; ~m_i)",
            "topk": "ranked by infl_soft (probability difference), ties to the lower training index",
            "nan": "SEs are NaN: one run has no replicate; run a second seed for a noise floor"},
        "turnover": {
            "masks": "splitmix64 of (seed, domain, index, mask point, unit); exactly width // 2 units per half "
                     "(src/turnover.py)", "scale": 1 / KEEP, "mask_widths": widths,
            "influence": str(est.influence), "influence_train_examples": n_influence,
            "test_acc_half": float(test["correct_own"].mean()),
            "test_acc_complement": float(test["correct_flip"].mean()),
            "train_acc_own_half": float(arrays["acc_in"].mean()),
            "train_acc_complement": float(arrays["acc_out"].mean()),
            "train_acc_own_half_flipped": _fraction(arrays["acc_in"][dataset.flipped_idx]),
            "train_acc_complement_flipped": _fraction(arrays["acc_out"][dataset.flipped_idx]),
            "masked_forward_rows": forward_rows, "time_s": times,
            "leaks": "indirect (other examples' halves overlap both), classifier bias, BatchNorm batch and "
                     "running statistics, weight decay acts on all weights (src/turnover.py docstring)"},
    }


def estimate_turnover(module: TurnoverClassifier, dataset: Dataset, cfg: DictConfig,
                      train_time: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays of estimates.npz (src.estimate's keys) and the summary, from a trained module;
    `train_time`: (wall, CPU) seconds of the training, for the summary."""
    est, n, batch = cfg.estimator, len(dataset.y_train), int(cfg.dataset.eval_batch_size)
    started = clock()
    train = own_half_outputs(module, "train", TRAIN_DOMAIN, batch)
    test = own_half_outputs(module, "test", TEST_DOMAIN, batch)
    mem = train["correct_own"] - train["correct_flip"]
    memorized = clock()
    n_influence = 0 if est.influence == "none" else min(n, est.influence_cap or n)
    if n_influence:
        influence = influence_pass(module, np.arange(n_influence), mem, est, dataset.y_train)
    else:
        influence = {"topk_idx": np.full((len(dataset.y_test), est.top_k), -1, dtype=np.int64),
                     "topk_infl": np.full((len(dataset.y_test), est.top_k), np.nan, dtype=np.float32),
                     **{key: np.zeros(0, dtype=np.int64) for key in ("pair_train_idx", "pair_test_idx")},
                     "pair_infl": np.zeros(0)}
    done = clock()
    flipped = np.zeros(n, dtype=bool)
    flipped[dataset.flipped_idx] = True
    arrays = {
        "mem": mem, "mem_se": _nan(n), "mem_soft": train["prob_own"] - train["prob_flip"], "mem_soft_se": _nan(n),
        "n_in": np.ones(n, dtype=np.int64), "n_out": np.ones(n, dtype=np.int64),
        "acc_in": train["correct_own"], "acc_out": train["correct_flip"], "orig_label": dataset.y_train_orig,
        "flipped": flipped, "train_label": dataset.y_train, "test_label": dataset.y_test, **influence,
        "pair_infl_se": _nan(len(influence["pair_infl"])), "seeds": np.array([int(cfg.seed)], dtype=np.int64),
        "test_acc": np.array([(test["correct_own"].mean() + test["correct_flip"].mean()) / 2]),
        "train_in_acc": np.array([train["correct_own"].mean()]),
    }
    stages = {"train": train_time, "memorization": memorized - started, "influence": done - memorized,
              "total": train_time + done - started}
    times = {stage: {"wall": round(float(wall), 3), "cpu": round(float(cpu), 3)}
             for stage, (wall, cpu) in stages.items()}
    summary = turnover_summary(cfg, dataset, arrays, test, module.network.widths, n_influence, times)
    arrays["summary"] = np.array(json.dumps(summary, allow_nan=False))
    arrays.update({f"extra_{name}": np.asarray(values) for name, values in record_extras(dataset).items()})
    return arrays, summary


MEMORIZATION_COLUMNS = ("mem", "mem_se", "mem_soft", "mem_soft_se", "n_in", "n_out", "acc_in", "acc_out")


def write_turnover_outputs(out_dir: Path, arrays: dict[str, np.ndarray], summary: dict[str, Any]) -> list[Path]:
    """estimates.npz, memorization.csv, pairs.csv, summary.json: serialised first, then each written atomically."""
    n = len(arrays["mem"])
    memorization = {"index": np.arange(n), "label": arrays["train_label"], "orig_label": arrays["orig_label"],
                    "flipped": arrays["flipped"], **{key: arrays[key] for key in MEMORIZATION_COLUMNS},
                    **{key[len("extra_"):]: values for key, values in arrays.items()
                       if key.startswith("extra_train_")}}
    influencers = np.bincount(arrays["pair_test_idx"], minlength=len(arrays["test_label"]))
    pairs = {"test_index": arrays["pair_test_idx"], "train_index": arrays["pair_train_idx"],
             "label": arrays["test_label"][arrays["pair_test_idx"]], "infl": arrays["pair_infl"],
             "infl_se": arrays["pair_infl_se"], "mem": arrays["mem"][arrays["pair_train_idx"]],
             "influencers_of_test": influencers[arrays["pair_test_idx"]]}
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    payloads = {"estimates.npz": buffer.getvalue(), "memorization.csv": csv_text(memorization).encode(),
                "pairs.csv": csv_text(pairs).encode(),
                "summary.json": (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode()}
    return [write_atomic(out_dir / name, lambda handle, data=data: handle.write(data))
            for name, data in payloads.items()]


def run_turnover_job(cfg: DictConfig) -> list[Path]:
    """Train one turn-over dropout model on the whole training set, estimate, write the estimates dir."""
    started = clock()
    check_turnover_config(cfg)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    out_dir = Path(cfg.estimator.out_dir)
    log.info("turnover seed=%d: %d training examples (all; subset.ratio is not used), model %s, influence %s",
             cfg.seed, len(dataset.y_train), cfg.model.name, cfg.estimator.influence)
    module = fit_turnover(cfg, dataset, out_dir)
    arrays, summary = estimate_turnover(module, dataset, cfg, clock() - started)
    written = write_turnover_outputs(out_dir, arrays, summary)
    details = summary["turnover"]
    if summary["train_in_acc_warning"]:
        log.warning("%s", summary["train_in_acc_warning"])
    log.info("turnover seed=%d: test acc of halves %.4f / complements %.4f, train acc own half %.4f / "
             "complement %.4f; %d memorized (mem >= %g), %d pairs; seconds %s; wrote %s", cfg.seed,
             details["test_acc_half"], details["test_acc_complement"], details["train_acc_own_half"],
             details["train_acc_complement"], summary["memorized"], summary["thresholds"]["theta_mem"],
             summary["pairs"], details["time_s"], out_dir)
    return written
