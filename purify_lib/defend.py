"""Defenses run on zoo victims, and their results cached beside the zoo.

``defend(victim, name)`` gives a defense its paper's defense data (a class-balanced share of the
clean originals of the victim's training images, as BackdoorBench draws it, or of a held-out reserve
where the profile says so; the poisoned training set for the PAD family) and the profile's budget, and
stores the purified model so that no notebook runs the same defense twice.  It sits one floor
above ``defenses/``, which knows nothing of the zoo.

A cache entry is keyed by the victim's own key, the defense, every setting, the defense data and
a digest of the code that defense runs (``code_digest``): editing a defense (or the tuning loop)
makes its old entries misses rather than stale hits, and adding a defense leaves the others'
valid.  Entries use the zoo's checkpoint format (state dict loaded with ``weights_only=True`` after a SHA-256 check; JSON record written last) and its
file lock, so concurrent jobs on a shared filesystem run each defense once.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
import time
import warnings
from pathlib import Path

import torch

from .defenses import DEFENSES, Defended, budget, get_defense, parameters_of, purify
from .data import ImageSet
from .errors import PurifyError
from .files import load_checkpoint, locked, save_checkpoint
from .metrics import Evaluator
from .precision import resolve_precision
from .profiles import get_profile
from .zoo import zoo_dir

# What every defense runs on; each defense adds its own module and the defense modules that one imports.
_SHARED = [Path(__file__), *(Path(__file__).parent / name for name in ("models.py", "metrics.py", "train.py", "data.py", "precision.py"))]


def code_files(name: str) -> list[Path]:
    """The code defense ``name`` runs: this module, the models, metrics, tuning and data code, its own
    module and the defense modules it imports (``base.py``'s tuning loop among them)."""
    files, stack = [], [Path(sys.modules[get_defense(name).module].__file__)]
    while stack:
        path = stack.pop()
        if path not in files:
            files.append(path)
            stack += [path.parent / f"{module}.py" for module in re.findall(r"^from \.(\w+) import", path.read_text(), re.M)]
    return _SHARED + sorted(files)


def code_digest(name: str) -> str:
    """SHA-256 over ``code_files(name)``: adding or editing one defense leaves the others' cache entries valid."""
    digest = hashlib.sha256()
    for path in code_files(name):
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


def _evaluated(record_path: Path) -> bool:
    """Whether a stored entry was made by a call that evaluated along the way; an unreadable one counts as such,
    so that loading it reports the damage and runs the defense again."""
    try:
        return bool(json.loads(record_path.read_text()).get("evaluated", True))
    except (OSError, json.JSONDecodeError):
        return True


def cached_defense(victim, name: str, settings: dict, data_spec: dict, progress_size, run, folder: Path, history: bool = True) -> Defended:
    """``run()`` (a defense call on ``victim``), or its stored result when this exact call was made before.  Whether
    the call evaluated along the way is not part of the key (the model is the same): an entry stored without
    its curves serves a call that asks for none (``history=False``), and one that does recomputes it."""
    precision = resolve_precision(next(victim.model.parameters()).device)
    config = {"victim": victim.record["key"], "defense": name, "data": data_spec, "progress_size": progress_size, "code": code_digest(name),
              "precision": precision,
              "settings": _jsonable({k: v for k, v in settings.items() if k not in ("poisoned", "progress")})}
    key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    label = f"{Path(victim.path).stem}--{name}-{key}"
    weights, record_path = folder / f"{label}.pt", folder / f"{label}.json"
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / f"{label}.lock"):
        if record_path.exists() and (not history or _evaluated(record_path)):
            model = copy.deepcopy(victim.model).cpu()
            if DEFENSES[name].rebuild is not None:  # the purified model's own layers (MM-BD's clipping), before its weights load
                DEFENSES[name].rebuild(model)
            try:
                record = load_checkpoint(model, weights, record_path)
                device = next(victim.model.parameters()).device
                return Defended(model.to(device).eval(), name, record["params"], record["seconds"], record["history"],
                                record["extra"], cache_hit=True, cache_entry=label)
            except Exception as exc:  # truncated or tampered: run the defense again rather than trust it
                warnings.warn(f"cached defense {weights.name} is unusable ({exc}); running it again", stacklevel=3)
        result = run()
        save_checkpoint(result.model, weights, record_path, {
            "config": config, "key": key, "params": _jsonable(result.params), "seconds": round(result.seconds, 2),
            "history": result.history, "evaluated": history, "extra": _jsonable(result.extra), "device": str(next(result.model.parameters()).device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        result.cache_entry = label
        return result


def first_per_class(images, per_class: int):
    """The first ``per_class`` images of each class, in the set's order (MM-BD's ``ind[:50]``)."""
    chosen = [torch.nonzero(images.labels == c).squeeze(1)[:per_class] for c in range(int(images.labels.max()) + 1)]
    return images.subset(torch.cat(chosen).sort().values)


def defend(victim, name: str, profile=None, evaluate: bool = True, data_fraction: float | None = None,
           per_class: int | None = None, cache: bool = True, without_poisons: bool = False, triggered_oracle: bool = False,
           **params) -> Defended:
    """Run defense ``name`` on a zoo victim: the paper's defense data, the profile's budget, ``params`` on top.

    The PAD family gets the victim's poisoned training set (and its poisoned indices, for the
    report); every other method a class-balanced share of the clean originals of the victim's training
    images (or of the held-out reserve, under ``defense_data="reserve"``): ``data_fraction`` of the
    training set (default: the paper's), or ``per_class`` images of each class
    (``per_class=1`` is NFT's one-shot setting).  MM-BD takes the first ``per_class`` (default 50)
    test images of each class, as its code does.  ``without_poisons`` (PAD family only) takes the
    known poisons out of that poisoned set first: an oracle no defender has, to measure what a
    defense loses to the poisons its own selection lets through.  ``triggered_oracle`` (clean-data defenses)
    stamps the victim's trigger on every defense image and keeps the true labels: the data of the ideal
    purification loss, another oracle no defender has, to tell a method that cannot remove the backdoor
    from one that lacks the signal.  With ``cache`` (the default) the purified
    model and its report are stored beside the victim zoo and a repeated call loads them.
    """
    spec = get_defense(name)
    profile = get_profile(profile or victim.profile)
    settings = {**budget(name, profile), **params}
    poisoned_data = spec.data == "poisoned"
    if without_poisons and not poisoned_data:
        poisoned_names = ", ".join(sorted(n for n, d in DEFENSES.items() if d.data == "poisoned"))
        raise PurifyError(f"without_poisons is for the defenses that use the poisoned training set ({poisoned_names}), not {name!r}")
    if poisoned_data:
        poisoned = victim.poisoned_train()
        data, marked = poisoned.data, poisoned.poisoned
        if without_poisons:
            clean = torch.ones(len(data), dtype=torch.bool)
            clean[marked] = False
            data, marked = data.subset(torch.nonzero(clean).squeeze(1)), marked[:0]
        settings["poisoned"] = marked
    elif spec.data == "test":
        if data_fraction is not None:
            raise PurifyError(f"{name} takes its clean images from the test split, {spec.per_class} per class as its code does; "
                              f"pass per_class, not data_fraction={data_fraction}")
        per_class = per_class or spec.per_class
        data = first_per_class(victim.splits.test, per_class)
    else:
        if per_class is not None:
            data_fraction = per_class * victim.splits.num_classes / victim.splits.defense_base_size
        data_fraction = data_fraction or spec.fraction
        data = victim.splits.defense_data(data_fraction)
    if triggered_oracle:
        if poisoned_data or victim.attack is None:
            raise PurifyError(f"triggered_oracle needs a clean-data defense on a backdoored victim; got {name!r} on {victim.path.stem}")
        data = ImageSet(victim.attack.apply(data.images), data.labels, data.indices)
    evaluator = Evaluator(victim.splits.test, victim.attack, profile.progress_eval_size,
                          victim.triggered_test() if victim.attack is not None else None) if evaluate else None
    # Checked here as well as in purify, so a bad name fails before a cached entry is looked up.
    unknown = sorted(set(settings) - set(parameters_of(name)))
    if unknown:
        raise PurifyError(f"unknown parameter(s) {', '.join(unknown)} for defense {name!r}; allowed: {', '.join(parameters_of(name))}")
    # Every default spelled out, so that the cache key says what ran: lr=0.01 given and lr left at 0.01 are one entry.
    settings = {**parameters_of(name), **settings}

    def run():
        return purify(name, victim.model, data, evaluator, **settings)

    if not cache:
        return run()
    if poisoned_data:
        data_spec = {"poisoned_train": True, **({"without_poisons": True} if without_poisons else {})}
    elif spec.data == "test":
        data_spec = {"test_per_class": per_class, "size": len(data)}
    else:
        data_spec = {"fraction": data_fraction, "size": len(data), "from": victim.splits.defense_from}
    if triggered_oracle:
        data_spec["triggered_oracle"] = True
    return cached_defense(victim, name, settings, data_spec, profile.progress_eval_size, run, zoo_dir() / "defended", history=evaluate)
