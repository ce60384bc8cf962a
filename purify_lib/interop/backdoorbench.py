"""BackdoorBench victims in and out: its ``attack_result.pt`` (``utils/save_load_attack.py``, the v2 format).

``import_victim(path)`` gives a victim that ``defend``, ``Section`` and notebook 06 take; ``export_victim(victim,
folder)`` writes one that BackdoorBench's ``defense/*.py`` scripts load (``load_attack_result``).

The file, as ``save_attack_result`` writes it, is a ``torch.save``d dict:

- ``model_name``, ``num_classes`` and ``model``: the state dict under BackdoorBench's key names (its
  ``models/preact_resnet.py``: ``layer2.0.shortcut.0.weight``, ``linear.*``), with no normalisation inside;
- ``data_path``, ``img_size`` (``[H, W, C]``) and ``clean_data``: the dataset's name (cifar10, cifar100, gtsrb, tiny);
- ``bd_train`` and ``bd_test``: each ``prepro_cls_DatasetBD_v2.retrieve_state()``: ``poison_indicator`` (floats, one
  per image of the clean set), ``original_index_array`` (the clean set's indices it holds: all of them for
  ``bd_train``, the poisoned ones for ``bd_test``) and ``bd_data_container``, whose ``data_dict`` maps each poisoned
  index to ``{"path": <save_folder_path>/<original label>/<index>.png, "other_info": [its label, its original label]}``.

The clean images are not in the file: BackdoorBench reads them from ``data_path`` (torchvision's copy; the indices
are positions in torchvision's order, which this module checks against the original labels it stores).  Its
models take images normalised with ``get_dataset_normalization``'s constants (``NORMALIZATION``); ours normalise
inside, so an imported model carries those constants, and an exported one has the difference folded into its
first convolution (exact where the means agree, as they do for every dataset here).

Safety: the file is a pickle.  It is loaded with ``weights_only=True``, numpy's array, dtype and scalar
reconstructors the only globals allowed besides tensors; anything else is refused, never unpickled: a file
saved in BackdoorBench's in-memory mode (``save_folder_path=None``: PIL images inside the pickle), a model
pickled whole, or any other object.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..attacks import Attack, Poisoned
from ..data import ImageSet, load_dataset, make_splits
from ..errors import PurifyError
from ..datasets.base import NUMPY_GLOBALS, numpy_global
from ..metrics import evaluate, pick_device
from ..models import make_model
from ..profiles import get_profile
from ..zoo import MIN_ASR, Victim, zoo_dir

KEYS = ("model_name", "num_classes", "model", "data_path", "img_size", "clean_data", "bd_train", "bd_test")
DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "gtsrb": "gtsrb", "tiny": "tiny_imagenet"}  # BackdoorBench's name -> ours
# BackdoorBench's get_dataset_normalization (utils/aggregate_block/dataset_and_transform_generate.py)
NORMALIZATION = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
                 "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
                 "tiny": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
                 "gtsrb": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}
# BackdoorBench's preactresnet18 is the one of its networks ours reproduce layer for layer; its resnet18 and
# vgg19_bn are torchvision's ImageNet-style networks, not the CIFAR variants trained here.
MODELS = ("preactresnet18",)
WIDTH = 64  # BackdoorBench's PreActResNet18 has 64 first-stage channels, fixed


def _allowed_globals() -> list:
    """numpy's array, dtype and scalar reconstructors, under the names numpy 1 and numpy 2 pickle them with."""
    allowed = [(numpy_global(module, name), f"{module}.{name}") for module, name in NUMPY_GLOBALS]
    for kind in (np.int64, np.int32, np.float64, np.float32, np.uint8, np.bool_):
        dtype_class = type(np.dtype(kind))
        allowed.append((dtype_class, f"numpy.dtypes.{dtype_class.__name__}"))
    return allowed


