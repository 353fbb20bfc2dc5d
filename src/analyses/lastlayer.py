"""Memorization of the last layer alone: a linear head swept on the fixed features of one full-data model.

(the command line is src/lastlayer.py)

`features` composes conf/ with the overrides (as `python -m src.run` does), trains ONE model of that recipe on
all training examples (subset.ratio=1.0, seed `seed`), and writes to --out (default
`<paths.output_dir>/<name>_features/`), atomically:
- model.pt: its weights, a plain state dict (torch.load(..., weights_only=True) into src.models.build.build_model);
- features.npz: its penultimate activations (timm's forward_features + forward_head(pre_logits=True)) for
  every training and test example, float32 (N, D), in the layout `dataset=npz` reads (x_train, y_train,
  x_test, y_test), plus `source_fingerprint` (the data fingerprint of the source data set, label noise
  included), `source_label_noise`, `source_noise_seed` and `meta` (JSON: source data set and model configs,
  seed, epochs, accuracies).
Labels: y_train holds the source's ORIGINAL labels. The features model was trained with the flipped ones, and
the last-layer sweep flips the same examples to the same labels when given the source's label_noise,
noise_seed and num_classes (the flips depend on n, num_classes, fraction and seed only: src/data.py), which
the printed sweep command passes. So mem is measured against the same trained labels in both sweeps and
the records keep which labels were flipped (a features file holding flipped labels would lose that).

`compare` reads both estimates (as `src.compare` does, whose own command refuses them: the two data sets have
different fingerprints by construction), checks that the last-layer sweep was trained on features of the
full sweep's data (the features file's `source_fingerprint` equals the full estimates' data fingerprint, and
the trained labels are equal), and reports, per --theta, the examples with mem >= theta in each, the Jaccard
of those sets, and the Pearson and Spearman correlations of mem; lastlayer_compare.json goes to --out
(default: the last-layer estimates directory).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from src.analyses.compare import compare_pair, load_input
from src.analyses.removal import sweep_config
from src.config.checks import validate_config
from src.config.compose import compose_config
from src.config.paths import sweep_dir
from src.contracts.estimates import Thresholds, check_threshold
from src.contracts.io import write_atomic
from src.errors import ConfigError, DataError, ModelError, TrainingError

FEATURES_NAME = "features.npz"
WEIGHTS_NAME = "model.pt"
COMPARE_NAME = "lastlayer_compare.json"
SOURCE_KEYS = ("source_fingerprint", "source_label_noise", "source_noise_seed", "meta")
DEFAULT_THETAS = (0.1, Thresholds.theta_mem, 0.5)
SWEEP_EXPERIMENT = "lastlayer_mnist"


# ----------------------------------------------------------------------------------------------- features

def features_config(overrides: Sequence[str]) -> DictConfig:
    """conf/ composed with `overrides`, on all the data (ratio 1.0), one unlogged model, `<name>_features`."""
    cfg = compose_config([*overrides, "logger=none"])
    cfg.subset.ratio = 1.0
    cfg.seeds = None
    cfg.name = f"{cfg.name}_features"
    validate_config(cfg)
    return cfg


def penultimate(model: Any, inputs: Any) -> Any:
    """timm's pre-logits features (B, D) of prepared inputs."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise ModelError(f"{type(model).__name__} has no forward_features/forward_head; it cannot give features")
    return model.forward_head(model.forward_features(inputs), pre_logits=True).flatten(1)


def split_features(module: Any, split: str, batch_size: int) -> np.ndarray:
    """The single model's penultimate features of every example of `split`, float32 (n, D), no augmentation."""
    import torch

    model = module.members.single
    module.eval()
    x = getattr(module, f"x_{split}")
    with torch.inference_mode():
        parts = [penultimate(model, module.prepare(x[start:start + batch_size])).float().cpu()
                 for start in range(0, len(x), batch_size)]
    return torch.cat(parts).numpy().astype(np.float32)


