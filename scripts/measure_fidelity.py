"""Measure what the fidelity fixes move, one section at a time, on cpu-profile victims from the zoo.

    python scripts/measure_fidelity.py victims            # the retrained victims beside the old ones
    python scripts/measure_fidelity.py badnets1           # BadNets-1%: the poison pool and the final BatchNorm, one recipe
    python scripts/measure_fidelity.py defense-data       # FT, FST, NFT, D3: defense data from the training set or held out
    python scripts/measure_fidelity.py nc                 # Neural Cleanse's detection at several reverse-engineering budgets
    python scripts/measure_fidelity.py nc-before --passes 5  # the NC code before the fixes, same victim and data
    python scripts/measure_fidelity.py rnp                # RNP at both batch sizes, three pruning rules
    python scripts/measure_fidelity.py nft                # NFT on NFT's own triggers, and with the triggered-image oracle
    python scripts/measure_fidelity.py ft-backdoorbench   # BackdoorBench's FT (D3's FT cells) beside FST's
    python scripts/measure_fidelity.py published-configs  # which published cells ran another configuration than ours

Each section prints a Markdown table and writes it to ``figures/fidelity/<section>.md`` (``nc_passes_<P>.md``
for ``nc``) with the
processor and thread count it ran on.  Victims come from the zoo (trained when missing); defense runs
that go through ``defend`` are cached like every other.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from purify_lib.cli import invoke
from purify_lib.data import balanced_subset
from purify_lib.defend import defend
from purify_lib.defenses import DEFENSES, budget, parameters_of, purify
from purify_lib.defenses.finetune import BACKDOORBENCH_FT
from purify_lib.defenses.rnp import prune_by_masks
from purify_lib.errors import PurifyError
from purify_lib.metrics import Evaluator, evaluate
from purify_lib.profiles import get_profile
from purify_lib.provenance import machine
from purify_lib.zoo import get_victim

OUT = Path("figures/fidelity")
NFT_TRIGGERS = {"variant": "nft", "pool": "non_target"}


def header() -> str:
    m = machine()
    return (f"Processor {m['cpu']}; this script ran with {m['threads']} torch threads (a victim's own are in its row), "
            f"torch {m['torch']}; profile cpu.")


def table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
                      *("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows)])


def write(section: str, intro: str, rows: list[dict]) -> None:
    text = f"{intro}\n\n{header()}\n\n{table(rows)}\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{section}.md").write_text(text)
    print(text, flush=True)


def victim_row(zoo_victim, **labels) -> dict:
    m = zoo_victim.metrics
    return {**labels, "ACC": m["acc"], "ASR": m["asr"], "minutes": zoo_victim.record["train_seconds"] / 60,
            "threads": zoo_victim.record["versions"]["threads"], "backdoored": "yes" if zoo_victim.backdoored else "NO"}


def result_row(result, **labels) -> dict:
    last = result.history[-1]
    return {**labels, "ACC": last["acc"], "ASR": last["asr"], "seconds": result.seconds}


def victims(args) -> None:
    rows = []
    for attack, rate in (("badnets", 0.1), ("badnets", 0.01), ("blended", 0.01), ("blended", 0.1)):
        rows.append(victim_row(get_victim(attack, rate, "cpu", progress=False), attack=attack, rate=f"{rate:g}"))
    write("victims", "Victims after the fidelity fixes (one stream per random draw; all 50,000 training images). "
          "The old ones (one stream; 47,500 images) are in `docs/history/victims_cpu_zoo_format2.md`.", rows)


class FinalNormPreAct(torch.nn.Module):
    """PreAct-ResNet18 with a BatchNorm and ReLU between ``layer4`` and the pooling (the model before ZOO_FORMAT 2)."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.bn = torch.nn.BatchNorm2d(base.head.in_features)

    def forward(self, x):
        b = self.base
        out = b.layer4(b.layer3(b.layer2(b.layer1(b.conv1(b.normalize(x))))))
        return b.head(torch.relu(self.bn(out)).mean((2, 3)))


def badnets1(args) -> None:
    """BadNets at 1% on one recipe: poisons from every class or the other classes, with or without the final BatchNorm."""
    from purify_lib.attacks import make_attack
    from purify_lib.models import make_model
    from purify_lib.seeds import seed_global
    from purify_lib.train import train_model

    rows = []
    base = get_victim("badnets", 0.01, "cpu", progress=False)  # the standard model, pool "all"
    rows.append(victim_row(base, model="PreAct (BackdoorBench)", pool="all"))
    rows.append(victim_row(get_victim("badnets", 0.01, "cpu", attack_params={"pool": "non_target"}, progress=False),
                           model="PreAct (BackdoorBench)", pool="non_target"))
    profile = get_profile("cpu")
    attack = make_attack("badnets")
    poisoned = attack.poison(base.splits.train, 0.01, seed=0)
    with torch.random.fork_rng(devices=[]):
        seed_global("model-init", profile.recipe.seed)
        model = FinalNormPreAct(make_model("preactresnet18", 10, profile.width))
    started = time.perf_counter()
    train_model(model, poisoned.data, profile.recipe, progress=False, precision=base.record["config"]["precision"])
    metrics = evaluate(model, base.splits.test, attack)
    rows.append({"model": "PreAct + final BatchNorm, ReLU", "pool": "all", "ACC": metrics["acc"], "ASR": metrics["asr"],
                 "minutes": (time.perf_counter() - started) / 60, "threads": torch.get_num_threads(),
                 "backdoored": "yes" if metrics["asr"] >= 50 else "NO"})
    write("badnets1", "BadNets at 1% (500 poisons) on the cpu recipe, 13 epochs, new random streams; which of the two "
          "differences from the earlier probe that learned it matters.", rows)