def read_attack_result(path) -> tuple[dict, str]:
    """The dict an ``attack_result.pt`` holds, loaded with ``weights_only=True``, and the SHA-256 of its bytes (read
    once for both); one line naming what is wrong otherwise."""
    path = Path(path).expanduser()
    expected = "a BackdoorBench attack_result.pt"
    if not path.is_file():
        raise PurifyError(f"{path}: no such file; expected {expected}")
    data = path.read_bytes()
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            content = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:  # no global refused: the bytes are not a pickle at all
            raise PurifyError(f"{path}: not a torch file (UnpicklingError); expected {expected}") from None
        name = found.group(1)
        if name.startswith("PIL."):
            raise PurifyError(f"{path}: its poisoned images are PIL objects inside the pickle (BackdoorBench's in-memory mode, "
                              f"save_folder_path=None), which weights_only=True refuses ({name}); save the attack with its images "
                              "on disk (BackdoorBench's default)") from None
        raise PurifyError(f"{path}: refused to unpickle {name} (weights_only=True allows tensors and numpy arrays); expected {expected}") from None
    except Exception as exc:  # not a torch file at all (a zip of something else, text, a truncated copy)
        raise PurifyError(f"{path}: not a torch file ({type(exc).__name__}); expected {expected}") from None
    if not isinstance(content, dict) or not set(KEYS) <= set(content):
        missing = sorted(set(KEYS) - set(content)) if isinstance(content, dict) else list(KEYS)
        raise PurifyError(f"{path}: not {expected}: it lacks {', '.join(missing)} (expected the keys {', '.join(KEYS)})")
    return content, hashlib.sha256(data).hexdigest()


def check_new_folder(folder: Path) -> None:
    """An export goes to a new (or empty) folder, never over another."""
    if folder.exists() and any(folder.iterdir()):
        raise PurifyError(f"{folder} exists and is not empty; choose a new folder")


def to_ours(state: dict) -> dict:
    """BackdoorBench's PreActResNet18 key names as ours (a DataParallel ``module.`` prefix dropped)."""
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^module\.", "", key)
        key = re.sub(r"^(layer\d+\.\d+\.shortcut)\.0\.", r"\1.", key)
        renamed[re.sub(r"^linear\.", "head.", key)] = value
    return renamed


def to_backdoorbench(state: dict) -> dict:
    """Ours as BackdoorBench's key names (the normalisation buffers left out: BackdoorBench normalises in its transforms)."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("normalize."):
            continue
        key = re.sub(r"^(layer\d+\.\d+\.shortcut)\.", r"\1.0.", key)
        renamed[re.sub(r"^head\.", "linear.", key)] = value
    return renamed


class ImportedTrigger(Attack):
    """An imported victim's attack, known only by its poisoned images: it has no function that stamps new ones.

    No class-level ``name``, so it is not registered among the attacks a victim can be trained with."""

    def __init__(self, *, name: str, target: int):
        super().__init__(target=target)
        self.name = name

    def params(self) -> dict:
        return {"name": self.name, "target": self.target, "imported": True}

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        raise PurifyError(f"{self.name}: an imported BackdoorBench victim's trigger is known only by its stored poisoned images; "
                          "a step that stamps new images with it (NFT's triggered_oracle, for one) cannot run on it")


@dataclass
class ImportedVictim(Victim):
    """A victim read from a BackdoorBench file: its poisoned training set and triggered test set are the file's."""

    poisons: Poisoned | None = field(default=None, repr=False)

    def poisoned_train(self) -> Poisoned:
        return self.poisons


def _image_file(recorded: str, save_folder: str | None, result_dir: Path, part: str) -> Path:
    """Where a stored poisoned image is: its recorded path, or the same place under the result's own folder
    (BackdoorBench writes ``<record>/<attack>/bd_train_dataset/...``; a copied record keeps that layout)."""
    if Path(recorded).is_file():
        return Path(recorded)
    relative = os.path.relpath(recorded, save_folder) if save_folder else Path(recorded).name
    moved = result_dir / (Path(save_folder).name if save_folder else f"{part}_dataset") / relative
    if not moved.is_file():
        raise PurifyError(f"poisoned image {recorded} is missing, and so is {moved}; the {part}_dataset folder of the "
                          "attack result must travel with its attack_result.pt")
    return moved


