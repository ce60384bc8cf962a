"""The victim zoo: backdoored models cached by a hash of everything that made them.

Every notebook asks the zoo for its victims, so a victim is trained once per machine
(or once per cluster, when ``PURIFY_ZOO`` points at a shared filesystem).  Each entry
is ``<name>.pt`` (a state dict, loaded with ``weights_only=True``) and ``<name>.json``
(the configuration, ACC/ASR/RA, training time, versions and the checkpoint's SHA-256).
The JSON is written last and is what makes an entry exist; every training also adds a
line to ``trained.log``.  A checkpoint whose hash does not match its record is reported
and rebuilt.  A file lock makes concurrent requests for one victim train it once.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .attacks import ATTACKS, Attack, Poisoned, make_attack
from .data import ImageSet, Splits, cache_dir, load_dataset, make_splits
from .errors import PurifyError
from .files import atomic_path, load_checkpoint, load_tensors, locked, save_checkpoint, save_tensors
from .metrics import evaluate, pick_device, triggered_test_set
from .models import make_model
from .precision import resolve_precision
from .profiles import Profile, get_profile
from .provenance import machine
from .seeds import seed_global
from .train import train_model

ZOO_ENV = "PURIFY_ZOO"
# 2: PreAct-ResNet18 without the final BatchNorm, precision in the key; 3: one random stream per purpose
# (``seeds.py``: the poisons no longer come first in epoch 1) and victims trained on the whole training set
ZOO_FORMAT = 3
MIN_ASR = 50.0  # below this a "victim" has not learned its backdoor and is flagged


def zoo_dir() -> Path:
    return Path(os.environ.get(ZOO_ENV, cache_dir() / "zoo"))


@dataclass
class Victim:
    model: torch.nn.Module
    attack: Attack | None
    poison_rate: float
    splits: Splits
    record: dict
    path: Path
    cache_hit: bool
    profile: Profile
    _triggered: ImageSet | None = field(default=None, repr=False)

    @property
    def metrics(self) -> dict:
        return self.record["metrics"]

    @property
    def backdoored(self) -> bool:
        return self.record["backdoored"]

    def triggered_test(self) -> ImageSet:
        """The triggered test set: stored with the victim when its trigger is learned (IAD, SSBA: seconds per
        thousand images on a CPU), else built on the first call; kept, since every ``defend`` call evaluates on it."""
        if self._triggered is None:
            stored = self._stored("triggered")
            self._triggered = (ImageSet(stored["images"], stored["labels"]) if stored is not None
                               else triggered_test_set(self.splits.test, self.attack))
        return self._triggered

    def poisoned_train(self) -> Poisoned:
        """The poisoned training set and its poisoned indices, as stored with the victim when it was built.

        For a training-controlled attack (WaNet, IAD) this is a static stand-in: the same share of images
        poisoned once after training, which is what data-level defenses such as PAD need.  A victim stored
        before its poisons were (or whose poisons file is damaged) recomputes them (poisoning is seeded).
        """
        if self.attack is None:
            return Poisoned(self.splits.train, torch.empty(0, dtype=torch.long))
        stored = self._stored("poisons")
        if stored is not None:
            images, labels = self.splits.train.images.clone(), self.splits.train.labels.clone()
            images[stored["indices"]], labels[stored["indices"]] = stored["images"], stored["labels"]
            return Poisoned(ImageSet(images, labels, self.splits.train.indices), stored["indices"])
        return _poisoned_set(self.attack, self.profile, self.splits, self.record["config"], self.path.parent, self.poison_rate)

    def _stored(self, part: str) -> dict | None:
        """A part stored beside the victim (``poisons``, ``triggered``), hash-checked; ``None`` if none is (or it is damaged)."""
        sha = self.record.get(f"{part}_sha256")
        if sha is None:
            return None
        try:
            return load_tensors(_part_path(self.path, part), sha)
        except OSError as exc:
            warnings.warn(f"zoo entry {self.path.name}: its stored {part} are unusable ({exc}); computing them again", stacklevel=3)
            return None


def _poisoned_set(attack: Attack, profile: Profile, splits: Splits, config: dict, zoo: Path, rate: float) -> Poisoned:
    """The victim's poisoned training set, computed (seeded): what is stored with it when it is built."""
    if attack.needs_clean_model and attack.clean_model is None:
        _attach_clean_model(attack, profile, config["split_seed"], zoo, precision=config["precision"])
    return attack.poison(splits.train, rate, seed=config["split_seed"])


