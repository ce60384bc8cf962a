"""Train (or fetch from the zoo) a set of victims and print their ACC, ASR, RA and training time.

    python scripts/train_victims.py --profile cpu badnets:0.1 blended:0.01

With no victims named, trains the demo set: BadNets, Blended and WaNet at 10%, BadNets
and Blended at 1%.  The table is also written to ``figures/victims_<profile>.md``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from purify_lib.cli import parse_specs, invoke
from purify_lib.profiles import PROFILES, default_profile_name, get_profile

DEMO = ["badnets:0.1", "blended:0.1", "wanet:0.1", "badnets:0.01", "blended:0.01"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("victims", nargs="*", default=DEMO, help="ATTACK:RATE pairs (default: the demo set)")
    parser.add_argument("--profile", default=default_profile_name(), help=f"one of {', '.join(PROFILES)}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="figures", help="folder for the Markdown table")
    args = parser.parse_args(argv)
    specs = parse_specs(args.victims)
    profile = get_profile(args.profile)

    from purify_lib.zoo import check_requests, get_victim

    check_requests(specs, profile)

    # threads: the torch threads the victim was trained with (its record says), since minutes depend on them.
    rows = ["| attack | rate | ACC | ASR | RA | minutes | threads | precision | backdoored | cache |", "|---|---|---|---|---|---|---|---|---|---|"]
    for attack, rate in specs:
        victim = get_victim(attack, rate, profile, device=args.device)
        m = victim.metrics
        rows.append(f"| {attack} | {rate:g} | {m['acc']:.1f} | {m['asr']:.1f} | {m['ra']:.1f} | "
                    f"{victim.record['train_seconds'] / 60:.1f} | {victim.record['versions'].get('threads', '?')} | "
                    f"{victim.record['config']['precision']} | "
                    f"{'yes' if victim.backdoored else 'NO'} | {'hit' if victim.cache_hit else 'trained'} |")
        print(rows[-1], flush=True)
    recipe = profile.recipe
    table = "\n".join([f"Victims, profile `{profile.name}` ({profile.model} width {profile.width}, "
                       f"{profile.train_size or 'all the'} training images, {recipe.epochs} epochs, batch {recipe.batch_size}, "
                       f"{recipe.schedule} lr {recipe.lr:g}, warmup {recipe.warmup_fraction:g}); CIFAR-10 source as loaded; "
                       f"test metrics on {profile.test_size or 'all the'} test images.", "", *rows])
    out = Path(args.out) / f"victims_{profile.name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    print(f"\n{table}\n\nwritten to {out}")
    return 0


if __name__ == "__main__":
    invoke(main)