def _poisoned_part(state, clean: ImageSet, part: str, result_dir: Path):
    """The poisoned images of ``bd_train`` or ``bd_test``: (indices into the clean set, images, labels, original labels)."""
    from PIL import Image

    if state is None:
        raise PurifyError(f"the attack result holds no {part} (saved with bd_{part}=None); importing needs its poisoned images")
    try:
        container, indicator = state["bd_data_container"], np.asarray(state["poison_indicator"])
        data_dict, save_folder = container["data_dict"], container.get("save_folder_path")
    except (KeyError, TypeError):
        raise PurifyError(f"its bd_{part} is not a prepro_cls_DatasetBD_v2 state (expected bd_data_container, poison_indicator)") from None
    if len(indicator) != len(clean):
        raise PurifyError(f"its bd_{part} marks {len(indicator)} images; the clean {part} set read here holds {len(clean)}: "
                          "not the data it was made from")
    index = np.flatnonzero(indicator == 1)
    images, labels, originals = [], [], []
    for position in index:
        entry = data_dict.get(int(position))
        if not isinstance(entry, dict) or "path" not in entry:
            raise PurifyError(f"its bd_{part} marks image {position} poisoned but stores no file for it")
        with Image.open(_image_file(entry["path"], save_folder, result_dir, part)) as image:
            images.append(np.asarray(image.convert("RGB")).transpose(2, 0, 1))
        label, original = entry["other_info"][:2]
        labels.append(int(label))
        originals.append(int(original))
    index = torch.as_tensor(index, dtype=torch.long)
    originals = torch.tensor(originals, dtype=torch.long)
    mismatched = int((clean.labels[index] != originals).sum())
    if mismatched:
        raise PurifyError(f"the clean {part} set read here is not in BackdoorBench's order: {mismatched} of {len(index)} poisoned images' "
                          "original labels differ; pass data_root= the torchvision copy the attack was run on")
    stacked = torch.from_numpy(np.stack(images)) if images else torch.empty((0, *clean.images.shape[1:]), dtype=torch.uint8)
    if stacked.shape[1:] != clean.images.shape[1:]:
        raise PurifyError(f"its poisoned {part} images are {tuple(stacked.shape[1:])}; the clean ones {tuple(clean.images.shape[1:])}")
    return index, stacked, torch.tensor(labels, dtype=torch.long), originals


def _data_root(path: Path, data_path: str):
    """Where BackdoorBench's ``load_attack_result`` looks: ``data_path`` from its ``data`` on, under the folder that holds ``record``."""
    resolved = str(path.resolve())
    if "record" in resolved and "data" in data_path:
        root = Path(resolved[:resolved.index("record")]) / data_path[data_path.index("data"):]
        if root.exists():
            return root
    return None  # the project's own lookup (PURIFY_DATA, the stand-in, torchvision's download)


