"""The one interface every attack implements, the registry, and the trigger-file lookup they share.

An attack is one ``Attack`` subclass with a ``name``, in one module of this package: defining it registers
it (``ATTACKS``), and ``purify_lib.attacks`` imports every module here.  Its constructor's parameters are
keyword-only (registration refuses others) and each is kept as the attribute of the same name: the victim
key is made of all of them (``params``), so no setting can be left out of it and serve a stale victim.
"""
from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import PROJECT_ROOT, ImageSet, to_float
from ..errors import PurifyError
from ..seeds import stream

TRIGGER_ENV = "PURIFY_TRIGGERS"
POOLS = ("all", "non_target")


@dataclass
class Poisoned:
    """A poisoned training set and the positions (in it) that were changed."""

    data: ImageSet
    poisoned: torch.Tensor  # int64 indices into ``data``


ATTACKS: dict[str, type["Attack"]] = {}


class Attack:
    """All-to-one backdoor attack on uint8 images ``(N, C, H, W)``.

    Subclasses implement ``apply`` (the trigger, used on training poisons and on test
    images alike).  Dirty-label attacks relabel the poisons to ``target``; clean-label
    attacks poison only images already of the target class and leave labels alone.
    Training-controlled attacks (WaNet) also implement ``poison_batch``, which the
    training loop calls on every batch instead of training on a fixed poisoned set.
    """

    name = ""
    clean_label = False
    training_controlled = False
    needs_clean_model = False  # LC: set ``clean_model`` before poisoning
    augments_after_poison = False  # training-controlled: ``augment`` replaces the recipe's, after ``poison_batch``
    published: frozenset = frozenset()  # the names the papers' tables give it
    budgets: dict = {}  # profile name -> (settings, one-line reason), where the attack's own training exceeds the profile's time
    # Image sizes the trigger is defined for: None for any (its pattern is made at the images' size, as BackdoorBench
    # resizes its trigger files), else those listed (the learned and crafted triggers are built for 32x32 here).
    image_sizes: tuple | None = (32,)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.name:  # a base for others, not an attack of its own
            return
        where = f"attack {cls.name} ({cls.__module__})"
        positional = [p.name for p in list(inspect.signature(cls.__init__).parameters.values())[1:] if p.kind is not p.KEYWORD_ONLY]
        if positional:
            raise PurifyError(f"{where}: constructor parameter(s) {', '.join(positional)} must be keyword-only (after '*'), so each is "
                              "checked and part of the victim key")
        for profile, (settings, reason) in cls.budgets.items():
            unknown = sorted(set(settings) - set(cls.fields()))
            if unknown or not reason:
                raise PurifyError(f"{where}: its {profile!r} budget " + (f"sets unknown parameter(s) {', '.join(unknown)}; allowed: "
                                                                         f"{', '.join(cls.fields())}" if unknown else "needs a reason: (settings, reason)"))
        ATTACKS[cls.name] = cls

    @classmethod
    def fields(cls) -> list[str]:
        """The constructor's parameters: what identifies the attack's poisons."""
        return [p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]

    @classmethod
    def budget(cls, profile: str) -> dict:
        """The settings this attack trains with under ``profile`` (none: its defaults)."""
        return dict(cls.budgets.get(profile, ({}, ""))[0])

    def __init__(self, *, target: int = 0, pool: str = "all"):
        if target < 0:
            raise PurifyError(f"target={target} must be a class index >= 0")
        if pool not in POOLS:
            raise PurifyError(f"pool={pool!r} is not one of {', '.join(POOLS)}")
        self.target, self.pool = target, pool

    @property
    def uses_pool(self) -> bool:
        """Whether ``pool`` decides anything: dirty-label attacks that poison a fixed set."""
        return not self.clean_label and not self.training_controlled

    def params(self) -> dict:
        """Everything that identifies this attack's poisons, for the victim cache key: every constructor parameter."""
        return {"name": self.name, **dict(self.key_value(field) for field in self.fields())}

    def key_value(self, field: str) -> tuple[str, object]:
        """How the victim key records constructor parameter ``field``: as the attribute of the same name; a
        trigger or mask file as the digest of the pattern loaded from it (or the default one)."""
        if field == "trigger_path":
            return "trigger", pattern_digest(self.pattern)
        if field == "mask_path":
            return "mask", pattern_digest(self.mask)
        if not hasattr(self, field):
            raise PurifyError(f"attack {self.name} keeps no attribute {field!r} for its constructor parameter: store it, or say "
                              "how the key records it (key_value)")
        return field, getattr(self, field)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def at_size(self, size: int, make):
        """``make(size)``, made once per image size: the trigger at the size of the images it is stamped on.
        Its 32x32 form is what the constructor makes and the victim key records."""
        made = self.__dict__.setdefault("_at_size", {})
        if size not in made:
            made[size] = make(size)
        return made[size]

    def poison_count(self, labels: torch.Tensor, rate: float) -> int:
        """How many training images ``rate`` poisons; errors if the rate cannot be met."""
        if not 0 < rate <= 1:
            raise PurifyError(f"poison_rate={rate} is outside (0, 1]")
        count = round(rate * len(labels))
        pool = int(self.pool_mask(labels).sum())
        if count == 0:
            raise PurifyError(f"poison_rate={rate} poisons no image of {len(labels)}; use a rate of at least {1 / len(labels):.2g}")
        if count > pool:
            kind = "the target class holds" if self.clean_label else f"the {self.pool} pool holds"
            raise PurifyError(f"poison_rate={rate} asks for {count} poisons but {kind} {pool} ({self.name})")
        return count

    def pool_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """The images poisons may be drawn from: the target class for clean-label attacks; for
        dirty-label ones every image (``pool="all"``, BackdoorBench's ``generate_poison_index_from_label_transform``:
        target-class poisons keep their label) or only the other classes (``pool="non_target"``)."""
        if self.clean_label:
            return labels == self.target
        return torch.ones_like(labels, dtype=torch.bool) if self.pool == "all" else labels != self.target

    def choose(self, labels: torch.Tensor, rate: float, seed: int) -> torch.Tensor:
        """Seeded choice of the indices to poison, from ``pool_mask``, on a stream of its own (``seeds.py``)."""
        count = self.poison_count(labels, rate)
        pool = torch.nonzero(self.pool_mask(labels)).squeeze(1)
        return pool[torch.randperm(len(pool), generator=stream("poison", seed))[:count]].sort().values

    def poison(self, train: ImageSet, rate: float, seed: int = 0) -> Poisoned:
        index = self.choose(train.labels, rate, seed)
        images, labels = train.images.clone(), train.labels.clone()
        images[index] = self.poison_images(images[index])
        if not self.clean_label:
            labels[index] = self.target
        return Poisoned(ImageSet(images, labels, train.indices), index)

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        """What a training poison looks like; the test trigger unless an attack differs (LC)."""
        return self.apply(images)

    def poison_batch(self, images: torch.Tensor, labels: torch.Tensor, rate: float):
        raise NotImplementedError(f"{self.name} is not training-controlled")

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no augmentation of its own")

    # Attacks with learned parts (IAD's generators, trained with the victim) use the hooks below;
    # the zoo calls them and stores ``state_dict()`` beside the victim when it is not empty.
    def prepare(self, train: ImageSet, device) -> None:
        """Called once before the victim trains, with its clean training set (IAD pretrains its mask generator)."""

    def extra_loss(self):
        """A loss term of the attack's own for the batch just poisoned (IAD's diversity term), or ``None``: the
        training loop adds it to the classifier's loss, so one backward pass, under one loss scale, serves both."""
        return None

    def after_step(self, scaler=None) -> None:
        """Called after every optimiser step of a training-controlled attack, before the loss scaler updates
        (IAD steps its generators through ``scaler``, so fp16 skips their step when it skips the classifier's)."""

    def state_dict(self) -> dict:
        """Tensors the trigger depends on that the attack's parameters do not fix (learned with the victim)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise PurifyError(f"{self.name} keeps no learned state; got {', '.join(state)}")

    # An asset is a learned part every victim of the attack shares (SSBA's encoder): the zoo builds it
    # once per ``asset_config`` and training set, stores it, and hands it back with ``load_asset``.
    def asset_config(self) -> dict | None:
        return None

    def build_asset(self, train: ImageSet, device, progress: bool = False) -> dict:
        raise NotImplementedError(f"{self.name} builds no asset")

    def load_asset(self, state: dict) -> None:
        raise NotImplementedError(f"{self.name} builds no asset")

    def asset_report(self) -> dict:
        """What building the asset measured (losses, bit accuracy), for its zoo record."""
        return {}

    def to(self, device) -> "Attack":
        """Move the networks the trigger is made with (IAD's generators, SSBA's encoder) to ``device``, so a victim
        loaded from the zoo makes its triggers where the one trained there did."""
        nets = getattr(self, "nets", None)
        if isinstance(nets, torch.nn.Module):
            nets.to(device)
        return self


@torch.no_grad()
def map_in_batches(fn, images: torch.Tensor, device, batch_size: int = 500) -> torch.Tensor:
    """uint8 images through ``fn`` (float images in [0, 1] on ``device`` to the same), in batches; uint8 back
    where the images were.  The learned triggers (IAD's generators, SSBA's encoder) are applied this way."""
    out = [(fn(to_float(images[start : start + batch_size].to(device))) * 255).round().clamp(0, 255).to(torch.uint8).to(images.device)
           for start in range(0, len(images), batch_size)]
    return torch.cat(out) if out else images.clone()


def find_trigger(filename: str, explicit: str | os.PathLike | None) -> Path | None:
    """The trigger file to use: ``explicit`` (must exist), else the standard file in
    ``$PURIFY_TRIGGERS`` or beside a development checkout; ``None`` means use the generated default."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise PurifyError(f"trigger file {str(path)!r} does not exist")
        return path
    for folder in (os.environ.get(TRIGGER_ENV), PROJECT_ROOT.parent / "shared" / "data" / "triggers"):
        if folder and (Path(folder) / filename).is_file():
            return Path(folder) / filename
    return None


def load_pattern(path: Path, size: int = 32) -> np.ndarray:
    """A trigger file as a uint8 ``(3, size, size)`` array: an image resized (bilinear, as BackdoorBench's ``Resize``
    of its trigger files), a .npy taken as HWC at that size already (a pattern optimised for one size is not resized)."""
    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        array = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR))
    if array.shape[:2] != (size, size):
        raise PurifyError(f"trigger {str(path)!r} has shape {array.shape}; expected ({size}, {size}, 3) for {size}x{size} images "
                          "(pass trigger_path= a pattern made for that size)")
    return np.ascontiguousarray(array.astype(np.uint8).transpose(2, 0, 1))


def trigger_pattern(filename: str, explicit, default, size: int = 32) -> torch.Tensor:
    """The trigger as a uint8 ``(3, size, size)`` tensor: from its file when found, else ``default(size)``."""
    path = find_trigger(filename, explicit)
    return torch.from_numpy(load_pattern(path, size)) if path else default(size)


def pattern_digest(pattern: torch.Tensor) -> str:
    return hashlib.sha256(pattern.contiguous().numpy().tobytes()).hexdigest()[:12]
