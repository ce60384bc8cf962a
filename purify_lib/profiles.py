"""Named parameter sets used by every notebook, script and test.

- ``smoke``: the whole notebook suite in a few minutes on 2 CPU cores (CI).
- ``cpu``: the default without a GPU: width 16, all the training data, the
  whole test set, 13 epochs, the recipe chosen to fit about 10 minutes a victim on a 2-core AVX-512
  BF16 CPU (README, "How the cpu recipe was chosen", has the trials and what it does not learn; a later
  session's AMD EPYC took 14).  The notebooks' cpu defaults train two victims, so that a cold run fits
  90 minutes (README, "What cpu runs").
- ``paper``: the papers' settings (width 64, all data, BackdoorBench's 100-epoch recipe; with another
  ``dataset``, BackdoorBench's recipe for it, ``datasets/<name>.py``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace

import torch

from .data import DEFENSE_DATA
from .datasets import get_spec
from .errors import PurifyError, choose
from .train import Recipe


@dataclass(frozen=True)
class Profile:
    name: str
    width: int  # PreAct-ResNet18 first-stage channels
    train_size: int | None  # attack-training images (None: all, or all that a held-out reserve leaves)
    test_size: int | None  # test images (None: all)
    recipe: Recipe = field(default_factory=Recipe)
    # Where a defense's clean data comes from.  "train" (the papers' protocol, BackdoorBench's ``clean_train``):
    # a class-balanced share of the clean originals of the victim's own training images, which are all of the
    # training set.  "reserve": a held-out ``reserve_fraction`` of the training set that the victim never sees.
    defense_data: str = "train"
    reserve_fraction: float = 0.05  # used only with defense_data="reserve"
    model: str = "preactresnet18"
    dataset: str = "cifar10"
    # Per-defense settings on top of the budgets each defense declares for this profile's name.
    defense_settings: dict = field(default_factory=dict)
    # Test images a defense's evaluations along the way use (None: all); its final numbers always use all.
    progress_eval_size: int | None = None
    # Per-attack settings (part of the victim's key) on top of the budgets each attack declares for this profile's name.
    attack_settings: dict = field(default_factory=dict)
    # Defense seeds a claim's noise is measured over (``Section.spread``): 3, or 2 where a run must fit a sitting.
    spread_seeds: int = 3
    # Victims (and attacks' clean models) train through ``torch.compile``; part of the victim's key, as its bits differ.
    # On for cpu: a width-16 bf16 step ran 1.43x faster on a processor with AMX (1.06x without), its compile paid once a victim.
    compile_victims: bool = False

    def __post_init__(self):
        choose("defense_data", self.defense_data, DEFENSE_DATA)

    @property
    def held_out_fraction(self) -> float:
        """The share of the training set the victim does not train on: the reserve, when defenses draw from it."""
        return self.reserve_fraction if self.defense_data == "reserve" else 0.0

    def defense_params(self, name: str) -> dict:
        return dict(self.defense_settings.get(name, {}))

    def attack_params(self, name: str) -> dict:
        return dict(self.attack_settings.get(name, {}))


# Defense budgets per profile are declared by each defense (``@defense(..., cpu=(settings, reason))`` in its
# module); a profile's ``defense_settings`` override them.  The cpu budgets cut the long ones to about a minute
# each at width 16.  A defense's evaluations along the way (its curves) use 2,000 test images under cpu, its
# final numbers all 10,000: with six full evaluations FT spent about 30 of its 40 seconds evaluating (two threads).
# Attacks declare their own per-profile budgets the same way (``Attack.budgets``: IAD's and SSBA's networks).
PROFILES = {
    "smoke": Profile("smoke", width=8, train_size=2000, test_size=500,
                     recipe=Recipe(epochs=5, batch_size=128, lr=0.05, schedule="onecycle", augment=False)),
    "cpu": Profile("cpu", width=16, train_size=None, test_size=None,
                   recipe=Recipe(epochs=13, batch_size=128, lr=0.1, schedule="onecycle"),
                   progress_eval_size=2000, spread_seeds=2, compile_victims=True),
    "paper": Profile("paper", width=64, train_size=None, test_size=None, recipe=Recipe()),
}


PROFILE_ENV = "PURIFY_PROFILE"


def default_profile_name() -> str:
    """``$PURIFY_PROFILE`` when set (checked by ``get_profile``), else ``paper`` with a GPU and ``cpu`` without."""
    return os.environ.get(PROFILE_ENV) or ("paper" if torch.cuda.is_available() else "cpu")


def get_profile(name: str | Profile | None = None, **overrides) -> Profile:
    """A profile by name (default: ``paper`` with a GPU, else ``cpu``), with fields overridden."""
    if isinstance(name, Profile):
        profile = name
    else:
        profile = PROFILES[choose("profile", name or default_profile_name(), PROFILES)]
    unknown = set(overrides) - {f.name for f in fields(Profile)}
    if unknown:
        raise PurifyError(f"unknown profile setting(s) {', '.join(sorted(unknown))}; allowed: {', '.join(f.name for f in fields(Profile))}")
    if "dataset" in overrides:
        spec = get_spec(overrides["dataset"])
        if profile.name == "paper" and "recipe" not in overrides:  # the papers train each dataset with BackdoorBench's own defaults for it
            overrides["recipe"] = replace(profile.recipe, **spec.paper_recipe)
    return replace(profile, **overrides) if overrides else profile
