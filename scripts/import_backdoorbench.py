"""Read a BackdoorBench attack result as a victim, print its ACC, ASR and RA, and run defenses on it.

    python scripts/import_backdoorbench.py record/badnet_demo/attack_result.pt --data-root data/cifar10 --defense fst nft

The file is loaded with ``weights_only=True`` (``purify_lib.interop.backdoorbench``); its clean data is read from
``--data-root``, by default where BackdoorBench itself would look (``data_path`` under the folder holding ``record``).
"""
from __future__ import annotations

import argparse

from purify_lib.cli import invoke
from purify_lib.profiles import PROFILES, default_profile_name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a BackdoorBench attack_result.pt (its bd_train_dataset and bd_test_dataset folders beside it)")
    parser.add_argument("--data-root", default=None, help="the clean dataset BackdoorBench's attack ran on (torchvision's folder)")
    parser.add_argument("--profile", default=default_profile_name(), help=f"the defenses' budgets: one of {', '.join(PROFILES)}")
    parser.add_argument("--defense", nargs="*", default=[], help="defenses to run on it (names from purify_lib.defenses.DEFENSES)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    from purify_lib.defend import defend
    from purify_lib.defenses import DEFENSES
    from purify_lib.errors import choose
    from purify_lib.interop.backdoorbench import import_victim

    for name in args.defense:
        choose("defense", name, DEFENSES)
    victim = import_victim(args.path, args.profile, data_root=args.data_root, device=args.device)
    m = victim.metrics
    print(f"{victim.attack.name}: {victim.profile.model} width {victim.profile.width} on {victim.profile.dataset}, target {victim.attack.target}, "
          f"{len(victim.record['poisoned_indices'])} poisoned training images ({victim.poison_rate:.2%}); "
          f"ACC {m['acc']:.1f}%, ASR {m['asr']:.1f}%, RA {m['ra']:.1f}%")
    for name in args.defense:
        after = defend(victim, name, victim.profile).history[-1]
        print(f"  {name}: ACC {after['acc']:.1f}%, ASR {after['asr']:.1f}%, RA {after['ra']:.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    invoke(main)
