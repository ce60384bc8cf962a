"""Purified models cached beside the victim zoo, so no notebook runs a defense a second time.

An entry is keyed by the victim's own key, the defense, every setting, the defense data and
a digest of the defense code itself: editing any defense (or the tuning loop) makes its old
entries misses rather than stale hits.  Entries use the zoo's checkpoint format (state dict
loaded with ``weights_only=True`` after a SHA-256 check; JSON record written last) and its
file lock, so concurrent jobs on a shared filesystem run each defense once.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from pathlib import Path

import torch
from filelock import FileLock

from ..files import load_checkpoint, save_checkpoint
from ..precision import resolve_precision
from .base import Defended

# Defenses whose purified model carries activation-clipping layers the victim does not have.
CLIPPED = {"mmbd", "pad", "pad_ft"}
_CODE = [*sorted((Path(__file__).parent).glob("*.py")),
         *(Path(__file__).parent.parent / name for name in ("models.py", "metrics.py", "train.py", "data.py", "precision.py"))]


def code_digest() -> str:
    """SHA-256 over the defense modules and the code they run on (tuning loop, models, metrics, data)."""
    digest = hashlib.sha256()
    for path in _CODE:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def cached_defense(victim, name: str, settings: dict, data_spec: dict, evaluate: bool, run, folder: Path) -> Defended:
    """``run()`` (a defense call on ``victim``), or its stored result when this exact call was made before."""
    precision = resolve_precision(next(victim.model.parameters()).device)
    config = {"victim": victim.record["key"], "defense": name, "data": data_spec, "evaluate": evaluate, "code": code_digest(),
              "precision": precision,
              "settings": _jsonable({k: v for k, v in settings.items() if k not in ("poisoned", "progress")})}
    key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    label = f"{Path(victim.path).stem}--{name}-{key}"
    weights, record_path = folder / f"{label}.pt", folder / f"{label}.json"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{label}.lock")):
        if record_path.exists():
            model = copy.deepcopy(victim.model).cpu()
            if name in CLIPPED:
                from .mmbd import insert_clips

                insert_clips(model)
            try:
                record = load_checkpoint(model, weights, record_path)
                device = next(victim.model.parameters()).device
                return Defended(model.to(device).eval(), name, record["params"], record["seconds"], record["history"],
                                record["extra"], cache_hit=True)
            except Exception as exc:  # truncated or tampered: run the defense again rather than trust it
                warnings.warn(f"cached defense {weights.name} is unusable ({exc}); running it again", stacklevel=3)
        result = run()
        save_checkpoint(result.model, weights, record_path, {
            "config": config, "key": key, "params": _jsonable(result.params), "seconds": round(result.seconds, 2),
            "history": result.history, "extra": _jsonable(result.extra), "device": str(next(result.model.parameters()).device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return result
