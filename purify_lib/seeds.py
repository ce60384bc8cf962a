"""One random stream per purpose, so that no two draws can coincide whatever their sizes or seeds.

Before this module every draw seeded a generator with a bare integer: the poison choice with the
split seed, each epoch's batch order with the recipe seed, both 0 by default.  With the dirty-label
pool of every image the two permutations were the same one, and every dirty-label victim's first
epoch began with all of its poisons in a row.  Now a draw names what it is for, and its generator's
seed is a hash of that name and its integers: ``stream("poison", split_seed)`` and
``stream("order", seed, epoch)`` are unrelated for every value of the integers.
"""
from __future__ import annotations

import hashlib

import torch


def seed_of(purpose: str, *numbers) -> int:
    """A 63-bit seed derived from ``purpose`` and ``numbers`` (SHA-256, so it is the same on every machine)."""
    return int.from_bytes(hashlib.sha256(repr((purpose, *numbers)).encode()).digest()[:8], "little") >> 1


def stream(purpose: str, *numbers, device="cpu") -> torch.Generator:
    """A generator of its own for one purpose, on ``device`` (a CPU one unless the draws happen elsewhere)."""
    return torch.Generator(device=device).manual_seed(seed_of(purpose, *numbers))


def seed_global(purpose: str, *numbers) -> None:
    """Seed PyTorch's global generator for draws that cannot take one (weight init, dropout-like draws inside modules)."""
    torch.manual_seed(seed_of(purpose, *numbers))
