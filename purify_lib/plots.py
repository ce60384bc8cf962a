"""One look for every figure and table, and where they are written.

``save_figure`` writes PNG and PDF, ``save_table`` CSV and Markdown, each atomically and each
carrying the run record (commit, profile, parameters, versions; see ``provenance.run_record``).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .files import atomic_path

PALETTE = "colorblind"
NOT_LEARNED = "not learned"  # a victim whose backdoor was not learned (ASR below the zoo's MIN_ASR before any defense)


def victim_label(victim) -> str:
    """``attack rate`` as figures name a victim, marked when its backdoor was not learned, so that no
    reader takes its low ASR after a defense for a removal."""
    variant = getattr(victim.attack, "variant", "backdoorbench")
    return (f"{victim.attack.name} {victim.poison_rate:g}" + (f" ({variant.upper()}'s trigger)" if variant != "backdoorbench" else "")
            + ("" if victim.backdoored else f" ({NOT_LEARNED})"))


def mark_not_learned(ax, frame: pd.DataFrame, x: str, y: str) -> None:
    """Hollow black rings over the points of ``frame`` whose victim was not learned (its ``backdoored`` column)."""
    hollow = frame[~frame["backdoored"].astype(bool)]
    if not hollow.empty:
        ax.scatter(hollow[x], hollow[y], s=90, facecolors="none", edgecolors="black", linewidths=1.2, zorder=5,
                   label=f"victim {NOT_LEARNED}")


def style() -> None:
    """The project's figure style: seaborn's whitegrid, colour-blind palette, compact fonts."""
    sns.set_theme(style="whitegrid", palette=PALETTE, context="paper", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight", "axes.titlesize": "medium"})


def save_figure(fig, name: str, folder: str | Path, record: dict | None = None) -> list[Path]:
    """Write ``fig`` as ``<folder>/<name>.png`` and ``.pdf``, the run record in each file's metadata."""
    folder = Path(folder)
    meta = json.dumps(record or {}, sort_keys=True, default=str)
    paths = []
    for suffix, metadata in ((".png", {"Software": "purify", "Description": meta}), (".pdf", {"Creator": "purify", "Subject": meta})):
        path = folder / f"{name}{suffix}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], metadata=metadata)
        paths.append(path)
    return paths


def markdown(frame: pd.DataFrame, digits: int = 1) -> str:
    """A GitHub Markdown table (floats rounded; NaN left empty), without needing ``tabulate``."""
    def cell(value):
        if isinstance(value, float):
            # Percentages to ``digits`` places; small numbers (rates, DER) to three significant digits.
            return "" if value != value else f"{value:.{digits}f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"
        return "" if value is None else str(value).replace("|", "\\|")  # a bare pipe would split the cell

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows]) + "\n"


def save_table(frame: pd.DataFrame, name: str, folder: str | Path, caption: str = "", record: dict | None = None) -> list[Path]:
    """Write ``frame`` as ``<folder>/<name>.csv`` and ``.md`` (caption above, run record below)."""
    folder = Path(folder)
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    with atomic_path(csv) as tmp:
        frame.to_csv(tmp, index=False)
    if "backdoored" in frame.columns:  # in the Markdown a reader sees, say it in words
        frame = frame.assign(backdoored=frame["backdoored"].map(lambda v: "yes" if v is True or v == 1 else NOT_LEARNED if v is False or v == 0 else v))
    footer = f"\n<!-- run record: {json.dumps(record, sort_keys=True, default=str)} -->\n" if record else ""
    with atomic_path(md) as tmp:
        tmp.write_text((f"{caption}\n\n" if caption else "") + markdown(frame) + footer)
    return [csv, md]


def metric_lines(frame: pd.DataFrame, x: str, hue: str, col: str, title: str, metrics=("acc", "asr"), log_x: bool = False):
    """One panel per (metric, value of ``col``): each ``hue`` a line of ``metric`` against ``x``, victims whose
    backdoor was not learned ringed.  Returns the figure."""
    columns = list(dict.fromkeys(frame[col]))
    fig, axes = plt.subplots(len(metrics), len(columns), figsize=(4.2 * len(columns), 3.25 * len(metrics)), squeeze=False, sharex=True)
    for j, value in enumerate(columns):
        part = frame[frame[col] == value]
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            sns.lineplot(data=part, x=x, y=metric, hue=hue, style=hue, markers=True, dashes=False, ax=ax, legend=(i == 0 and j == len(columns) - 1))
            mark_not_learned(ax, part, x, metric)
            ax.set(xscale="log" if log_x else "linear", xlabel=x, ylabel=metric.upper() + " (%)", title=f"{value}: {metric.upper()}")
    if axes[0, -1].get_legend():
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title)
    return fig


def heatmaps(frame: pd.DataFrame, index: str, columns: str, title: str, order=None, metrics=(("asr", "rocket_r"), ("acc", "mako"))):
    """Side-by-side annotated heatmaps of each metric, ``index`` down (named once, on the left), ``columns`` across
    (``order``: which, in what order; default all, as they first appear)."""
    rows, order = list(dict.fromkeys(frame[index])), order or list(dict.fromkeys(frame[columns]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(13, 0.5 * len(rows) + 2.2), sharey=True, squeeze=False)
    for ax, (metric, cmap) in zip(axes[0], metrics):
        grid = frame.pivot_table(index=index, columns=columns, values=metric, sort=False).reindex(index=rows, columns=order)
        sns.heatmap(grid, annot=True, fmt=".0f", cmap=cmap, vmin=0, vmax=100, ax=ax, cbar=False)
        ax.set(title=f"{metric.upper()} (%) after each defense", xlabel="", ylabel="")
    fig.suptitle(title)
    return fig


def panels(frame: pd.DataFrame, x: str, hue: str, columns, title: str, xlabel: str | None = None, vline: float | None = None,
           width: float = 3.75, log_x: bool = False, legend: str = "last"):
    """One panel per ``(column, label[, panel title])`` of ``columns``: a line per ``hue`` of that column against
    ``x``, the legend on the ``last`` (or ``first``) panel, an optional dashed line at ``vline``.  Returns the figure."""
    fig, axes = plt.subplots(1, len(columns), figsize=(width * len(columns), 3.2), squeeze=False)
    for ax, (metric, label, *panel_title) in zip(axes[0], columns):
        sns.lineplot(data=frame, x=x, y=metric, hue=hue, marker="o", ax=ax, legend=ax is axes[0, -1 if legend == "last" else 0])
        if vline is not None:
            ax.axvline(vline, color="grey", lw=0.8, ls="--")
        ax.set(ylabel=label, xlabel=xlabel or x, xscale="log" if log_x else "linear", title=panel_title[0] if panel_title else "")
    fig.suptitle(title)
    return fig


def bars(frame: pd.DataFrame, x: str, y: str, hue: str, title: str, ylabel: str, ylim=None, size=(7, 3.2)):
    """Grouped bars of ``y`` per ``x``, one colour per ``hue``, the ``x`` labels slanted.  Returns the figure."""
    fig, ax = plt.subplots(figsize=size)
    sns.barplot(data=frame, x=x, y=y, hue=hue, ax=ax)
    ax.set(ylabel=ylabel, xlabel="", ylim=ylim, title=title)
    ax.tick_params(axis="x", rotation=30)
    return fig
