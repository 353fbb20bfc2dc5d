"""Last-layer pipeline: penultimate features of the meminf models, the saved full-data model and its features
file, the last-layer sweep on it (same trained labels under label noise), and the comparison with its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src.analyses.lastlayer import FEATURES_NAME, WEIGHTS_NAME, compare_lastlayer, penultimate
from src.data.dataset import load_dataset
from src.estimate import main as estimate_main
from src.lastlayer import main
from src.models.build import build_model
from src.training.job import run_job
from tests.conftest import CONF, TINY

NOISE = ["dataset.label_noise=0.1", "dataset.noise_seed=3"]
SEEDS = "seeds=[0,1,2,3]"


@pytest.mark.parametrize("model", [
    {"name": "mlp", "timm_name": "meminf_mlp", "kwargs": {"hidden": [16, 8]}},
    {"name": "linear", "timm_name": "meminf_mlp", "kwargs": {"hidden": []}},
    {"name": "cnn_small", "timm_name": "meminf_cnn_small", "kwargs": {"channels": [4], "pool_grid": 2, "hidden": 8}},
    {"name": "inception_small", "timm_name": "meminf_inception_small",
     "kwargs": {"stem_channels": 4, "inception_stages": [[[2, 2]]], "downsample_channels": []}},
    {"name": "resnet", "timm_name": "resnet18"},
])
def test_penultimate_features_feed_the_last_linear_layer(model: dict) -> None:
    torch.manual_seed(0)
    net = build_model(model, (1, 8, 8), 5).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        features = penultimate(net, x)
        last = [module for module in net.modules() if isinstance(module, torch.nn.Linear)][-1]
        torch.testing.assert_close(last(features), net(x), atol=1e-5, rtol=1e-5)
    assert features.shape == (3, last.in_features)


def compose_here(root: Path, *overrides: str, base: tuple[str, ...] = tuple(TINY)) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*base, f"paths.output_dir={root}", f"paths.data_dir={root / 'data'}",
                                            *overrides])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Digits with 10% label noise: a full 4-seed sweep, features of a full-data model, a 4-seed last-layer sweep;
    the estimates of both sweeps."""
    root = tmp_path_factory.mktemp("lastlayer")
    run_job(compose_here(root, *NOISE, "name=full", SEEDS))
    assert estimate_main([str(root / "full"), "--gallery", "0", "--null-perms", "0"]) == 0
    base = [*TINY, f"paths.output_dir={root}", f"paths.data_dir={root / 'data'}", *NOISE]
    assert main(["features", *base, "--out", str(root / "features")]) == 0
    features = root / "features" / FEATURES_NAME
    # Not TINY: its dataset=digits would win over the experiment's dataset=npz.
    run_job(compose_here(root, "experiment=lastlayer_mnist", f"dataset.path={features}", *NOISE,
                         "dataset.num_classes=10", "trainer.max_epochs=2", "logger=none", SEEDS, base=()))
    assert estimate_main([str(root / "lastlayer_mnist"), "--gallery", "0", "--null-perms", "0"]) == 0
    return {"root": root, "features": features, "full": root / "full" / "estimates",
            "lastlayer": root / "lastlayer_mnist" / "estimates"}


@pytest.mark.slow
def test_saved_weights_and_features_reproduce_the_full_data_model(pipeline: dict[str, Path]) -> None:
    cfg = compose_here(pipeline["root"], *NOISE)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    state = torch.load(pipeline["features"].parent / WEIGHTS_NAME, weights_only=True)
    net = build_model(cfg.model, dataset.input_shape, dataset.num_classes).eval()
    net.load_state_dict(state)
    with np.load(pipeline["features"], allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = json.loads(str(arrays["meta"]))
    mean, std = cfg.dataset.normalize.mean[0], cfg.dataset.normalize.std[0]
    with torch.no_grad():
        logits = net((torch.from_numpy(dataset.x_test).float() * dataset.pixel_scale - mean) / std)
        head = torch.from_numpy(arrays["x_test"]) @ state["layers.5.weight"].T + state["layers.5.bias"]
    torch.testing.assert_close(head, logits, atol=1e-4, rtol=1e-4)  # the features are the head's input
    assert float(np.mean(logits.argmax(1).numpy() == dataset.y_test)) == pytest.approx(meta["test_acc"])
    assert arrays["x_train"].dtype == np.float32 and arrays["x_train"].shape == (len(dataset.y_train), 256)
    assert arrays["x_test"].shape == (len(dataset.y_test), 256)
    # original labels in the file; the flips are the source's
    assert np.array_equal(arrays["y_train"], dataset.y_train_orig) and dataset.flipped_idx.size > 0
    assert str(arrays["source_fingerprint"]) == dataset.fingerprint


@pytest.mark.slow
def test_the_lastlayer_sweep_trains_the_same_labels_and_compares(pipeline: dict[str, Path]) -> None:
    with np.load(pipeline["full"] / "estimates.npz") as full, np.load(pipeline["lastlayer"] / "estimates.npz") as last:
        assert np.array_equal(full["train_label"], last["train_label"])  # flips reproduced on the features
        assert np.array_equal(full["flipped"], last["flipped"])
        full_mem, last_mem = full["mem"], last["mem"]
    result = compare_lastlayer(pipeline["full"], pipeline["lastlayer"], [0.25])
    [row] = result["rows"]
    common = ~np.isnan(full_mem) & ~np.isnan(last_mem)
    assert row["memorized_a"] == int(np.sum(full_mem[common] >= 0.25))
    assert row["memorized_b"] == int(np.sum(last_mem[common] >= 0.25))
    assert main(["compare", str(pipeline["full"]), str(pipeline["lastlayer"]),
                 "--out", str(pipeline["root"] / "cmp")]) == 0
    assert json.loads((pipeline["root"] / "cmp" / "lastlayer_compare.json").read_text())["rows"][1]["theta"] == 0.25


@pytest.mark.slow
def test_features_of_other_data_or_labels_are_refused(pipeline: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    features = pipeline["features"]
    original = features.read_bytes()
    try:
        with np.load(features) as archive:
            arrays = {key: archive[key] for key in archive.files}
        np.savez(features, **{**arrays, "source_fingerprint": np.array("0" * 32)})
        assert main(["compare", str(pipeline["full"]), str(pipeline["lastlayer"]), "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: the last-layer features come from data 000") and err.count("\n") == 1
    finally:
        features.write_bytes(original)
    # the wrong order: the full sweep is no last-layer sweep
    assert main(["compare", str(pipeline["lastlayer"]), str(pipeline["full"]), "--out", str(tmp_path)]) == 2
    assert "is not a last-layer sweep" in capsys.readouterr().err
    assert not (tmp_path / "lastlayer_compare.json").exists()