def import_victim(path, profile=None, data_root=None, device=None) -> ImportedVictim:
    """A victim from BackdoorBench's ``attack_result.pt`` at ``path`` (its ``bd_train_dataset`` and ``bd_test_dataset``
    folders beside it), evaluated on the clean test set and the file's poisoned test images.  ``profile`` gives the
    defenses' budgets (its dataset, model and width become the file's); ``data_root`` the clean data, by default where
    BackdoorBench would look, else the project's own lookup."""
    path = Path(path).expanduser()
    content, sha = read_attack_result(path)
    model_name, clean_data = content["model_name"], content["clean_data"]
    if model_name not in MODELS:
        raise PurifyError(f"{path}: model_name {model_name!r} has no counterpart here; allowed: {', '.join(MODELS)} "
                          "(BackdoorBench's resnet18 and vgg19_bn are torchvision's ImageNet-style networks)")
    if clean_data not in DATASETS:
        raise PurifyError(f"{path}: clean_data {clean_data!r} is not a dataset here; allowed: {', '.join(DATASETS)}")
    dataset_name = DATASETS[clean_data]
    state = to_ours(content["model"])
    if "conv1.weight" not in state:
        raise PurifyError(f"{path}: its model state has no conv1.weight; not BackdoorBench's preactresnet18")
    width, num_classes = int(state["conv1.weight"].shape[0]), int(content["num_classes"])
    mean, std = NORMALIZATION[clean_data]
    state["normalize.mean"], state["normalize.std"] = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    model = make_model(model_name, num_classes, width, dataset_name)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise PurifyError(f"{path}: its model state is not BackdoorBench's preactresnet18 ({num_classes} classes): "
                          + "; ".join(f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                                      for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys))
    model.load_state_dict(state)

    dataset = load_dataset(dataset_name, data_root if data_root is not None else _data_root(path, str(content["data_path"])))
    height, width_px = (list(content["img_size"]) + [None, None])[:2]
    if (height, width_px) != tuple(dataset.train.images.shape[2:]):
        raise PurifyError(f"{path}: img_size {list(content['img_size'])} does not match the clean {dataset_name} images "
                          f"({tuple(dataset.train.images.shape[2:])})")
    splits = make_splits(dataset, 0, 0.0, defense_from="train")
    train_index, train_images, train_labels, _ = _poisoned_part(content["bd_train"], splits.train, "train", path.parent)
    test_index, test_images, test_labels, test_originals = _poisoned_part(content["bd_test"], splits.test, "test", path.parent)
    targets = sorted(set(test_labels.tolist()))
    if len(targets) != 1:
        raise PurifyError(f"{path}: its poisoned test images carry {len(targets)} target labels; only all-to-one attacks are supported")
    attack = ImportedTrigger(name=f"bb-{path.parent.name}", target=targets[0])
    images, labels = splits.train.images.clone(), splits.train.labels.clone()
    images[train_index], labels[train_index] = train_images, train_labels
    poisons = Poisoned(ImageSet(images, labels, splits.train.indices), train_index)
    triggered = ImageSet(test_images, test_originals, test_index)

    device = pick_device(device)
    profile = get_profile(profile, dataset=dataset_name, model=model_name, width=width, train_size=None, test_size=None, defense_data="train")
    model.to(device, memory_format=torch.channels_last).eval()
    metrics = evaluate(model, splits.test, attack, triggered=triggered)
    record = {"config": {"format": "backdoorbench", "file": str(path.resolve()), "model": model_name, "width": width,
                         "data": dataset.source, "attack": attack.params(), "poison_rate": len(train_index) / len(splits.train)},
              "key": f"backdoorbench-{sha[:16]}", "sha256": sha, "profile": profile.name, "metrics": metrics,
              "backdoored": metrics["asr"] >= MIN_ASR, "poisoned_indices": train_index.tolist(), "train_seconds": 0.0,
              "device": str(device), "imported": str(path.resolve())}
    label = f"{attack.name}-{model_name}-w{width}-{sha[:16]}"
    return ImportedVictim(model, attack, len(train_index) / len(splits.train), splits, record, zoo_dir() / f"{label}.pt", True, profile,
                          _triggered=triggered, poisons=poisons)