CLEAN_DATA_DEFENSES = ("ft", "fst", "nft", "d3")


def defense_data(args) -> None:
    """One held-out victim (trained on 47,500 images), each defense on a class-balanced subset of the same size and seed
    drawn from its training images (the papers' protocol) or from its 2,500 held-out images."""
    victim = get_victim("badnets", 0.1, "cpu", defense_data="reserve", progress=False)
    profile = victim.profile
    evaluator = Evaluator(victim.splits.test, victim.attack, profile.progress_eval_size)
    rows = [victim_row(victim, defense="none (victim)")]
    for name in CLEAN_DATA_DEFENSES:
        count = round(DEFENSES[name].fraction * victim.splits.full_train_size)
        settings = {**parameters_of(name), **budget(name, profile)}
        for source, pool in (("training set", victim.splits.train), ("held out", victim.splits.reserve)):
            data = balanced_subset(pool, count, victim.splits.num_classes, seed=0)
            rows.append(result_row(purify(name, victim.model, data, evaluator, **settings), defense=name, data=source, images=len(data)))
            print(table(rows[-1:]), flush=True)
    write("defense_data", "Defense data from the victim's own training images or held out, on one BadNets-10% victim that "
          "held 2,500 images out (`defense_data=\"reserve\"`); same sizes, same seeds, cpu budgets.", rows)