def _part_path(weights: Path, part: str) -> Path:
    return weights.with_name(f"{weights.stem}.{part}.pt")


def victim_config(profile: Profile, attack: Attack | None, poison_rate: float, data_source: str, split_seed: int,
                  precision: str, adversarial_eps: float = 0.0) -> dict:
    return {
        # only when set, so every other victim keeps its key
        **({"adversarial_eps": round(adversarial_eps, 6)} if adversarial_eps else {}),
        **({"compiled": True} if profile.compile_victims else {}),
        "format": ZOO_FORMAT,
        "data": data_source,
        "split_seed": split_seed,
        "reserve_fraction": profile.held_out_fraction,
        "train_size": profile.train_size,
        "test_size": profile.test_size,
        "attack": attack.params() if attack else None,
        "poison_rate": poison_rate if attack else 0.0,
        "model": profile.model,
        "width": profile.width,
        "recipe": profile.recipe.as_dict(),
        "precision": precision,
    }


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def attack_budget(attack: str | None, profile: Profile) -> dict:
    """The settings attack ``attack`` trains with under ``profile``: its declared budget for the profile's name,
    then the profile's own ``attack_settings`` for it on top (none for a clean model or an unknown name)."""
    if attack is None or attack not in ATTACKS:  # an unknown name is refused where the attack is made
        return {}
    return {**ATTACKS[attack].budget(profile.name), **profile.attack_params(attack)}


def seeded_victim(attack: str | None, poison_rate: float, profile, victim_seed: int = 0, **kwargs) -> "Victim":
    """``get_victim`` with one seed for all a victim is made of: its split and poisons (``split_seed``) and its
    training (the recipe's seed: initial weights, batch order, augmentation).  Seed 0 is the profile's own victim."""
    profile = get_profile(profile)
    if victim_seed != profile.recipe.seed:
        profile = get_profile(profile, recipe=replace(profile.recipe, seed=victim_seed))
    return get_victim(attack, poison_rate, profile, split_seed=victim_seed, **kwargs)


def get_victim(attack: str | None = "badnets", poison_rate: float = 0.1, profile: str | Profile | None = None, *,
               attack_params: dict | None = None, split_seed: int = 0, device=None, data_root=None,
               zoo: str | os.PathLike | None = None, progress: bool = True, precision: str | None = None,
               adversarial_eps: float = 0.0, **profile_overrides) -> Victim:
    """The victim for this attack, rate and profile: from the zoo, or trained and stored there.

    ``attack=None`` gives a clean model, adversarially trained when ``adversarial_eps > 0``
    (``train.fgsm_rs``; LC crafts its poisons against one).  Every input is checked before any training.
    ``precision`` (default ``$PURIFY_PRECISION``, else ``auto``) is resolved for the device and
    is part of the key: a victim trained in bf16 is never served for fp32, nor the reverse.
    """
    profile = get_profile(profile, **profile_overrides)
    device = pick_device(device)
    precision = resolve_precision(device, precision)
    dataset, splits = _profile_splits(profile, split_seed, data_root)
    attack_obj = _checked_attack(attack, {**attack_budget(attack, profile), **(attack_params or {})}, poison_rate, splits)
    with torch.random.fork_rng(devices=[]):  # the initial weights from a stream of their own (they were unseeded)
        seed_global("model-init", profile.recipe.seed)
        model = make_model(profile.model, dataset.num_classes, profile.width, profile.dataset)

    if adversarial_eps and attack is not None:
        raise PurifyError(f"adversarial_eps={adversarial_eps} is for clean models only (attack=None), not {attack!r}")
    if not 0 <= adversarial_eps <= 1:
        raise PurifyError(f"adversarial_eps={adversarial_eps} is outside [0, 1] (an L-infinity radius on pixels in [0, 1]; 0: no adversarial training)")
    config = victim_config(profile, attack_obj, poison_rate, dataset.source, split_seed, precision, adversarial_eps)
    key = config_key(config)
    clean = "clean-adv" if adversarial_eps else "clean"
    label = f"{attack}-{poison_rate:g}-{profile.model}-w{profile.width}-{key}" if attack else f"{clean}-{profile.model}-w{profile.width}-{key}"
    folder = Path(zoo) if zoo is not None else zoo_dir()
    folder.mkdir(parents=True, exist_ok=True)
    weights, record_path = folder / f"{label}.pt", folder / f"{label}.json"

    with locked(folder / f"{label}.lock"):
        if attack_obj is not None and attack_obj.asset_config() is not None:
            _attach_asset(attack_obj, config, splits, folder, device, progress)
        record = _load(model, weights, record_path, attack_obj)
        hit = record is not None
        if not hit:
            if attack_obj is not None and attack_obj.needs_clean_model:
                _attach_clean_model(attack_obj, profile, split_seed, folder, device, data_root, progress, precision)
            record = _build(model, attack_obj, poison_rate, splits, profile, config, device, progress, weights, record_path)
            # One line per training, so a shared zoo shows what was trained, where and when.
            with open(folder / "trained.log", "a") as log:
                log.write(f"{record['created']} {label} {record['train_seconds']}s host={platform.node()} pid={os.getpid()}\n")
    # Loaded or trained, the same model: on the device, in the memory format training used (train.py), and
    # an attack's trigger networks beside it, so that a cache hit computes what the miss did.
    model.to(device, memory_format=torch.channels_last).eval()
    if attack_obj is not None:
        attack_obj.to(device)
    victim = Victim(model, attack_obj, poison_rate, splits, record, weights, hit, profile)
    if attack_obj is not None and not victim.backdoored:
        warnings.warn(f"victim {label} has ASR {victim.metrics['asr']:.1f}% < {MIN_ASR}%: the backdoor was not learned; "
                      "purifying it shows nothing", stacklevel=2)
    return victim