def features_arrays(cfg: DictConfig, dataset: Any, module: Any) -> dict[str, np.ndarray]:
    batch = int(cfg.dataset.eval_batch_size)
    train_pred, test_pred = (module.evaluate(split, batch).pred[0] for split in ("train", "test"))
    x_train, x_test = (split_features(module, split, batch) for split in ("train", "test"))
    meta = {
        "source_dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True), "seed": int(cfg.seed),
        "epochs": int(cfg.trainer.max_epochs), "feature_dim": int(x_train.shape[1]),
        "train_acc": float(np.mean(train_pred == dataset.y_train)),
        "test_acc": float(np.mean(test_pred == dataset.y_test)),
        "labels": "y_train: original labels; the sweep re-applies source_label_noise with source_noise_seed",
    }
    return {
        "x_train": x_train, "y_train": dataset.y_train_orig, "x_test": x_test, "y_test": dataset.y_test,
        "source_fingerprint": np.array(dataset.fingerprint),
        "source_label_noise": np.array(float(cfg.dataset.get("label_noise", 0.0))),
        "source_noise_seed": np.array(int(cfg.dataset.get("noise_seed", 0))),
        "meta": np.array(json.dumps(meta)),
    }


def sweep_command(features_path: Path, arrays: dict[str, np.ndarray], num_classes: int) -> str:
    return (f"python -m src.run -m experiment={SWEEP_EXPERIMENT} dataset.path={features_path.resolve()} "
            f"dataset.label_noise={float(arrays['source_label_noise'])} "
            f"dataset.noise_seed={int(arrays['source_noise_seed'])} dataset.num_classes={num_classes} seed=0..63")


def make_features(overrides: Sequence[str], out_dir: Path | None) -> Path:
    """Train the full-data model, write model.pt and features.npz; returns the features file."""
    from src.data.dataset import load_dataset
    from src.training.job import fit, save_weights

    cfg = features_config(overrides)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    out_dir = out_dir if out_dir is not None else sweep_dir(cfg)
    module = fit(cfg, dataset, [int(cfg.seed)], np.ones((1, len(dataset.y_train)), dtype=bool))
    if not bool(module.alive[0]):
        raise TrainingError("the full-data model diverged (loss not finite); lower optim.lr")
    arrays = features_arrays(cfg, dataset, module)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    save_weights(module.members.member_state_dict(0), out_dir / WEIGHTS_NAME)
    path = write_atomic(out_dir / FEATURES_NAME, lambda handle: handle.write(buffer.getvalue()))
    meta = json.loads(str(arrays["meta"]))
    print(f"features {arrays['x_train'].shape[1]}-d of {len(dataset.y_train)} train / {len(dataset.y_test)} test "
          f"examples; full-data model train acc {meta['train_acc']:.4f}, test acc {meta['test_acc']:.4f}")
    print(f"wrote {WEIGHTS_NAME}, {FEATURES_NAME} to {out_dir}")
    print(f"sweep: {sweep_command(path, arrays, dataset.num_classes)}")
    return path


# ------------------------------------------------------------------------------------------------ compare

def read_source(features_path: Path) -> dict[str, Any]:
    """The source fields of a features file (SOURCE_KEYS), plainly typed."""
    try:
        with np.load(features_path, allow_pickle=False) as archive:
            missing = [key for key in SOURCE_KEYS if key not in archive.files]
            if missing:
                raise DataError(f"{features_path}: no {', '.join(missing)}: not written by python -m src.lastlayer "
                                "features, so its source cannot be checked")
            return {"source_fingerprint": str(archive["source_fingerprint"][()]),
                    "source_label_noise": float(archive["source_label_noise"]),
                    "source_noise_seed": int(archive["source_noise_seed"]),
                    "meta": json.loads(str(archive["meta"][()]))}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{features_path}: unreadable features file ({err})") from err


