from pathlib import Path

import numpy as np
import pytest

from src.data.dataset import apply_label_noise, fingerprint, load_dataset
from src.errors import ConfigError


def test_flips_the_requested_fraction_to_other_classes() -> None:
    y = np.repeat(np.arange(10), 1000)
    noisy, flipped = apply_label_noise(y, 10, 0.05, noise_seed=3)
    assert len(flipped) == 500 and np.all(np.diff(flipped) > 0)
    assert np.all(noisy[flipped] != y[flipped])
    untouched = np.setdiff1d(np.arange(len(y)), flipped)
    assert np.array_equal(noisy[untouched], y[untouched])


def test_new_labels_are_uniform_over_the_other_classes() -> None:
    y = np.zeros(90_000, dtype=np.int64)
    noisy, flipped = apply_label_noise(y, 10, 0.5, noise_seed=0)
    counts = np.bincount(noisy[flipped], minlength=10)
    assert counts[0] == 0
    expected = len(flipped) / 9
    # Each count is binomial; 5 standard deviations is a bound a correct implementation never reaches.
    assert np.all(np.abs(counts[1:] - expected) < 5 * np.sqrt(expected))


def test_noise_seed_not_run_seed_decides() -> None:
    y = np.arange(1000) % 10
    a, fa = apply_label_noise(y, 10, 0.1, noise_seed=1)
    b, fb = apply_label_noise(y, 10, 0.1, noise_seed=1)
    _, fc = apply_label_noise(y, 10, 0.1, noise_seed=2)
    assert np.array_equal(a, b) and np.array_equal(fa, fb)
    assert not np.array_equal(fa, fc)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError):
        apply_label_noise(np.arange(10) % 2, 2, fraction, 0)


def test_noise_is_part_of_the_fingerprint() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parent.parent / "conf/dataset/digits.yaml")
    clean = load_dataset(cfg, "unused")
    noisy = load_dataset(OmegaConf.merge(cfg, {"label_noise": 0.1}), "unused")
    assert clean.fingerprint != noisy.fingerprint
    assert len(noisy.flipped_idx) == round(0.1 * len(noisy.y_train))
    assert np.array_equal(noisy.y_train_orig, clean.y_train)
    assert fingerprint(np.arange(3)) != fingerprint(np.arange(3).astype(np.int32))