def _profile_splits(profile: Profile, split_seed: int, data_root=None):
    dataset = load_dataset(profile.dataset, data_root)
    return dataset, make_splits(dataset, split_seed, profile.held_out_fraction, profile.train_size, profile.test_size,
                                defense_from=profile.defense_data)


def _attach_clean_model(attack: Attack, profile: Profile, split_seed: int, zoo: Path, device=None, data_root=None,
                        progress: bool = False, precision: str | None = None) -> None:
    """Give a clean-label attack that crafts against a clean model (LC) that model, from the same zoo:
    adversarially trained at the attack's ``model_eps`` (0: a plain clean model)."""
    attack.clean_model = get_victim(None, 0.0, profile, split_seed=split_seed, device=device, data_root=data_root,
                                    zoo=zoo, progress=progress, precision=precision,
                                    adversarial_eps=getattr(attack, "model_eps", 0.0)).model


def _checked_attack(attack, attack_params, poison_rate, splits: Splits) -> Attack | None:
    """The attack object, after every check that can fail before training."""
    if attack is None:
        return None
    size = splits.train.images.shape[-1]
    cls = ATTACKS.get(attack)
    if cls is not None and cls.image_sizes is not None and size not in cls.image_sizes:
        anywhere = ", ".join(sorted(name for name, c in ATTACKS.items() if c.image_sizes is None))
        raise PurifyError(f"attack {attack!r} is built for {' or '.join(f'{s}x{s}' for s in cls.image_sizes)} images here, and these are "
                          f"{size}x{size}; the attacks made at any size: {anywhere}")
    if cls is not None and "size" in cls.fields() and "size" not in (attack_params or {}):
        attack_params = {**(attack_params or {}), "size": size}  # WaNet's grid at the images' size (32 is its default: same key)
    attack_obj = make_attack(attack, **(attack_params or {}))
    if attack_obj.target >= splits.num_classes:
        raise PurifyError(f"target={attack_obj.target} is not a class of the dataset (0..{splits.num_classes - 1})")
    attack_obj.poison_count(splits.train.labels, poison_rate)
    return attack_obj


def check_requests(requests, profile: str | Profile | None = None, *, split_seed: int = 0, data_root=None) -> Profile:
    """Check a batch of ``(attack, rate)`` requests up front, so a bad last one fails before the first trains."""
    profile = get_profile(profile)
    _, splits = _profile_splits(profile, split_seed, data_root)
    make_model(profile.model, splits.num_classes, profile.width, profile.dataset)
    for attack, rate in requests:
        _checked_attack(attack, attack_budget(attack, profile) if attack else None, rate, splits)
    return profile