def nc_row(result, target: int, **labels) -> dict:
    """What NC detected: the classes flagged, the anomaly index, the median mask norm and the target's."""
    norms = result.extra["mask_l1"]
    return result_row(result, **labels, flagged=result.extra["flagged"], **{"anomaly index": result.extra["anomaly_index"],
                      "median mask L1": sorted(norms)[len(norms) // 2], "target's mask L1": norms[target]})


def nc(args) -> None:
    victim = get_victim("badnets", 0.1, "cpu", progress=False)
    rows = []
    for passes in args.passes:
        result = defend(victim, "nc", reverse_epochs=passes)
        rows.append(nc_row(result, victim.attack.target, passes=passes))
        print(table(rows[-1:]), flush=True)
    write("nc_passes_" + "_".join(map(str, args.passes)), "Neural Cleanse on BadNets-10% (target 0) at several reverse-engineering budgets (passes per class over "
          "the 2,500 defense images; BackdoorBench's is 80), with augmentation, fp32 and the first-pass fallback.", rows)


NC_BEFORE = "2db94c8"  # the last commit before the NC fixes


def nc_before(args) -> None:
    """The NC code as it was before the fixes (read from git), on the same victim and data, at the cpu budget."""
    import importlib.util
    import subprocess
    import sys
    import tempfile

    source = subprocess.run(["git", "show", f"{NC_BEFORE}:purify_lib/defenses/nc.py"], capture_output=True, text=True, check=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location("purify_lib.defenses._nc_before", handle.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    victim = get_victim("badnets", 0.1, "cpu", progress=False)
    evaluator = Evaluator(victim.splits.test, victim.attack, victim.profile.progress_eval_size)
    rows = []
    for passes in args.passes:
        result = module.nc(victim.model, victim.splits.defense_data(DEFENSES["nc"].fraction), evaluator, reverse_epochs=passes,
                           **{k: v for k, v in budget("nc", victim.profile).items() if k != "reverse_epochs"})
        rows.append(nc_row(result, victim.attack.target, code=f"before ({NC_BEFORE})", passes=passes))
    write("nc_before", f"Neural Cleanse as the code was at {NC_BEFORE} (no augmentation, bf16, the last pass's fallback mask) "
          "on the same BadNets-10% victim and defense data as `nc_passes_*.md`.", rows)


def rnp(args) -> None:
    rows = []
    for attack in ("badnets", "blended"):
        victim = get_victim(attack, 0.1, "cpu", progress=False)
        triggered = victim.triggered_test()
        for batch_size in (128, 256):
            result = defend(victim, "rnp", batch_size=batch_size)
            extra = result.extra
            stages = {f"{stage} ACC/ASR": f"{extra[stage]['acc']:.1f} / {extra[stage]['asr']:.1f}" for stage in ("unlearned", "recovered")}
            for rule, value in (("threshold", 0.7), ("threshold", 0.2), ("number", round(0.02 * extra["channels"]))):
                pruned_model, pruned = prune_by_masks(victim.model, extra["masks"], **{rule: value})
                m = evaluate(pruned_model, victim.splits.test, victim.attack, triggered=triggered)
                rows.append({"victim": f"{attack} 0.1", "batch": batch_size, "steps per epoch": -(-500 // batch_size), **stages,
                             "rule": f"{rule} {value}", "pruned": f"{pruned} of {extra['channels']}", "ACC": m["acc"], "ASR": m["asr"],
                             "seconds": result.seconds})
                print(table(rows[-1:]), flush=True)
    write("rnp", "RNP with the papers' defense data (500 training images), BackdoorBench's batch 256 and the official code's 128; "
          "ACC/ASR on the whole test set after unlearning, after recovery and pruned by each rule "
          "from the same masks.", rows)


def nft(args) -> None:
    rows = []
    for attack in args.nft_attacks:
        for triggers, params in (("NFT's", NFT_TRIGGERS), ("BackdoorBench's", {})):
            victim = get_victim(attack, 0.1, "cpu", attack_params=params, progress=False)
            labels = {"victim": f"{attack} 0.1", "triggers": triggers}
            rows.append(victim_row(victim, **labels, defense="none"))
            rows.append(result_row(defend(victim, "nft"), **labels, defense="NFT"))
            rows.append(result_row(defend(victim, "nft", triggered_oracle=True), **labels, defense="NFT, oracle: triggered images, true labels"))
            print(table(rows[-3:]), flush=True)
    write("nft", "NFT on NFT's own triggers (checkerboard corner blended at 0.6; uniform noise blended at 0.2; poisons from the "
          "other classes) and on BackdoorBench's, and the same masks tuned on the defense images with the trigger stamped "
          "and their true labels kept, an oracle no defender has.", rows)


def ft_backdoorbench(args) -> None:
    rows = []
    for attack, rate in (("badnets", 0.1), ("blended", 0.1)):
        victim = get_victim(attack, rate, "cpu", progress=False)
        labels = {"victim": f"{attack} {rate:g}"}
        rows.append(result_row(defend(victim, "ft"), **labels, configuration="FST's FT: 2%, 10 epochs, batch 128, no weight decay"))
        for epochs in args.ft_epochs:
            config = {**BACKDOORBENCH_FT, "epochs": epochs}
            rows.append(result_row(defend(victim, "ft", **config), **labels,
                                   configuration=f"BackdoorBench's FT: 5%, {epochs} epochs, batch 256, weight decay 5e-4"))
        print(table(rows[-1 - len(args.ft_epochs):]), flush=True)
    write("ft_backdoorbench", "FST's FT (our `ft`) and BackdoorBench's (D3's FT cells), on the same victims.", rows)


def published_configs(args) -> None:
    """Every (paper, defense) with published CIFAR-10 cells in a main table, the run of ours each is set beside,
    and how their configurations differ at the cpu profile."""
    from purify_lib import paper_tables

    frame = paper_tables.load()
    profile = get_profile("cpu")
    names = {published: ours for ours in [*DEFENSES, "none"] for published in paper_tables.defense_names(ours)}
    cells = frame[(frame["dataset"] == "CIFAR-10") & frame["metric"].isin(["ACC", "ASR"]) & frame["setting"].isna()]
    rows = []
    for (paper, table_name, defense), part in cells.groupby(["paper", "table", "defense"]):
        ours = names.get(defense)
        if ours is None or ours == "none":
            continue
        compared = paper_tables.compared_run(paper, ours)
        cut = {"epochs": 20} if compared == paper_tables.BACKDOORBENCH_FT_ROW else None  # notebook 06's cpu default
        rows.append({"paper": paper, "table": table_name, "published defense": defense, "our run": compared, "cells": len(part) // 2,
                     "configuration": paper_tables.configuration_note(paper, ours, profile, cut)})
    write("published_configs", "Each published defense column beside the run of ours it is compared with, and how the "
          "configurations differ at the cpu profile (`paper_tables.configuration_note`).", rows)


SECTIONS = {"victims": victims, "badnets1": badnets1, "defense-data": defense_data, "nc": nc, "nc-before": nc_before, "rnp": rnp, "nft": nft,
            "ft-backdoorbench": ft_backdoorbench, "published-configs": published_configs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="+", help=f"any of {', '.join(SECTIONS)}")
    parser.add_argument("--passes", type=int, nargs="+", default=[5, 20], help="nc: reverse-engineering passes per class")
    parser.add_argument("--nft-attacks", nargs="+", default=["badnets", "blended"], choices=["badnets", "blended"],
                        help="nft: the attacks whose NFT and BackdoorBench trigger sets are compared")
    parser.add_argument("--ft-epochs", type=int, nargs="+", default=[20, 100], help="ft-backdoorbench: epochs of BackdoorBench's FT")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        raise PurifyError(f"unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    for section in args.sections:
        SECTIONS[section](args)
    return 0


if __name__ == "__main__":
    invoke(main)
