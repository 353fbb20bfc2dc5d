import numpy as np
import pytest

from src.data.subsets import SubsetRule, subset_indices, subset_mask, subset_seed, subset_size
from src.errors import ConfigError
from src.sweep.seeds import expand_seed_ranges, seed_override


@pytest.mark.parametrize(("n", "ratio", "size"), [(4000, 0.7, 2800), (1437, 0.7, 1006), (10, 0.25, 3),
                                                  (10, 0.35, 4), (7, 1.0, 7), (3, 0.1, 0)])
def test_subset_size_rounds_half_up(n: int, ratio: float, size: int) -> None:
    assert subset_size(n, ratio) == size


def test_subset_is_deterministic_exact_and_sorted() -> None:
    for seed in range(5):
        idx = subset_indices(seed, 1437, 0.7)
        assert len(idx) == 1006 and len(np.unique(idx)) == 1006
        assert np.all(np.diff(idx) > 0)
        assert np.array_equal(idx, subset_indices(seed, 1437, 0.7))
        assert subset_mask(seed, 1437, 0.7).sum() == 1006
    assert not np.array_equal(subset_indices(0, 1437, 0.7), subset_indices(1, 1437, 0.7))


def test_fixed_expected_indices() -> None:
    # Hard-coded on 2026-11-22: a subset must be the same on every machine and NumPy version.
    assert subset_indices(0, 20, 0.5).tolist() == [1, 2, 4, 6, 8, 10, 13, 17, 18, 19]
    assert subset_indices(1, 20, 0.5).tolist() == [1, 2, 3, 4, 6, 7, 10, 14, 16, 17]
    assert subset_indices(1999, 20, 0.5).tolist() == [1, 4, 5, 6, 8, 9, 10, 14, 17, 19]
    assert subset_indices(0, 20, 0.5, salt=3).tolist() == [0, 4, 6, 7, 10, 12, 13, 14, 15, 19]


def test_salt_zero_is_the_authors_demo_draw() -> None:
    for seed in (0, 7, 123):
        demo = np.random.RandomState(seed).choice(4000, size=int(4000 * 0.7), replace=False)
        assert np.array_equal(subset_indices(seed, 4000, 0.7), np.sort(demo))


def test_salt_gives_other_subsets() -> None:
    assert not np.array_equal(subset_indices(0, 100, 0.7, salt=1), subset_indices(0, 100, 0.7))


def test_repeats_group_seeds_on_the_first_seed_s_subset() -> None:
    # repeats=2: seeds 2k and 2k+1 train the subset of seed 2k, drawn exactly as before; repeats=1 changes nothing.
    assert [subset_seed(seed, 2) for seed in range(3000, 3006)] == [3000, 3000, 3002, 3002, 3004, 3004]
    assert [subset_seed(seed, 3) for seed in range(6)] == [0, 0, 0, 3, 3, 3]
    assert [subset_seed(seed) for seed in range(4)] == [0, 1, 2, 3]
    assert np.array_equal(subset_mask(subset_seed(7, 2), 100, 0.7), subset_mask(6, 100, 0.7))
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ConfigError, match=r"subset\.repeats"):
            subset_seed(5, bad)  # type: ignore[arg-type]


def test_subset_rule_of_a_stored_config() -> None:
    assert SubsetRule.of_config(None) == SubsetRule.of_config({}) == SubsetRule("round_half_up", 1)
    assert SubsetRule.of_config({"subset": {"ratio": 0.7}}) == SubsetRule("round_half_up", 1)  # before the keys
    assert SubsetRule.of_config({"subset": {"size_rule": "floor", "repeats": 2}}) == SubsetRule("floor", 2)


@pytest.mark.parametrize(("seed", "ratio"), [(0, 0.0), (0, 1.5), (0, -0.1), (-1, 0.7), (2**32, 0.7)])
def test_bad_subset_arguments(seed: int, ratio: float) -> None:
    with pytest.raises(ConfigError):
        subset_indices(seed, 100, ratio)


def test_seed_range_expansion() -> None:
    assert expand_seed_ranges(["-m", "seed=0..1999"]) == ["-m", "seed=range(0,2000)"]
    assert expand_seed_ranges(["--multirun", "model=mlp", "seed=5..5"]) == ["--multirun", "model=mlp",
                                                                            "seed=range(5,6)"]
    assert expand_seed_ranges(["-m", "seed=range(0,3)"]) == ["-m", "seed=range(0,3)"]
    assert expand_seed_ranges(["seed=3"]) == ["seed=3"]
    assert expand_seed_ranges(["-m", "seed=0..3,10..13"]) == ["-m", "seed=0,1,2,3,10,11,12,13"]
    assert expand_seed_ranges(["-m", "seed=0..3,4"]) == ["-m", "seed=range(0,5)"]
    assert expand_seed_ranges(["-m", "seed=7,2"]) == ["-m", "seed=7,2"]


@pytest.mark.parametrize("args", [["-m", "seed=5..2"], ["seed=0..9"], ["-m", "seed=0,0,1"], ["-m", "seed=0..3,2"],
                                  ["seed=1,2"]])
def test_bad_seed_ranges(args: list[str]) -> None:
    with pytest.raises(ConfigError):
        expand_seed_ranges(args)


def test_seed_override_is_compact_when_contiguous() -> None:
    assert seed_override([3, 4, 5]) == "seed=range(3,6)"
    assert seed_override([0, 2, 3]) == "seed=0,2,3"