def _attach_asset(attack: Attack, config: dict, splits: Splits, folder: Path, device=None, progress: bool = False) -> None:
    """Give an attack the part it builds once and every victim of it shares (SSBA's encoder), from the
    zoo or built on the attacker's training set and stored there: ``asset-<attack>-<key>``, keyed by
    the attack's ``asset_config`` and the data it is built on, in the zoo's checkpoint format."""
    asset_config = {"asset": attack.asset_config(), "data": config["data"], "split_seed": config["split_seed"],
                    "reserve_fraction": config["reserve_fraction"], "train_size": config["train_size"]}
    label = f"asset-{attack.name}-{config_key(asset_config)}"
    weights, record_path = folder / f"{label}.pt", folder / f"{label}.json"
    with locked(folder / f"{label}.lock"):
        if record_path.exists():
            try:
                record = json.loads(record_path.read_text())
                attack.load_asset(load_tensors(weights, record["sha256"]))
                return
            except Exception as exc:  # truncated, corrupted or tampered: rebuild rather than trust it
                warnings.warn(f"zoo asset {weights.name} is unusable ({exc}); rebuilding it", stacklevel=3)
        started = time.perf_counter()
        state = attack.build_asset(splits.train, pick_device(device), progress)
        record = {"config": asset_config, "seconds": round(time.perf_counter() - started, 1), "extra": attack.asset_report(),
                  "versions": machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sha256": save_tensors(state, weights)}
        with atomic_path(record_path) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        with open(folder / "trained.log", "a") as log:
            log.write(f"{record['created']} {label} {record['seconds']}s host={platform.node()} pid={os.getpid()}\n")


def _load(model, weights: Path, record_path: Path, attack: Attack | None) -> dict | None:
    if not record_path.exists():
        return None
    try:
        record = load_checkpoint(model, weights, record_path)
        if attack is not None and "attack_sha256" in record:
            attack.load_state_dict(load_tensors(_attack_state_path(weights), record["attack_sha256"]))
        return record
    except Exception as exc:  # truncated, corrupted or tampered: rebuild rather than trust it
        warnings.warn(f"zoo entry {weights.name} is unusable ({exc}); rebuilding it", stacklevel=3)
        return None


def _attack_state_path(weights: Path) -> Path:
    return weights.with_name(weights.stem + ".attack.pt")


def _build(model, attack, poison_rate, splits, profile, config, device, progress, weights, record_path) -> dict:
    started = time.perf_counter()
    poisoned_indices = []
    train_set = splits.train
    if attack is not None:
        attack.prepare(splits.train, device)
    if attack is not None and not attack.training_controlled:
        poisoned = attack.poison(splits.train, poison_rate, seed=config["split_seed"])
        train_set, poisoned_indices = poisoned.data, poisoned.poisoned.tolist()
    model.to(device)
    train_model(model, train_set, profile.recipe, attack, poison_rate, progress=progress, precision=config["precision"],
                adversarial_eps=config.get("adversarial_eps", 0.0), compile=config.get("compiled", False))
    seconds = time.perf_counter() - started
    broken = [name for name, tensor in model.state_dict().items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:  # stored, it would be served as a victim with 10% ACC and NaN losses
        raise PurifyError(f"training diverged: {len(broken)} tensors of the model are not finite (first {broken[0]}); nothing was stored")
    # built once: the victim's metrics use it, and a learned trigger's is stored with the victim below
    triggered = triggered_test_set(splits.test, attack) if attack is not None else None
    metrics = evaluate(model, splits.test, attack, precision=config["precision"], triggered=triggered)
    record = {
        "config": config,
        "key": config_key(config),
        "profile": profile.name,
        "metrics": metrics,
        "backdoored": attack is None or metrics["asr"] >= MIN_ASR,
        "poisoned_indices": poisoned_indices,
        "train_seconds": round(seconds, 1),
        "train_images": len(train_set),
        "device": str(device),
        "versions": machine(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    state = attack.state_dict() if attack is not None else {}
    if state:  # written before the record, which is what makes the entry exist
        record["attack_sha256"] = save_tensors(state, _attack_state_path(weights))
    if attack is not None:
        # What the victim needs later, materialised once: its poisoned training set (for a training-controlled
        # attack, poisoned once with the trigger as trained), and the triggered test set of a learned trigger.
        stand_in = poisoned if not attack.training_controlled else _poisoned_set(attack, profile, splits, config, weights.parent, poison_rate)
        index = stand_in.poisoned
        record["poisons_sha256"] = save_tensors({"indices": index, "images": stand_in.data.images[index], "labels": stand_in.data.labels[index]},
                                                _part_path(weights, "poisons"))
        if isinstance(getattr(attack, "nets", None), torch.nn.Module):
            record["triggered_sha256"] = save_tensors({"images": triggered.images, "labels": triggered.labels}, _part_path(weights, "triggered"))
    return save_checkpoint(model, weights, record_path, record)
