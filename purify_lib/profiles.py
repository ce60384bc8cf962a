"""Named parameter sets used by every notebook, script and test.

- ``smoke``: the whole notebook suite in a few minutes on 2 CPU cores (CI).
- ``cpu``: the default without a GPU: width 16, all the training data, the
  whole test set, 13 epochs, the recipe that fits about 10 minutes a victim on a 2-core AVX-512
  BF16 CPU (README, "How the cpu recipe was chosen", has the trials and what it does not learn).
- ``paper``: the papers' settings (width 64, all data, BackdoorBench's 100-epoch recipe).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace

import torch

from .data import DEFENSE_DATA
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
    # Per-defense budget overrides (epochs, steps) where the papers' budgets exceed the profile's time.
    defense_settings: dict = field(default_factory=dict)
    # Test images a defense's evaluations along the way use (None: all); its final numbers always use all.
    progress_eval_size: int | None = None
    # Per-attack parameter overrides (they are part of the victim's key), where an attack's own training exceeds the profile's time.
    attack_settings: dict = field(default_factory=dict)

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


# The cpu profile cuts the long defense budgets to about a minute each at width 16 (timed on the
# earlier cpu victims: 20,000 images, fp32, the model with a final BatchNorm); the
# short ones (the FST family's 10 epochs, NAD, MM-BD) keep the papers' values.  NFT keeps its
# code's 1000 steps (about two minutes here): at 300 steps BadNets-10% kept 91% ASR, at 1000 73%.
# ANP keeps the paper's 2000 steps (about eight minutes here): at 200, BadNets-10% kept its ASR
# (95% -> 95%); at 2000, ASR fell from 90% to 43% on a retrained victim of the same key.
# PAD and PAD-FT keep MM-BD's 50 clipping epochs: with 10, its lambda never adapted (that needs epoch > 10).
# PAD-FT's head tuning takes 20 of BackdoorBench's 100 epochs: at 100 it cost 6 minutes of the 12 that
# PAD-FT took on the cpu SIG-5% victim with one thread, and notebook 05 runs it at several N_c.
# A defense's evaluations along the way (its curves) use 2,000 test images, its final numbers all
# 10,000: with six full evaluations FT spent about 30 of its 40 seconds evaluating (two threads).
# FP takes 20 of BackdoorBench's 100 epochs, as D3 does.  NC reverse-engineers with 20 of its 80 passes
# per class, the fewest at which its cost schedule acts (it first raises the cost after 5 passes at 98%
# success; at 5 passes no mask had shrunk and every class's norm sat near its start,
# figures/fidelity/nc_passes_5_20.md), and unlearns for 10 epochs; SAU runs 5 of its 100 rounds (each
# of its steps is 5 PGD steps through two models and an update, about 13 passes of a batch of 256).
# RNP keeps its own short budget.
CPU_DEFENSES = {
    "d3": {"epochs": 20},
    "fp": {"epochs": 20},
    "nc": {"reverse_epochs": 20, "epochs": 10},
    "sau": {"epochs": 5},
    "pad_ft": {"epochs": 20},
    "ft_sam": {"epochs": 10},
    "ibau": {"rounds": 3},
}
# IAD's generators at 32 channels cost about four times the width-16 victim per image, and its mask
# generator's 25 epochs alone would take longer than the victim: the cpu profile runs them at 8
# channels (about a quarter of the victim per image) and pretrains the mask for 1 epoch.  SSBA's
# encoder-decoder trains at 16 channels for 2,000 steps (BackdoorBench's 32 for about 15,000).
CPU_ATTACKS = {"iad": {"channels": 8, "mask_epochs": 1}, "ssba": {"channels": 16, "steps": 2000}}
SMOKE_DEFENSES = {
    **{name: {"epochs": 2} for name in ("ft", "lp", "fe_tuning", "ft_init", "fst", "d3", "ft_sam", "mmbd")},
    "nft": {"steps": 20},
    "pad": {"n_c": 20, "clip_epochs": 2},
    "pad_ft": {"n_c": 20, "clip_epochs": 2, "epochs": 2},
    "anp": {"steps": 10},
    "ibau": {"rounds": 1},
    "nad": {"teacher_epochs": 1, "epochs": 1},
    "fp": {"epochs": 1},
    "nc": {"reverse_epochs": 1, "epochs": 1},
    "sau": {"epochs": 1},
    "rnp": {"unlearn_epochs": 2, "recover_epochs": 2},
}

PROFILES = {
    "smoke": Profile("smoke", width=8, train_size=2000, test_size=500,
                     recipe=Recipe(epochs=5, batch_size=128, lr=0.05, schedule="onecycle", augment=False),
                     defense_settings=SMOKE_DEFENSES, attack_settings={"iad": {"channels": 4, "mask_epochs": 1},
                                                                      "ssba": {"channels": 4, "steps": 20}}),
    "cpu": Profile("cpu", width=16, train_size=None, test_size=None,
                   recipe=Recipe(epochs=13, batch_size=128, lr=0.1, schedule="onecycle"), defense_settings=CPU_DEFENSES,
                   progress_eval_size=2000, attack_settings=CPU_ATTACKS),
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
    return replace(profile, **overrides) if overrides else profile
