"""Where a run's outputs go, the record every output carries, and the claim checks that close
each notebook.

- Figures of the ``cpu`` profile go to ``figures/`` (committed); other profiles' to
  ``<build>/figures/<profile>``.  ``<build>`` is ``$PURIFY_BUILD``, else ``build/`` in the checkout.
- ``run_record`` is what makes a result reproducible: commit, versions, device, profile,
  parameters, seeds and the hashes of the victims used.
- ``Claims`` prints PASS or what differed for each claim, and saves the verdicts as JSON for
  ``run_all.py``'s summary.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from .files import atomic_path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUILD_ENV = "PURIFY_BUILD"


def build_dir() -> Path:
    return Path(os.environ.get(BUILD_ENV, PROJECT_ROOT / "build"))


def figures_dir(profile: str) -> Path:
    """``figures/`` for the committed cpu profile; ``<build>/figures/<profile>`` otherwise."""
    folder = PROJECT_ROOT / "figures" if profile == "cpu" and BUILD_ENV not in os.environ else build_dir() / "figures" / profile
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it; ``unknown`` outside git.

    ``figures/`` is left out of the comparison: it holds committed outputs that a run rewrites, so
    counting it would mark every notebook after the first as dirty.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)figures"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """Versions, and the CPU facts that change float results: on CPU, a seed gives bit-identical
    weights run after run on one processor and thread count, not necessarily across them."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")), cpu)
    return {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "cpu": cpu, "threads": torch.get_num_threads(), **gpu_facts()}


def gpu_facts() -> dict:
    """The GPU, CUDA, cuDNN and driver a run used (empty without a GPU).  On a GPU a seed gives the same
    weights only with the same device, CUDA, cuDNN and driver, and not even then unless cuDNN's choice of
    algorithms is fixed (``torch.backends.cudnn.benchmark`` off, deterministic mode on)."""
    if not torch.cuda.is_available():
        return {}
    facts = {"gpu": torch.cuda.get_device_name(), "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability())),
             "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip().splitlines()
        facts["driver"] = driver[0] if driver else None
    except (OSError, subprocess.SubprocessError):
        facts["driver"] = None
    return facts


def victim_name(victim) -> str:
    """``attack:rate`` (``clean:0`` for a clean model), as run records and needs records name a victim;
    ``attack[variant]:rate`` for another paper's trigger set (NFT's)."""
    variant = getattr(victim.attack, "variant", "backdoorbench")
    name = victim.attack.name + (f"[{variant}]" if variant != "backdoorbench" else "") if victim.attack else "clean"
    return f"{name}:{victim.poison_rate:g}"


def run_record(notebook: str, profile, parameters: dict, victims=(), device=None) -> dict:
    """Everything needed to reproduce this run's outputs."""
    import numpy
    import sklearn
    import torchvision

    return {
        "notebook": notebook,
        "commit": git_commit(),
        "profile": profile.name,
        "profile_settings": {k: v for k, v in asdict(profile).items() if k != "defense_settings"},
        "parameters": parameters,
        "device": str(device) if device is not None else None,
        "versions": {**machine(), "torchvision": torchvision.__version__, "numpy": numpy.__version__,
                     "scikit-learn": sklearn.__version__},
        "victims": {victim_name(v): {"key": v.record["key"], "sha256": v.record["sha256"]}
                    for v in victims},
    }


class Claims:
    """A notebook's verdicts on its paper's claims, computed on the numbers it just produced."""

    def __init__(self, notebook: str, profile: str, record: dict | None = None):
        self.notebook, self.profile, self.record = notebook, profile, record or {}
        self.rows: list[dict] = []

    def check(self, claim: str, passed: bool, measured: str) -> bool:
        self.rows.append({"claim": claim, "passed": bool(passed), "measured": measured, "diagnosis": ""})
        return bool(passed)

    def diagnose(self, diagnosis: str) -> None:
        """Say why the last claim checked differs, from a measurement made for the purpose."""
        if not self.rows or self.rows[-1]["passed"]:
            raise ValueError("diagnose() explains the claim just checked, and only one that differs")
        self.rows[-1]["diagnosis"] = diagnosis

    def report(self) -> list[dict]:
        """Print each claim as PASS or DIFFERS with what was measured (and why, where diagnosed); save them for run_all."""
        for row in self.rows:
            print(f"{'PASS   ' if row['passed'] else 'DIFFERS'}  {row['claim']}\n         measured: {row['measured']}")
            if row["diagnosis"]:
                print(f"         diagnosis: {row['diagnosis']}")
        passed = sum(row["passed"] for row in self.rows)
        print(f"\n{passed} of {len(self.rows)} claims reproduced under profile {self.profile!r}.")
        path = build_dir() / "claims" / f"{self.notebook}.{self.profile}.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"notebook": self.notebook, "profile": self.profile, "claims": self.rows,
                                       "record": self.record}, indent=1, default=str))
        return self.rows