def _bd_state(indices: torch.Tensor, labels: torch.Tensor, originals: torch.Tensor, images: torch.Tensor, size: int,
              save_folder: Path, write_folder: Path, holds_all: bool) -> dict:
    """``prepro_cls_DatasetBD_v2.retrieve_state()`` for these poisoned images, each written as BackdoorBench writes it."""
    from PIL import Image

    data_dict = {}
    for position, label, original, image in zip(indices.tolist(), labels.tolist(), originals.tolist(), images):
        (write_folder / str(original)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(write_folder / str(original) / f"{position}.png")
        data_dict[np.int64(position)] = {"path": f"{save_folder}/{original}/{position}.png", "other_info": [label, original]}
    indicator = np.zeros(size)
    indicator[indices.numpy()] = 1
    return {"bd_data_container": {"save_folder_path": str(save_folder), "data_dict": data_dict, "save_file_format": ".png"},
            "getitem_all": True, "getitem_all_switch": False,
            "original_index_array": np.arange(size) if holds_all else indices.numpy().astype(np.int64),
            "poison_indicator": indicator, "save_folder_path": str(save_folder)}


def export_victim(victim, folder, data_path: str | None = None) -> Path:
    """Write ``victim`` as BackdoorBench's ``<folder>/attack_result.pt`` with its ``bd_train_dataset`` and
    ``bd_test_dataset`` folders; returns the file.  BackdoorBench's defenses want the folder under its ``record/``
    and ``data_path`` (default ``./data/<dataset>``) under its ``data/``.  Nothing is left behind if it fails."""
    folder = Path(folder).expanduser()
    profile, ours = victim.profile, {v: k for k, v in DATASETS.items()}
    if victim.attack is None:
        raise PurifyError("a clean model is not an attack result; export a backdoored victim")
    if profile.model not in MODELS:
        raise PurifyError(f"model {profile.model!r} has no BackdoorBench counterpart here; allowed: {', '.join(MODELS)}")
    if profile.dataset not in ours:
        raise PurifyError(f"dataset {profile.dataset!r} has no BackdoorBench name; allowed: {', '.join(ours)}")
    if profile.width != WIDTH:
        raise PurifyError(f"BackdoorBench's preactresnet18 has width {WIDTH}; this victim has width {profile.width} (profile "
                          f"{profile.name}): export a paper-profile victim")
    if profile.train_size is not None or profile.test_size is not None or len(victim.splits.reserve):
        raise PurifyError(f"profile {profile.name} trains on a subset of {profile.dataset}; BackdoorBench's indices refer to the whole "
                          "training and test sets")
    check_new_folder(folder)
    name = ours[profile.dataset]
    state = {k: v.detach().cpu().clone() for k, v in victim.model.state_dict().items()}
    mean, std = torch.tensor(NORMALIZATION[name][0]), torch.tensor(NORMALIZATION[name][1])
    if not torch.allclose(state["normalize.mean"].flatten(), mean, atol=1e-6):
        raise PurifyError(f"this victim normalises {profile.dataset} with means {state['normalize.mean'].flatten().tolist()}, "
                          f"BackdoorBench with {mean.tolist()}: a mean shift cannot be folded into a convolution without bias")
    # BackdoorBench feeds conv1 (x - mean) / its std; ours saw (x - mean) / our std: scale each input channel by their ratio
    state["conv1.weight"] = state["conv1.weight"] * (std / state["normalize.std"].flatten()).view(1, -1, 1, 1)
    poisons, triggered, train, test = victim.poisoned_train(), victim.triggered_test(), victim.splits.train, victim.splits.test
    train_index = poisons.poisoned.long()
    test_index = triggered.indices if triggered.indices is not None else torch.nonzero(test.labels != victim.attack.target).squeeze(1)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        content = {"model_name": profile.model, "num_classes": victim.splits.num_classes, "model": to_backdoorbench(state),
                   "data_path": data_path or f"./data/{name}", "img_size": [*train.images.shape[2:], train.images.shape[1]],
                   "clean_data": name,
                   "bd_train": _bd_state(train_index, poisons.data.labels[train_index], train.labels[train_index], poisons.data.images[train_index],
                                         len(train), folder.resolve() / "bd_train_dataset", partial / "bd_train_dataset", holds_all=True),
                   "bd_test": _bd_state(test_index, torch.full((len(test_index),), victim.attack.target), triggered.labels, triggered.images,
                                        len(test), folder.resolve() / "bd_test_dataset", partial / "bd_test_dataset", holds_all=False)}
        torch.save(content, partial / "attack_result.pt")
        (partial / "purify_victim.json").write_text(json.dumps({"key": victim.record["key"], "sha256": victim.record.get("sha256"),
                                                                "metrics": victim.metrics, "profile": profile.name}, indent=1) + "\n")
        if folder.exists():
            folder.rmdir()  # empty, checked above
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder / "attack_result.pt"
