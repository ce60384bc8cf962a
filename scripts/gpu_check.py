"""Measure the paper path on one GPU in under ten minutes, and print a Markdown report.

    python scripts/gpu_check.py --profile paper > gpu_check.md    # on a CUDA GPU (an H100 or H200)
    python scripts/gpu_check.py --profile smoke                   # anywhere, a CPU included: the same report at toy sizes

The report names the device, torch, CUDA, cuDNN and the precision chosen, then measures:

1. BadNets, WaNet and IAD victims at the profile's settings, trained ``--epochs`` epochs each in a
   throwaway zoo: seconds per epoch, the projection for the profile's epochs, peak GPU memory, the
   distance from the FLOP floor (``--gflop-per-image`` 3.3 at width 64, scaled by width squared, at
   ``--peak-tflops`` 790, an H200's dense bf16), and the memory format of the victim loaded back;
2. the five source lines with the most host synchronisations in one WaNet epoch
   (``torch.cuda.set_sync_debug_mode``; CUDA only);
3. every defense at the profile's settings on the short-trained BadNets victim, cheapest first, in one
   child process that a time guard stops (``--time-limit`` seconds for the whole run): seconds, ACC, ASR,
   peak memory, and the defenses the guard did not reach;
4. whether deterministic mode (``torch.use_deterministic_algorithms(True)``) trains a few steps.

IAD's mask generator is pretrained for one epoch here (the paper's 25 would take most of the budget), and
IAD's time includes it.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from purify_lib.cli import invoke  # noqa: E402
from purify_lib.errors import PurifyError  # noqa: E402

VICTIMS = (("badnets", {}), ("wanet", {}), ("iad", {"mask_epochs": 1}))
# Cheapest first, by the papers' budgets (epochs times data), so the time guard cuts the expensive end.
DEFENSE_ORDER = ("lp", "fe_tuning", "ft", "ft_init", "fst", "mmbd", "nad", "rnp", "nft", "pad", "fp", "ibau", "d3", "pad_ft",
                 "ft_sam", "anp", "nc", "sau")


def peak_memory_mb(device) -> float | str:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else "—"


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def header(profile, device, precision) -> list[str]:
    from purify_lib.provenance import machine

    facts = machine()
    gpu = f"{facts['gpu']} (compute capability {facts['gpu_capability']}), CUDA {facts['cuda']}, cuDNN {facts['cudnn']}, driver {facts['driver']}" \
        if "gpu" in facts else f"no GPU: {facts['cpu']}, {facts['threads']} threads"
    return [f"# GPU check, profile `{profile.name}`", "", f"- device: {device}; {gpu}", f"- torch {facts['torch']}, Python {facts['python']}",
            f"- precision chosen: {precision}", f"- victims: {profile.model} width {profile.width}, "
            f"{profile.recipe.epochs}-epoch recipe, batch {profile.recipe.batch_size}", ""]


def victims_section(args, profile, device, zoo: Path) -> tuple[list[str], object]:
    from dataclasses import replace

    from purify_lib.zoo import get_victim

    rows = ["## Victims", "", "| attack | epochs run | s per epoch | projected s for the recipe | FLOP floor s | x floor | "
            "peak MB | loaded victim channels_last | ACC | ASR |", "|---|---|---|---|---|---|---|---|---|---|"]
    recipe = replace(profile.recipe, epochs=args.epochs)
    badnets = None
    for attack, params in VICTIMS:
        reset_peak(device)
        victim = get_victim(attack, 0.1, profile, attack_params=params or None, device=device, zoo=zoo, progress=False, recipe=recipe)
        peak = peak_memory_mb(device)
        per_epoch = victim.record["train_seconds"] / args.epochs
        projected = per_epoch * profile.recipe.epochs
        images = victim.record["train_images"]
        floor = args.gflop_per_image * 1e9 * (profile.width / 64) ** 2 * images * profile.recipe.epochs / (args.peak_tflops * 1e12)
        against_floor = f"{floor:.1f} | {projected / floor:.1f}" if device.type == "cuda" else "— | —"  # a GPU's peak, not a CPU's
        loaded = get_victim(attack, 0.1, profile, attack_params=params or None, device=device, zoo=zoo, progress=False, recipe=recipe)
        conv = next(m for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d))
        rows.append(f"| {attack} | {args.epochs} | {per_epoch:.1f} | {projected:.0f} | {against_floor} | {peak} | "
                    f"{conv.weight.is_contiguous(memory_format=torch.channels_last)} | {victim.metrics['acc']:.1f} | {victim.metrics['asr']:.1f} |")
        print(rows[-1], file=sys.stderr, flush=True)
        badnets = badnets or victim
    return rows + [""], badnets


def sync_section(profile, device) -> list[str]:
    """Count the host synchronisations of one WaNet epoch by the purify_lib source line that caused them."""
    from dataclasses import replace

    from purify_lib.attacks import make_attack
    from purify_lib.data import load_dataset, make_splits
    from purify_lib.models import make_model
    from purify_lib.train import train_model

    rows = ["## Host synchronisations in one WaNet epoch", ""]
    if device.type != "cuda":
        return rows + ["Not measured: `torch.cuda.set_sync_debug_mode` needs CUDA.", ""]
    splits = make_splits(load_dataset(profile.dataset), 0, 0.0, profile.train_size, profile.test_size, defense_from="train")
    model = make_model(profile.model, splits.num_classes, profile.width).to(device)
    lines = collections.Counter()
    shown = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack() if "purify_lib" in f.filename]
        where = frames[-1] if frames else None
        lines[f"{Path(where.filename).name}:{where.lineno} `{where.line}`" if where else f"{filename}:{lineno}"] += 1

    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            train_model(model, splits.train, replace(profile.recipe, epochs=1), make_attack("wanet"), 0.1, progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = shown
    rows += ["| synchronisations | source line |", "|---|---|", *(f"| {n} | {where} |" for where, n in lines.most_common(5))]
    return rows + ["", f"{sum(lines.values())} in all." if lines else "None.", ""]


def run_defenses(args) -> int:
    """Run the named defenses on the zoo's short-trained BadNets victim, one JSON line each as it ends (a child process)."""
    from dataclasses import replace

    from purify_lib.defend import defend
    from purify_lib.metrics import pick_device
    from purify_lib.profiles import get_profile
    from purify_lib.zoo import get_victim

    profile = get_profile(args.profile)
    device = pick_device(args.device)
    victim = get_victim("badnets", 0.1, profile, device=device, zoo=args.zoo, progress=False, recipe=replace(profile.recipe, epochs=args.epochs))
    for name in args.defenses.split(","):
        reset_peak(device)
        try:
            result = defend(victim, name, cache=False)
        except Exception as error:  # reported in its row; the others still run
            print(json.dumps({"defense": name, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"}), flush=True)
            continue
        last = result.history[-1]
        print(json.dumps({"defense": name, "seconds": round(result.seconds, 1), "acc": last["acc"], "asr": last["asr"],
                          "peak_mb": peak_memory_mb(device)}), flush=True)
    return 0


def defenses_section(args, deadline: float, zoo: Path) -> list[str]:
    """Every defense in one child process (one start-up, one victim load), stopped at the deadline."""
    rows = ["## Defenses on the short-trained BadNets victim, cheapest first", "",
            "| defense | seconds | ACC | ASR | peak MB |", "|---|---|---|---|---|"]
    command = [sys.executable, __file__, "--profile", args.profile, "--device", args.device, "--epochs", str(args.epochs),
               "--zoo", str(zoo), "--defenses", ",".join(DEFENSE_ORDER)]
    left = max(deadline - time.time(), 1.0)
    try:
        output, guard = subprocess.run(command, capture_output=True, text=True, timeout=left).stdout, False
    except subprocess.TimeoutExpired as stopped:
        output, guard = stopped.stdout.decode() if isinstance(stopped.stdout, bytes) else (stopped.stdout or ""), True
    finished = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    for result in finished:
        if "error" in result:
            rows.append(f"| {result['defense']} | failed: {result['error']} | | | |")
        else:
            rows.append(f"| {result['defense']} | {result['seconds']} | {result['acc']:.1f} | {result['asr']:.1f} | {result['peak_mb']} |")
    missing = list(DEFENSE_ORDER[len(finished):])
    if guard and missing:
        rows.append(f"| {missing[0]} | stopped by the time guard | | | |")
    note = (f"The time guard ({left:.0f} s for this section) stopped the run in {missing[0]}; not reached: {', '.join(missing[1:]) or 'none'}."
            if guard and missing else "Every defense ran.")
    return rows + ["", note, ""]


def deterministic_section(profile, device) -> list[str]:
    from purify_lib.data import ImageSet
    from purify_lib.models import make_model
    from purify_lib.train import Recipe, train_model

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs for deterministic matrix products
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model = make_model(profile.model, 10, profile.width).to(device)
        data = ImageSet(torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8), torch.arange(256) % 10)
        train_model(model, data, Recipe(epochs=1, batch_size=64), progress=False)
        verdict = "runs: 4 training steps of the victim model under `torch.use_deterministic_algorithms(True)`."
    except RuntimeError as error:
        verdict = f"fails: {str(error).splitlines()[0][:300]}"
    finally:
        torch.use_deterministic_algorithms(was)
    return ["## Deterministic mode", "", verdict, ""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper", help="smoke, cpu or paper (default paper)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=1, help="epochs each victim is trained for the timings (default 1)")
    parser.add_argument("--time-limit", type=float, default=540, help="seconds for the whole check (default 540)")
    parser.add_argument("--peak-tflops", type=float, default=790, help="the device's dense bf16 TFLOP/s for the floor (H200: about 790)")
    parser.add_argument("--gflop-per-image", type=float, default=3.3, help="training GFLOP per image at width 64 (forward and backward)")
    parser.add_argument("--zoo", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--defenses", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1 or not args.time_limit > 0 or not args.peak_tflops > 0:
        raise PurifyError(f"--epochs {args.epochs}, --time-limit {args.time_limit} and --peak-tflops {args.peak_tflops} must be above 0")
    if args.defenses:
        return run_defenses(args)

    from purify_lib.metrics import pick_device
    from purify_lib.precision import resolve_precision
    from purify_lib.profiles import get_profile

    started = time.time()
    profile = get_profile(args.profile)
    device = pick_device(args.device)
    report = header(profile, device, resolve_precision(device))
    with tempfile.TemporaryDirectory(prefix="gpu-check-zoo-") as folder:
        zoo = Path(folder)
        victims, _ = victims_section(args, profile, device, zoo)
        report += victims
        report += sync_section(profile, device)
        report += deterministic_section(profile, device)
        report += defenses_section(args, started + args.time_limit, zoo)
    report.append(f"Wall time of the check: {time.time() - started:.0f} s (limit {args.time_limit:.0f} s).")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    invoke(main)
