"""Backdoor attacks, one module each, behind the ``Attack`` interface in ``base.py``.

Every module of this package is imported here; defining an ``Attack`` subclass with a ``name`` registers it
in ``ATTACKS``, so adding an attack is adding its module.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import PurifyError, choose
from .base import ATTACKS, Attack, Poisoned

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


# Trigger sets: the attack parameters that give another paper's version of an attack.  NFT's own attacks (its
# src/data/badnets_blend.py): a grey-level 3x3 corner pattern blended at 0.6, and a uniform-noise image blended at
# 0.2, poisons drawn from the other classes.  An attack a set does not name keeps its one version.
TRIGGER_SETS = {"nft": {"badnets": {"variant": "nft", "pool": "non_target"}, "blended": {"variant": "nft", "pool": "non_target"}},
                "backdoorbench": {}}


def make_attack(name: str, **params) -> Attack:
    """Build an attack by name; unknown names or parameters fail with a one-line error."""
    cls = ATTACKS[choose("attack", name, ATTACKS)]
    try:
        return cls(**params)
    except TypeError as exc:
        raise PurifyError(f"bad parameters for attack {name!r}: {exc}") from None


__all__ = ["ATTACKS", "TRIGGER_SETS", "Attack", "Poisoned", "make_attack"]
