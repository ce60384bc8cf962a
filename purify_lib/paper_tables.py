"""The four papers' published numbers (``../shared/paper_tables`` or ``$PURIFY_PAPER_TABLES``),
looked up under this project's attack and defense names, for tables that set them beside ours.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .attacks import ATTACKS
from .defenses import DEFENSES, budget
from .paths import PROJECT_ROOT

TABLES_ENV = "PURIFY_PAPER_TABLES"
def attack_names(attack: str) -> set[str]:
    """The names the papers' tables give attack ``attack``, as its class declares them (``published``)."""
    return set(ATTACKS[attack].published) if attack in ATTACKS else {attack}


def defense_names(defense: str) -> set[str]:
    """The names the papers' tables give defense ``defense``, as its module declares them; ``none``: no defense."""
    if defense == "none":
        return {"No Defense"}
    return set(DEFENSES[defense].published) if defense in DEFENSES else {defense}


# Which of our runs a published cell is set beside, where the paper ran a configuration other than our
# default for that defense: D3's FT is BackdoorBench's (``finetune.BACKDOORBENCH_FT``), not FST's.
BACKDOORBENCH_FT_ROW = "ft (BackdoorBench)"
COMPARED_RUN = {("D3", "ft"): BACKDOORBENCH_FT_ROW}
# What is known of the configuration behind a published cell, where it is not the one our run has.
CONFIGURATION = {
    ("D3", "ft"): "BackdoorBench's FT: 5% of the data, 100 epochs, batch 256, weight decay 5e-4",
    ("FST", "ft_sam"): "FST's FT+SAM: SAM in FST's own FT (its appendix), not BackdoorBench's FT-SAM that ours is",
    **{("NFT", name): "NFT's configuration for it is in its supplementary, not available here" for name in ("anp", "ibau", "ft_sam", "rnp")},
}
# What every cell of a paper shares and our runs do not (notebook 03 runs NFT's own triggers).
PAPER_SETUP = {"NFT": "NFT's victims: ResNet-18s trained 250 epochs on its own triggers; its defense data 1% held out"}


def compared_run(paper: str, defense: str) -> str:
    """The name of our table row a published cell of ``paper`` for ``defense`` is set beside."""
    return COMPARED_RUN.get((paper, defense), defense)


def configuration_note(paper: str, defense: str, profile, run_params: dict | None = None) -> str:
    """How the published cell's configuration relates to our run's: what the paper ran where it differs from
    our default, and where the profile cuts the budget (``run_params``: a cut of our own, by name)."""
    notes = [note for note in (CONFIGURATION.get((paper, defense)), PAPER_SETUP.get(paper)) if note]
    cut = {**budget(defense, profile), **(run_params or {})} if defense != "none" else {}
    if cut:
        notes.append(f"ours cut at profile {profile.name}: " + ", ".join(f"{k} {v}" for k, v in cut.items()))
    return "; ".join(notes) or "same configuration"


def tables_dir() -> Path | None:
    folder = Path(os.environ.get(TABLES_ENV, PROJECT_ROOT.parent / "shared" / "paper_tables"))
    return folder if folder.is_dir() else None


def load(folder: Path | None = None) -> pd.DataFrame:
    """Every per-cell row of the four CSVs, aggregate rows (averages, std, drops) left out."""
    folder = folder or tables_dir()
    if folder is None:
        return pd.DataFrame(columns=["paper", "table", "dataset", "model", "attack", "poison_rate_pct", "defense", "metric", "value", "setting"])
    frame = pd.concat([pd.read_csv(path, dtype={"table": str, "setting": str}) for path in sorted(folder.glob("*.csv"))], ignore_index=True)
    frame = frame[~frame["setting"].fillna("").str.contains("statistic=")]
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    frame["model"] = frame["model"].fillna("not stated")
    return frame


def published(frame: pd.DataFrame, attack: str, rate: float, defense: str, dataset: str = "CIFAR-10") -> pd.DataFrame:
    """Published ACC/ASR of ``defense`` against ``attack`` at ``rate`` on ``dataset``, one row per paper table.

    Only ResNet-18-family rows (or rows whose model is not stated) at the paper's default setting are taken: no ``setting`` axis, or PAD-FT's
    stated N_c = 2500.
    """
    rows = frame[(frame["dataset"] == dataset) & frame["attack"].isin(attack_names(attack))
                 & frame["defense"].isin(defense_names(defense)) & (frame["setting"].isna() | (frame["setting"] == "Nc=2500"))
                 & (pd.to_numeric(frame["poison_rate_pct"], errors="coerce").round(3) == round(rate * 100, 3))
                 & frame["metric"].isin(["ACC", "ASR"])
                 & (frame["model"].str.replace("-", "").str.contains("ResNet18") | (frame["model"] == "not stated"))]
    if rows.empty:
        return rows
    return (rows.pivot_table(index=["paper", "table", "model"], columns="metric", values="value", aggfunc="first")
            .reset_index().assign(attack=attack, rate=rate, defense=defense))
