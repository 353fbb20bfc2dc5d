"""The turn-over job: train the half-masked network on the whole training set, evaluate every example under its
half and the complement, the influence passes, and the estimates written through the contract."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from src.config.checks import check_device, config_hash, validate_config
from src.contracts.estimates import Estimates, Thresholds, write_estimates
from src.data.dataset import Dataset, load_dataset, record_extras
from src.errors import ConfigError
from src.estimators.subsample.topk import TopK
from src.estimators.turnover.masks import TEST_DOMAIN, TRAIN_DOMAIN
from src.estimators.turnover.network import SUPPORTED_TEXT, HalfMaskedNetwork, TurnoverClassifier
from src.estimators.turnover.summary import clock, turnover_summary
from src.models.build import build_model
from src.models.packing import Members
from src.training.epochs import SubsetDataModule
from src.training.trainer import job_logger, train_module

log = logging.getLogger(__name__)

SUPPORTED_TIMM_NAMES = re.compile(r"meminf_mlp|meminf_cnn_small|resnet\d+")
INFLUENCE_MODES = ("topk", "none")
PROGRESS_STEPS = 10  # influence progress lines per run


def thresholds(est: DictConfig) -> Thresholds:
    """The paper's thresholds, or `estimator.theta_mem`, `.theta_infl`, `.top_k` where given."""
    return Thresholds(**{key: est[key] for key in ("theta_mem", "theta_infl", "top_k") if est.get(key) is not None})


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
    if not isinstance(est.eval_rows, int) or isinstance(est.eval_rows, bool) or est.eval_rows < 1:
        raise ConfigError(f"estimator.eval_rows={est.eval_rows!r} must be a positive integer")
    thresholds(est).validate()
    if cfg.get("seeds") or cfg.perf.compile or cfg.perf.channels_last is True:  # (auto: contiguous here)
        raise ConfigError("estimator=turnover trains one unpacked, uncompiled model per job: drop seeds=, "
                          "perf.compile and perf.channels_last")


def fit_turnover(cfg: DictConfig, dataset: Dataset, out_dir: Path) -> TurnoverClassifier:
    """Train the masked network on the whole training set (seed: initialisation, data order, masks)."""
    seed = int(cfg.seed)
    pl.seed_everything(seed, workers=False, verbose=False)
    network = HalfMaskedNetwork(build_model(cfg.model, dataset.input_shape, dataset.num_classes), seed)
    augment = cfg.dataset.augment
    module = TurnoverClassifier(Members([network], arch_key="turnover"), cfg.optim, cfg.schedule, dataset,
                                list(cfg.dataset.normalize.mean), list(cfg.dataset.normalize.std),
                                augment.crop_padding, augment.hflip, channels_last=False)
    everything = np.ones((1, len(dataset.y_train)), dtype=bool)
    datamodule = SubsetDataModule(everything, [seed], cfg.batch_size, augment.crop_padding, augment.hflip)
    with job_logger(cfg, out_dir, [seed], config_hash(cfg, dataset.fingerprint)) as logger:
        train_module(cfg, module, datamodule, out_dir, logger, pack=1)
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
        own = module.network.halves(torch.arange(len(labels), device=module.device)[rows], domain)
        for side, masks in (("own", own), ("flip", [~mask for mask in own])):
            module.network.use(masks)
            correct, prob = _outputs(module, x[rows], labels[rows])
            parts[f"correct_{side}"].append(correct)
            parts[f"prob_{side}"].append(prob)
    return {key: torch.cat(values).numpy().astype(np.float64) for key, values in parts.items()}


