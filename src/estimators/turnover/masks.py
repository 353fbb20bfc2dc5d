"""The half of every example: splitmix64 of (seed, domain, index, mask point, unit), nothing written
(the algorithm: src/estimators/turnover/__init__.py). Computed with torch on the indices' device, so that a
training step draws its examples' halves there without copying the batch to the host (issue 21)."""

from __future__ import annotations

import torch

TRAIN_DOMAIN, TEST_DOMAIN = 0, 1
UINT64 = 1 << 64
# The splitmix64 constants as the int64 of the same bits: torch has no uint64 shifts on CPU, and int64 addition
# and multiplication wrap to the same 64 bits as uint64's.
_GOLDEN, _MIX1, _MIX2 = (c - UINT64 if c >= 1 << 63 else c
                         for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))
_SIGN = -(1 << 63)  # int64 with only the sign bit: xor with it orders int64 bit patterns as uint64 values


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """The logical (uint64) right shift of int64 bit patterns: torch's >> on int64 copies the sign bit."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser, element-wise on int64 tensors holding uint64 bits (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def half_masks(seed: int, domain: int, indices: torch.Tensor, widths: list[int]) -> list[torch.Tensor]:
    """Per mask point, (len(indices), width) bool on the indices' device: the half of each example (module
    docstring)."""
    device = indices.device
    # torch.full, not torch.tensor([seed]): a fill on the device, no blocking copy from the host
    seed_key = splitmix64(torch.full((1,), seed, dtype=torch.int64, device=device))
    example_key = splitmix64(splitmix64(seed_key + domain) + indices.to(torch.int64))
    masks = []
    for point, width in enumerate(widths):
        point_key = splitmix64(example_key + point)
        ordered = splitmix64(point_key[:, None] + torch.arange(width, device=device)) ^ _SIGN
        # kthvalue counts from 1: the (width // 2)-th smallest key counting from 0
        threshold = ordered.kthvalue(width // 2 + 1, dim=1, keepdim=True).values
        masks.append(ordered < threshold)
    return masks
