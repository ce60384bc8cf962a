"""The record every output carries: what makes a result reproducible (commit, versions, machine, device,
profile, parameters, seeds and the hashes of the victims used)."""
from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from .paths import PROJECT_ROOT


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
