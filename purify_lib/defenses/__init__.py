"""Backdoor purification methods, one module each, one entry point each.

Every module of this package is imported here, and each declares its defenses with ``@defense(...)``
(``base.py``): what data it takes, its budget per profile and the names its papers' tables use.  So
``DEFENSES`` lists them all, and adding one is adding its module.  ``purify(name, model, data,
evaluator=None, **params)`` runs any of them with its paper's defaults, after checking the name, the
parameter names and the defense data.  The PAD family takes the *poisoned training set* as ``data``
(it needs no clean data); every other method takes clean defense data.  Defenses are pure
(model, data -> model) and know nothing of the zoo: ``purify_lib.defend.defend`` runs one on a zoo
victim, with its paper's defense data and the profile's budget, and caches the result.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import PurifyError, choose
from .base import DEFENSES, Defended, Defense, defense

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def get_defense(name: str) -> Defense:
    """The registered defense ``name``; an unknown name fails with a one-line error listing the known ones."""
    return DEFENSES[choose("defense", name, DEFENSES)]


def parameters_of(name: str) -> dict:
    """The keyword parameters of a defense and their defaults."""
    return get_defense(name).parameters()


def budget(name: str, profile) -> dict:
    """The settings defense ``name`` runs with under ``profile``: its declared budget for the profile's name,
    then the profile's own ``defense_settings`` for it on top."""
    return {**get_defense(name).budget(profile.name), **profile.defense_params(name)}


def purify(name: str, model, data, evaluator=None, **params) -> Defended:
    """Run defense ``name`` on a copy of ``model``; the victim itself is left as it was."""
    allowed = parameters_of(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise PurifyError(f"unknown parameter(s) {', '.join(unknown)} for defense {name!r}; allowed: {', '.join(allowed)}")
    if len(data) == 0:
        raise PurifyError(f"defense {name!r} got an empty defense set")
    classes = int(data.labels.unique().numel())
    if classes < 2 and DEFENSES[name].data != "test":  # clipping matches logits; every other method fits labels
        raise PurifyError(f"defense {name!r} needs defense data from at least 2 classes; got {classes}")
    return DEFENSES[name](model, data, evaluator, **params)


__all__ = ["DEFENSES", "Defended", "Defense", "budget", "defense", "get_defense", "parameters_of", "purify"]
