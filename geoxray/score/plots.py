"""PNG plots of the score tables (matplotlib, Agg): accuracy by task with CIs, option shares
against the gold share (choice bias), and fixed vs random position for the task pairs that
differ only by the crop. Several models (or decode modes) are drawn side by side."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from geoxray.bench.tasks import NO_CROP, TASKS, TaskSpec, get_task
from geoxray.score.tables import ALL, Tables, series_labels, task_label

DPI = 110


def _pyplot():
    # Imported here so scoring without plots never pays for (or configures) matplotlib.
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def task_pairs() -> list[tuple[TaskSpec, TaskSpec]]:
    """(fixed, random) task pairs: same index folder, answer field and options, one task on
    the uncropped tile and one expanded into crops (tasks 1/2, 3/4, 6/7)."""
    pairs = []
    for fixed in TASKS:
        if fixed.crops != (NO_CROP,):
            continue
        for rand in TASKS:
            if (rand.crops != (NO_CROP,) and rand.index_folder == fixed.index_folder
                    and rand.answer_field == fixed.answer_field
                    and rand.options == fixed.options):
                pairs.append((fixed, rand))
    return pairs


def _colors(n: int) -> list:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _wrap(text: str, width: int = 16) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _finite(x: float) -> float:
    return x if np.isfinite(x) else 0.0


def _task_totals(accuracy: pd.DataFrame) -> pd.DataFrame:
    totals = accuracy[accuracy["instance"] == ALL].copy()
    totals["series"] = series_labels(totals)
    return totals


def zero_stubs(ax, x, heights, width, color) -> None:
    """A bar of height 0 drawn as a short thick line at the base in the bar's colour: a zero
    is a result, not a missing bar."""
    for xi, h in zip(np.atleast_1d(x), np.atleast_1d(heights)):
        if np.isfinite(h) and h <= 0.004:
            ax.hlines(0.004, xi - width / 2, xi + width / 2, colors=[color], linewidth=3,
                      zorder=3)


def label_bars(ax, x, heights, tops, width, color, fontsize: int = 7) -> None:
    """Value labels above each bar (above its CI when `tops` are given) and a visible stub for
    a bar of height 0 (`zero_stubs`); NaN is labelled `n/a`."""
    zero_stubs(ax, x, heights, width, color)
    for xi, h, top in zip(np.atleast_1d(x), np.atleast_1d(heights), np.atleast_1d(tops)):
        if not np.isfinite(h):
            ax.text(xi, 0.01, "n/a", ha="center", va="bottom", fontsize=fontsize,
                    color="dimgray")
            continue
        y = max(h, top if np.isfinite(top) else h) + 0.012
        ax.text(xi, y, f"{h:.2f}", ha="center", va="bottom", fontsize=fontsize,
                rotation=90 if width < 0.12 else 0, zorder=4,  # readable over the chance line
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.3))


def _legend_outside(ax, handles=None, labels=None) -> None:
    kwargs = {} if handles is None else {"handles": handles, "labels": labels}
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9,
              **kwargs)


def plot_accuracy(accuracy: pd.DataFrame, path: Path, note: str | None = None) -> Path | None:
    """Grouped bars: task-total accuracy per task and series, 95% CI error bars, chance
    level (1/K) as a dashed mark per task."""
    totals = _task_totals(accuracy)
    if totals.empty:
        return None
    plt = _pyplot()
    tasks = sorted(totals["task"].unique(), key=lambda t: get_task(t).number)
    series = list(dict.fromkeys(totals["series"]))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(tasks) + 0.25 * len(tasks) *
                                        len(series)), 4.6))
    x = np.arange(len(tasks))
    for i, (name, color) in enumerate(zip(series, _colors(len(series)))):
        rows = totals[totals["series"] == name].set_index("task").reindex(tasks)
        acc = rows["accuracy"].to_numpy(dtype=float)
        err = np.vstack([acc - rows["ci_low"].to_numpy(dtype=float),
                         rows["ci_high"].to_numpy(dtype=float) - acc])
        centres = x - 0.4 + width * (i + 0.5)
        ax.bar(centres, acc, width, yerr=np.maximum(np.nan_to_num(err), 0.0).tolist(),
               capsize=3, color=color, label=name, edgecolor="white", linewidth=0.5)
        label_bars(ax, centres, acc, rows["ci_high"].to_numpy(dtype=float), width, color)
    for j, task in enumerate(tasks):
        ax.hlines(1.0 / get_task(task).K, j - 0.45, j + 0.45, colors="black",
                  linestyles="dashed", linewidth=1, label="chance (1/K)" if j == 0 else None)
    ax.set_xticks(x, [_wrap(task_label(t)) for t in tasks], fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("accuracy (invalid = wrong)")
    ax.set_title(_titled("Accuracy by task (95% CI over locations)", note))
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()  # models first, chance last
    order = sorted(range(len(labels)), key=lambda i: labels[i] == "chance (1/K)")
    _legend_outside(ax, [handles[i] for i in order], [labels[i] for i in order])
    return _save(fig, path)


def plot_option_shares(shares: pd.DataFrame, path: Path, note: str | None = None
                       ) -> Path | None:
    """One panel per task: share of answers on each option per series (expected
    distributions hatched), the gold share as black marks, and 1/K dotted."""
    if shares.empty:
        return None
    plt = _pyplot()
    shares = shares.copy()
    shares["base"] = series_labels(shares)
    shares["series"] = [f"{s} (expected)" if src == "expected" else s
                        for s, src in zip(shares["base"], shares["source"])]
    tasks = sorted(shares["task"].unique(), key=lambda t: get_task(t).number)
    series = list(dict.fromkeys(shares["series"]))
    # An expected distribution shares its model's colour and is hatched.
    bases = list(dict.fromkeys(shares["base"]))
    base_color = dict(zip(bases, _colors(len(bases))))
    base_of = dict(zip(shares["series"], shares["base"]))
    ncols = min(4, len(tasks))
    nrows = int(np.ceil(len(tasks) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.3 * nrows),
                             squeeze=False)
    handles = {}
    for ax, task in zip(axes.flat, tasks):
        spec = get_task(task)
        part = shares[shares["task"] == task]
        x = np.arange(spec.K)
        present = [s for s in series if s in set(part["series"])]
        width = 0.8 / max(1, len(present))
        for i, name in enumerate(present):
            rows = part[part["series"] == name].set_index("option").reindex(spec.options)
            left = x - 0.4 + width * i
            share = rows["share"].to_numpy(float)
            handles[name] = ax.bar(left + width / 2, share, width,
                                   color=base_color[base_of[name]],
                                   hatch="//" if name.endswith("(expected)") else None,
                                   edgecolor="white", linewidth=0.5)
            if len(present) * spec.K <= 12 and part["n_valid"].fillna(0).max() > 0:
                label_bars(ax, left + width / 2, share, share, width,
                           base_color[base_of[name]], fontsize=6)
            else:  # too many bars for labels; zeros stay visible
                zero_stubs(ax, left + width / 2, share, width, base_color[base_of[name]])
            # Gold share over the same (valid) items as this bar: a black mark across it.
            handles["gold share (same items)"] = ax.hlines(
                rows["gold_share"].to_numpy(float), left, left + width, colors="black",
                linewidth=2, zorder=3)
        handles["uniform (1/K)"] = ax.axhline(1.0 / spec.K, color="grey", linestyle=":",
                                              linewidth=1)
        note = empty_panel_note(part)
        if note:  # say why a panel is empty rather than leave it blank
            ax.text(0.5, 0.75, note, transform=ax.transAxes, ha="center", va="center",
                    fontsize=9, color="dimgray",
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.8))
        ax.set_xticks(x, [o.replace("_", "\n") for o in spec.options],
                      fontsize=7 if spec.K > 4 else 9)
        ax.set_ylim(0, 1.15)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_title(_wrap(task_label(task), 30), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("share of answers")
    fig.suptitle(_titled("Choice bias: answer share per option vs gold share", note))
    order = [s for s in series if s in handles] + [k for k in handles if k not in series]
    fig.tight_layout()
    # Outside the panels on the right; the tight bounding box at save time keeps it whole.
    fig.legend([handles[k] for k in order], order, loc="center left",
               bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9)
    return _save(fig, path)


def empty_panel_note(part: pd.DataFrame) -> str | None:
    """A task's option-share rows -> the note its panel shows when no series has a valid
    answer to draw (e.g. a model whose every reply failed to parse), else None."""
    if part.empty or part["n_valid"].fillna(0).max() > 0:
        return None
    return "no valid answers\n(see the invalid table)"


def plot_fixed_vs_random(accuracy: pd.DataFrame, path: Path, note: str | None = None
                         ) -> Path | None:
    """Per (fixed, random) task pair and series: accuracy on the uncropped tile (solid) and
    on the random crops (hatched), with CIs and the chance level."""
    totals = _task_totals(accuracy)
    pairs = [(f, r) for f, r in task_pairs()
             if {f.name, r.name} <= set(totals["task"])]
    if not pairs:
        return None
    plt = _pyplot()
    series = list(dict.fromkeys(totals["series"]))
    colors = _colors(len(series))
    width = 0.8 / (2 * len(series))
    fig, ax = plt.subplots(figsize=(max(6.5, 2.2 * len(pairs) + 0.35 * len(pairs) *
                                        len(series)), 4.6))
    for j, (fixed, rand) in enumerate(pairs):
        for i, name in enumerate(series):
            rows = totals[totals["series"] == name].set_index("task")
            for k, spec in enumerate((fixed, rand)):
                if spec.name not in rows.index:
                    continue
                r = rows.loc[spec.name]
                acc = float(r["accuracy"])
                # Nested lists, not a (2, 1) array: matplotlib probes a one-element row
                # with math.isfinite, which numpy deprecates.
                err = [[max(0.0, _finite(acc - float(r["ci_low"])))],
                       [max(0.0, _finite(float(r["ci_high"]) - acc))]]
                centre = j - 0.4 + width * (2 * i + k + 0.5)
                ax.bar([centre], [acc], width,
                       yerr=err, capsize=3, color=colors[i],
                       alpha=1.0 if k == 0 else 0.55, hatch=None if k == 0 else "//",
                       edgecolor="white", linewidth=0.5)
                label_bars(ax, [centre], [acc], [float(r["ci_high"])], width, colors[i])
        ax.hlines(1.0 / fixed.K, j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                  linewidth=1)
    ax.set_xticks(np.arange(len(pairs)),
                  [f"{_wrap(task_label(f.name), 26)}\nvs\n{_wrap(task_label(r.name), 26)}"
                   for f, r in pairs], fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("accuracy (invalid = wrong)")
    ax.set_title(_titled("Same questions on the whole tile (solid) and on its 9 crops (hatched)",
                         note))
    ax.grid(axis="y", alpha=0.3)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    # Two legend groups with their own titles: a model named e.g. `random` must not read as
    # the "random position" condition.
    handles = [Patch(color=c, label=f"model: {s}") for s, c in zip(series, colors)]
    handles += [Patch(facecolor="grey", label="bar: whole tile (fixed-position task)"),
                Patch(facecolor="grey", alpha=0.55, hatch="//",
                      label="bar: 9 crops (random-position task)"),
                Line2D([], [], color="black", linestyle="dashed", label="chance (1/K)")]
    _legend_outside(ax, handles, [h.get_label() for h in handles])
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _titled(title: str, note: str | None) -> str:
    """A plot title, with the run's note ("limited: N of M items") under it when there is one."""
    return f"{title}\n({note})" if note else title


def write_plots(tables: Tables, out_dir: str | Path, note: str | None = None
                ) -> dict[str, Path]:
    """Write out_dir/plots/{accuracy,option_shares,fixed_vs_random}.png (those with data),
    `note` (e.g. "limited: N of M items") in every title. Returns the paths by file name."""
    folder = Path(out_dir) / "plots"
    made = {
        "accuracy.png": plot_accuracy(tables.accuracy, folder / "accuracy.png", note),
        "option_shares.png": plot_option_shares(tables.option_shares,
                                                folder / "option_shares.png", note),
        "fixed_vs_random.png": plot_fixed_vs_random(tables.accuracy,
                                                    folder / "fixed_vs_random.png", note),
    }
    return {name: p for name, p in made.items() if p is not None}
