"""The four papers' published numbers (``../shared/paper_tables`` or ``$PURIFY_PAPER_TABLES``),
looked up under this project's attack and defense names, for tables that set them beside ours.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .report import PROJECT_ROOT

TABLES_ENV = "PURIFY_PAPER_TABLES"
ATTACK_NAMES = {"badnets": {"BadNet", "BadNets", "Badnets"}, "blended": {"Blended", "Blend"}, "sig": {"SIG"},
                "wanet": {"WaNet"}, "lf": {"LF"}, "lc": {"LC", "CLB"}, "iad": {"Input-aware", "Dyn-one"},
                "ssba": {"SSBA", "ISSBA"}, "adaptive_blend": {"Adaptive-Blend"}, "trojannn": {"Troj-one"}}
DEFENSE_NAMES = {"ft": {"FT", "Vanilla FT"}, "lp": {"LP"}, "fe_tuning": {"FE-tuning"}, "ft_init": {"FT-init"}, "fst": {"FST"},
                 "nft": {"NFT"}, "d3": {"D3"}, "pad": {"PAD"}, "pad_ft": {"PAD-FT"}, "mmbd": {"MM-BD"},
                 "ft_sam": {"FT-SAM", "FT+SAM"}, "anp": {"ANP"}, "ibau": {"I-BAU", "i-BAU"}, "nad": {"NAD"}, "fp": {"FP"}, "nc": {"NC"},
                 "sau": {"SAU"}, "rnp": {"RNP"}, "none": {"No Defense"}}


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
    rows = frame[(frame["dataset"] == dataset) & frame["attack"].isin(ATTACK_NAMES.get(attack, {attack}))
                 & frame["defense"].isin(DEFENSE_NAMES.get(defense, {defense})) & (frame["setting"].isna() | (frame["setting"] == "Nc=2500"))
                 & (pd.to_numeric(frame["poison_rate_pct"], errors="coerce").round(3) == round(rate * 100, 3))
                 & frame["metric"].isin(["ACC", "ASR"])
                 & (frame["model"].str.replace("-", "").str.contains("ResNet18") | (frame["model"] == "not stated"))]
    if rows.empty:
        return rows
    return (rows.pivot_table(index=["paper", "table", "model"], columns="metric", values="value", aggfunc="first")
            .reset_index().assign(attack=attack, rate=rate, defense=defense))