@torch.inference_mode()
def influence_pass(module: TurnoverClassifier, train_idx: np.ndarray, mem: np.ndarray, eval_rows: int,
                   limits: Thresholds, train_label: np.ndarray) -> dict[str, np.ndarray]:
    """infl(i, j) for the training examples `train_idx` (increasing) and every test example: top-k by
    infl_soft and the high-influence pairs (hard infl >= theta_infl, mem >= theta_mem, same class)."""
    module.eval()
    x_test, y_test = module.x_test, module.y_test
    n_test = len(y_test)
    test_rows = max(1, min(n_test, eval_rows // 2))
    group = max(1, eval_rows // (2 * test_rows))
    test_label = y_test.cpu().numpy()
    topk = TopK(limits.top_k, n_test)
    pair_train, pair_test, pair_infl = [], [], []
    started, next_report = time.perf_counter(), 1
    for start in range(0, len(train_idx), group):
        block = train_idx[start:start + group]
        own = module.network.halves(torch.from_numpy(block).to(module.device), TRAIN_DOMAIN)
        both = [torch.cat([mask, ~mask]) for mask in own]
        correct, prob = np.empty((2 * len(block), n_test)), np.empty((2 * len(block), n_test))
        for test_start in range(0, n_test, test_rows):
            cols = slice(test_start, test_start + test_rows)
            module.network.use(both, rows_per_mask=len(y_test[cols]))
            block_correct, block_prob = _outputs(module, x_test[cols], y_test[cols])
            correct[:, cols] = block_correct.view(2 * len(block), -1).numpy()
            prob[:, cols] = block_prob.view(2 * len(block), -1).numpy()
        infl = correct[:len(block)] - correct[len(block):]
        topk.merge(block, (prob[:len(block)] - prob[len(block):]).astype(np.float32), np.ones(len(block), bool))
        hits = ((infl >= limits.theta_infl) & (mem[block] >= limits.theta_mem)[:, None]
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


def estimate_turnover(module: TurnoverClassifier, dataset: Dataset, cfg: DictConfig,
                      train_time: np.ndarray) -> Estimates:
    """The estimates of a trained module (the contract's arrays and summary); `train_time`: (wall, CPU)
    seconds of the training, for the summary."""
    est, n, batch = cfg.estimator, len(dataset.y_train), int(cfg.dataset.eval_batch_size)
    limits = thresholds(est)
    started = clock()
    train = own_half_outputs(module, "train", TRAIN_DOMAIN, batch)
    test = own_half_outputs(module, "test", TEST_DOMAIN, batch)
    mem = train["correct_own"] - train["correct_flip"]
    memorized = clock()
    n_influence = 0 if est.influence == "none" else min(n, est.influence_cap or n)
    if n_influence:
        influence = influence_pass(module, np.arange(n_influence), mem, int(est.eval_rows), limits, dataset.y_train)
    else:
        influence = {"topk_idx": np.full((len(dataset.y_test), limits.top_k), -1, dtype=np.int64),
                     "topk_infl": np.full((len(dataset.y_test), limits.top_k), np.nan, dtype=np.float32),
                     **{key: np.zeros(0, dtype=np.int64) for key in ("pair_train_idx", "pair_test_idx")},
                     "pair_infl": np.zeros(0)}
    done = clock()
    flipped = np.zeros(n, dtype=bool)
    flipped[dataset.flipped_idx] = True
    arrays = {
        "mem": mem, "mem_se": np.full(n, np.nan), "mem_soft": train["prob_own"] - train["prob_flip"],
        "mem_soft_se": np.full(n, np.nan),
        "n_in": np.ones(n, dtype=np.int64), "n_out": np.ones(n, dtype=np.int64),
        "acc_in": train["correct_own"], "acc_out": train["correct_flip"], "orig_label": dataset.y_train_orig,
        "flipped": flipped, "train_label": dataset.y_train, "test_label": dataset.y_test, **influence,
        "pair_infl_se": np.full(len(influence["pair_infl"]), np.nan),
        "seeds": np.array([int(cfg.seed)], dtype=np.int64),
        "test_acc": np.array([(test["correct_own"].mean() + test["correct_flip"].mean()) / 2]),
        "train_in_acc": np.array([train["correct_own"].mean()]),
    }
    stages = {"train": train_time, "memorization": memorized - started, "influence": done - memorized,
              "total": train_time + done - started}
    times = {stage: {"wall": round(float(wall), 3), "cpu": round(float(cpu), 3)}
             for stage, (wall, cpu) in stages.items()}
    summary = turnover_summary(cfg, dataset, arrays, test, module.network.widths, n_influence, times, limits)
    arrays.update({f"extra_{name}": np.asarray(values) for name, values in record_extras(dataset).items()})
    return Estimates(summary, arrays)


def run_turnover_job(cfg: DictConfig) -> list[Path]:
    """Train one turn-over dropout model on the whole training set, estimate, write the estimates dir."""
    started = clock()
    check_turnover_config(cfg)
    check_device(cfg.trainer)  # on the machine that trains (the launching one checks a local sweep: plan.py)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    out_dir = Path(cfg.estimator.out_dir)
    log.info("turnover seed=%d: %d training examples (all; subset.ratio is not used), model %s, influence %s",
             cfg.seed, len(dataset.y_train), cfg.model.name, cfg.estimator.influence)
    module = fit_turnover(cfg, dataset, out_dir)
    estimates = estimate_turnover(module, dataset, cfg, clock() - started)
    written = write_estimates(out_dir, estimates)
    summary = estimates.summary
    details = summary["turnover"]
    if summary["train_in_acc_warning"]:
        log.warning("%s", summary["train_in_acc_warning"])
    log.info("turnover seed=%d: test acc of halves %.4f / complements %.4f, train acc own half %.4f / "
             "complement %.4f; %d memorized (mem >= %g), %d pairs; seconds %s; wrote %s", cfg.seed,
             details["test_acc_half"], details["test_acc_complement"], details["train_acc_own_half"],
             details["train_acc_complement"], summary["memorized"], summary["thresholds"]["theta_mem"],
             summary["pairs"], details["time_s"], out_dir)
    return written
