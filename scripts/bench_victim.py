"""Benchmark: our victim-training loop against a BackdoorBench-style one, in one run.

Both train the same PreAct-ResNet18 (same initial weights, SGD lr 0.01, batch 128) on the
same CIFAR-10 images with RandomCrop(32, pad 4) + flip.  Ours holds uint8 tensors on the
device, augments whole batches there and runs under the precision ``auto`` picks (bf16 on a
CPU with AVX-512 BF16 or AMX); the baseline is what BackdoorBench does: fp32, a torchvision
Dataset of PIL images, per-sample transforms, a DataLoader.  Our loop is also timed in fp32,
so the table tells the data-pipeline gain (``fp32 ratio``) from the precision gain.  Timings
on a shared 2-core machine are noisy: read the ratios, taken in one run.

    python scripts/bench_victim.py --widths 16 64 --images 2048 512
    python scripts/bench_victim.py --widths 16 --images 2048 --compile   # and under torch.compile

The "model work alone" column is the forward, backward and step on one batch already on the device: the
ceiling any data pipeline is bounded by, so the distance from ours to it is what the pipeline still costs.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from purify_lib.cli import invoke
from purify_lib.data import load_dataset
from purify_lib.metrics import pick_device
from purify_lib.models import make_model
from purify_lib.precision import autocast, resolve_precision
from purify_lib.train import Recipe, train_model


class PILDataset(torch.utils.data.Dataset):
    """BackdoorBench keeps PIL images and transforms each sample in the worker."""

    def __init__(self, images, labels, transform):
        self.images = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(self.images[index]), self.labels[index]


def baseline_epoch(model, images, labels, device, workers: int) -> float:
    # No Normalize here: our models normalise internally, so both loops compute the same thing.
    transform = v2.Compose([v2.PILToTensor(), v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)])
    loader = torch.utils.data.DataLoader(PILDataset(images, labels, transform), batch_size=128, shuffle=True,
                                         num_workers=workers, persistent_workers=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    started = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return len(labels) / (time.perf_counter() - started)


def ours_epoch(model, data, precision: str, compile: bool = False) -> float:
    started = time.perf_counter()
    train_model(model, data, Recipe(epochs=1, lr=0.01, schedule="constant"), progress=False, precision=precision, compile=compile)
    return len(data) / (time.perf_counter() - started)


def compute_only(model, data, precision: str, device) -> float:
    """The model's own work alone: forward, backward and SGD step on one batch already on the device, as many
    times as an epoch has batches (no indexing, augmentation or conversion): what no data pipeline can beat."""
    x = data.images[:128].to(device).float().div(255).contiguous(memory_format=torch.channels_last)
    y = data.labels[:128].to(device)
    model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    steps = -(-len(data) // 128)
    started = time.perf_counter()
    for _ in range(steps):
        with autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * 128 / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="our training loop vs a BackdoorBench-style loop")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--images", type=int, nargs="+", default=[2048, 512], help="images per timed epoch, one per width")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the baseline")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also time our loop under torch.compile (its compile timed apart)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    precision = resolve_precision(device)
    dataset = load_dataset("cifar10")
    print(f"device {device}, precision {precision}, torch threads {torch.get_num_threads()}, baseline DataLoader workers {args.workers}")
    compiled = " | ours compiled img/s | compile s | compiled ratio" if args.compile else ""
    print(f"| width | images | ours {precision} img/s | ours fp32 img/s | BackdoorBench-style fp32 img/s | ratio | fp32 ratio "
          f"| {precision} model work alone img/s{compiled} |\n" + "|---" * (8 + 3 * args.compile) + "|")
    for width, count in zip(args.widths, args.images * len(args.widths)):
        subset = dataset.train.subset(torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(0))[:count])
        torch.manual_seed(0)
        reference = make_model("preactresnet18", 10, width).to(device)
        warm = subset.subset(torch.arange(min(256, count)))
        for warm_precision in {precision, "fp32"}:  # first-call costs (allocator, kernels) for every loop
            ours_epoch(copy.deepcopy(reference), warm, warm_precision)
        ours = ours_epoch(copy.deepcopy(reference), subset, precision)
        ours_fp32 = ours_epoch(copy.deepcopy(reference), subset, "fp32")
        base = baseline_epoch(copy.deepcopy(reference), subset.images, subset.labels, device, args.workers)
        alone = compute_only(copy.deepcopy(reference), subset, precision, device)
        row = f"| {width} | {count} | {ours:.0f} | {ours_fp32:.0f} | {base:.0f} | {ours / base:.2f}x | {ours_fp32 / base:.2f}x | {alone:.0f} |"
        if args.compile:
            model = copy.deepcopy(reference)
            started = time.perf_counter()
            ours_epoch(model, warm, precision, compile=True)  # pays the compile (and a first run of the compiled code)
            compile_seconds = time.perf_counter() - started
            fast = ours_epoch(model, subset, precision, compile=True)
            row += f" {fast:.0f} | {compile_seconds:.0f} | {fast / base:.2f}x |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    invoke(main)
