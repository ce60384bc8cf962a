"""Write a zoo victim as a BackdoorBench attack result that its ``defense/*.py`` scripts load.

    python scripts/export_backdoorbench.py badnets:0.1 ../BackdoorBench/record/purify_badnets_0_1 --profile paper

BackdoorBench's PreActResNet18 has width 64, so only ``paper``-profile victims (or a profile of that width on the
whole dataset) can be written.  The folder gets ``attack_result.pt`` and its ``bd_train_dataset`` and
``bd_test_dataset`` images; BackdoorBench wants it under its ``record/`` folder, and the clean data under its ``data/``.
"""
from __future__ import annotations

import argparse

from purify_lib.cli import invoke, parse_specs
from purify_lib.errors import PurifyError
from purify_lib.profiles import PROFILES, default_profile_name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("victim", help="ATTACK:RATE, e.g. badnets:0.1")
    parser.add_argument("folder", help="a new (or empty) folder to write the attack result into")
    parser.add_argument("--profile", default=default_profile_name(), help=f"one of {', '.join(PROFILES)}")
    parser.add_argument("--data-path", default=None, help="the data_path the file records (default ./data/<dataset>)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    (attack, rate), = parse_specs([args.victim])

    from pathlib import Path

    from purify_lib.interop.backdoorbench import WIDTH, check_new_folder, export_victim
    from purify_lib.profiles import get_profile
    from purify_lib.zoo import check_requests, get_victim

    profile = get_profile(args.profile)
    if profile.width != WIDTH:  # before reading any data or training anything
        raise PurifyError(f"profile {profile.name} trains width {profile.width}; BackdoorBench's preactresnet18 has width {WIDTH}: use --profile paper")
    check_requests([(attack, rate)], profile)
    folder = Path(args.folder)
    check_new_folder(folder)  # before training anything
    path = export_victim(get_victim(attack, rate, profile, device=args.device), folder, args.data_path)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    invoke(main)