def features_path_of(estimates_dir: Path, summary: dict[str, Any]) -> Path:
    """The features file a last-layer sweep was trained on (dataset.path of one of its records)."""
    dataset_cfg = sweep_config(estimates_dir, summary).get("dataset", {})
    if dataset_cfg.get("source") != "npz" or not dataset_cfg.get("path"):
        raise ConfigError(f"{estimates_dir} is not a last-layer sweep (its data set is {dataset_cfg.get('name')!r}, "
                          "not an npz features file); give the last-layer estimates second")
    return Path(dataset_cfg["path"]).expanduser()


def check_source(full: Any, last: Any, source: dict[str, Any]) -> None:
    """Refuse unless the last-layer sweep ran on features of the full sweep's data with the same trained labels."""
    if source["source_fingerprint"] != full.summary["data_fingerprint"]:
        raise DataError(f"the last-layer features come from data {source['source_fingerprint']}, the full sweep "
                        f"estimated data {full.summary['data_fingerprint']}; make the features from the full "
                        "sweep's recipe (python -m src.lastlayer features experiment=...)")
    sizes = [(key, full.summary[key], last.summary[key]) for key in ("n_train", "n_test") if
             full.summary[key] != last.summary[key]]
    if sizes:
        raise DataError(f"the sweeps differ in {sizes[0][0]} ({sizes[0][1]} vs {sizes[0][2]})")
    if not np.array_equal(full.train_label, last.train_label):
        raise DataError(f"the last-layer sweep trained other labels than the full sweep; rerun it with "
                        f"dataset.label_noise={source['source_label_noise']} "
                        f"dataset.noise_seed={source['source_noise_seed']}")


def compare_lastlayer(full_dir: Path, last_dir: Path, thetas: Sequence[float]) -> dict[str, Any]:
    for theta in thetas:
        check_threshold("--theta", theta)
    full = load_input(full_dir, "full")
    last = load_input(last_dir, "lastlayer")
    features = features_path_of(last.path, last.summary)
    check_source(full, last, read_source(features))
    keys = ("common", "pearson", "spearman", "memorized_a", "memorized_b", "memorized_both", "jaccard_mem")
    rows = []
    for theta in thetas:
        row = compare_pair(full, last, theta)
        rows.append({"theta": theta, **{key: row[key] for key in keys}})
    return {"full": str(full.path), "lastlayer": str(last.path), "features": str(features),
            "full_test_acc": full.summary["mean_test_acc"], "lastlayer_test_acc": last.summary["mean_test_acc"],
            "full_runs": full.summary["runs_used"], "lastlayer_runs": last.summary["runs_used"],
            "rows": rows, "columns": "memorized_a: full network, memorized_b: last layer (mem >= theta)"}


def format_comparison(result: dict[str, Any]) -> str:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"full network: {result['full_runs']} runs, test acc {fmt(result['full_test_acc'])}; last layer: "
             f"{result['lastlayer_runs']} runs, test acc {fmt(result['lastlayer_test_acc'])}",
             "theta  mem>=theta full  last layer  both  jaccard  pearson  spearman  (over common examples)"]
    for row in result["rows"]:
        lines.append(f"{row['theta']:<6g} {row['memorized_a']:>15} {row['memorized_b']:>11} {row['memorized_both']:>5} "
                     f"{fmt(row['jaccard_mem']):>8} {fmt(row['pearson']):>8} {fmt(row['spearman']):>9}  "
                     f"({row['common']})")
    return "\n".join(lines)


def run_compare(full_dir: Path, last_dir: Path, thetas: Sequence[float], out_dir: Path | None) -> Path:
    result = compare_lastlayer(full_dir, last_dir, thetas)
    out_dir = out_dir if out_dir is not None else Path(result["lastlayer"])
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    path = write_atomic(out_dir / COMPARE_NAME, lambda handle: handle.write(text.encode()))
    print(format_comparison(result))
    print(f"wrote {path}")
    return path
