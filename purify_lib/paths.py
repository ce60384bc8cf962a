"""Where a run's outputs go.

Figures of the ``cpu`` profile go to ``figures/`` (committed); other profiles' to ``<build>/figures/<profile>``.
``<build>`` is ``$PURIFY_BUILD``, else ``build/`` in the checkout.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUILD_ENV = "PURIFY_BUILD"


def build_dir() -> Path:
    return Path(os.environ.get(BUILD_ENV, PROJECT_ROOT / "build"))


def figures_dir(profile: str) -> Path:
    """``figures/`` for the committed cpu profile; ``<build>/figures/<profile>`` otherwise."""
    folder = PROJECT_ROOT / "figures" if profile == "cpu" and BUILD_ENV not in os.environ else build_dir() / "figures" / profile
    folder.mkdir(parents=True, exist_ok=True)
    return folder
