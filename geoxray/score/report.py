"""The run report: tables (CSV, Markdown), plots (PNG), `report.md` and a self-contained
`report.html`, rebuilt from `out_dir/predictions/*.parquet` alone when no frame is given
(what `geoxray report DIR` does). Unreadable parts are reported, never fatal."""
from __future__ import annotations

import base64
import html
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from geoxray.bench.schema import SCORE_COLUMNS
from geoxray.bench.tasks import TASK_BY_NAME
from geoxray.score.glossary import GLOSSARY, glossary_rows  # noqa: F401 (re-exported)
from geoxray.score.metrics import DEFAULT_N_BOOT, DEFAULT_SEED
from geoxray.score.plots import write_plots
from geoxray.score.tables import (ALL, Tables, format_cell, compute_tables, series_labels,
                                  task_label, to_markdown, write_tables)


# --- input -----------------------------------------------------------------------------------
def read_predictions(out_dir: str | Path, problems: list[str] | None = None,
                     columns: tuple[str, ...] | None = SCORE_COLUMNS) -> pd.DataFrame:
    """A run folder's scoring frame, read by run/store.py (the only reader of predictions/):
    its selected keys, failed items flagged `failed`; problems (unreadable parts, repeated
    keys, stray rows) are described in `problems`."""
    from geoxray.run import store  # the disk is the store's; scoring itself takes tables
    return store.scoring_frame(Path(out_dir), problems, columns)


def read_manifest(out_dir: str | Path, problems: list[str]) -> dict | None:
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"manifest.json unreadable: {exc}")
        return None
    return manifest if isinstance(manifest, dict) else {"manifest": manifest}


def _flatten(value: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Manifest as (dotted key, short text) rows; deep or long values are summarised."""
    if isinstance(value, dict) and depth < 3:
        rows = []
        for k, v in value.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
        return rows
    if isinstance(value, (list, tuple)):
        text = (", ".join(map(str, value)) if len(value) <= 8
                and all(not isinstance(v, (dict, list)) for v in value)
                else f"[{len(value)} entries]")
    elif isinstance(value, dict):
        text = f"{{{len(value)} keys}}"
    else:
        text = str(value)
    return [(prefix, text if len(text) <= 160 else text[:157] + "...")]


# --- content: sections of blocks, rendered to Markdown and to HTML -----------------------------
@dataclass
class Block:
    kind: str  # "text" | "table" | "details" (a folded table) | "image" | "links"
    text: str = ""
    table: pd.DataFrame | None = None
    path: Path | None = None
    links: list[tuple[str, list[tuple[str, str]]]] | None = None  # label, [(text, href)]
    digits: int = 4  # decimals of float cells


def _instance_pivots(tables: Tables) -> list[tuple[str, pd.DataFrame]]:
    """Per series: accuracy with instances as rows and task numbers as columns."""
    rows = tables.accuracy[tables.accuracy["instance"] != ALL].copy()
    if rows.empty:
        return []
    rows["series"] = series_labels(rows)
    out = []
    for name, part in rows.groupby("series", sort=False):
        pivot = part.pivot_table(index="instance", columns="task_number", values="accuracy",
                                 aggfunc="first", dropna=False)
        pivot.columns = [f"task {c}" for c in pivot.columns]
        out.append((name, pivot.reset_index()))
    return out


def _labelled(table: pd.DataFrame) -> pd.DataFrame:
    """A table for reading: the task as "N. Title" (unknown tasks kept as they are)."""
    out = table.drop(columns=["task_number"])
    out["task"] = [task_label(t) if t in TASK_BY_NAME else t for t in out["task"]]
    return out


def _summary(preds: pd.DataFrame, tables: Tables) -> str:
    totals = tables.accuracy[tables.accuracy["instance"] == ALL]
    n, invalid = int(totals["n"].sum()), int(totals["invalid"].sum())
    failed = int(totals["failed"].sum()) if "failed" in totals else 0
    models = ", ".join(dict.fromkeys(series_labels(totals))) if len(totals) else "none"
    share = f" ({invalid / n:.1%})" if n else ""
    unscored = (f" {failed} item(s) unscored: the engine call failed (counted apart, never "
                f"as wrong; a rerun retries them)." if failed else "")
    return (f"{len(preds) - failed} predictions; {n} scored items over "
            f"{totals['task'].nunique()} task(s); {invalid} invalid{share}.{unscored} "
            f"Models: {models}.")


# --- the headline: one row per (task, model) --------------------------------------------------
HEADLINE_COLUMNS = ["task", "model", "n", "accuracy", "95% CI", "chance", "vs chance",
                    "invalid %", "p_mode", "mode_option", "h_norm"]


def headline_table(tables: Tables) -> pd.DataFrame:
    """Task x model at a glance: accuracy with its CI against chance, the invalid share and
    the choice bias from answer counts. Rows in task order, models in table order."""
    totals = tables.accuracy[tables.accuracy["instance"] == ALL]
    if totals.empty:
        return pd.DataFrame(columns=HEADLINE_COLUMNS)
    counts = tables.bias[tables.bias["source"] == "counts"].set_index(
        ["model", "decode", "task"])
    rows = []
    for r, label in zip(totals.itertuples(index=False), series_labels(totals)):
        b = counts.loc[(r.model, r.decode, r.task)] if (r.model, r.decode, r.task) in \
            counts.index else None
        ci = ("" if r.ci_low != r.ci_low else f"{r.ci_low:.3f}-{r.ci_high:.3f}")
        rows.append({"task": task_label(r.task), "model": label, "n": r.n,
                     "accuracy": r.accuracy, "95% CI": ci, "chance": r.chance,
                     "vs chance": ("" if not ci else "above" if r.ci_low > r.chance else
                                   "below" if r.ci_high < r.chance else "~"),
                     "invalid %": f"{100.0 * r.invalid / r.n:.1f}" if r.n else "",
                     "p_mode": None if b is None else b["p_mode"],
                     "mode_option": None if b is None else b["mode_option"],
                     "h_norm": None if b is None else b["h_norm"], "_t": r.task_number})
    table = pd.DataFrame(rows)
    table = table.sort_values("_t", kind="stable").drop(columns="_t").reset_index(drop=True)
    for c in ("p_mode", "h_norm"):
        table[c] = table[c].astype(float)
    return table[HEADLINE_COLUMNS]


def console_table(tables: Tables) -> str:
    """The compact table a run ends with on the console: one row per task (and model when
    there are several), plain aligned text."""
    head = headline_table(tables)
    if head.empty:
        return "(no scored items)"
    several = head["model"].nunique() > 1
    columns = ["task"] + (["model"] if several else []) + [
        "n", "accuracy", "95% CI", "chance", "invalid %", "p_mode"]
    text = [[str(c) for c in columns]]
    for r in head[columns].itertuples(index=False):
        text.append([format_cell(v, 3) if not isinstance(v, str) else v for v in r])
    widths = [max(len(row[i]) for row in text) for i in range(len(columns))]
    lines = []
    for j, row in enumerate(text):
        cells = [cell.ljust(w) if i < (2 if several else 1) else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _optional_sections(preds: pd.DataFrame) -> list[tuple[str, list[Block]]]:
    """Consistency and prior-corrected scores, where the predictions carry item variants."""
    if "variant" not in preds.columns or "base_item_id" not in preds.columns:
        return []
    from geoxray.score.consistency import consistency_table, pride_table

    frame = preds[preds["variant"].notna()]
    out = []
    table = consistency_table(frame)
    if len(table):
        out.append(("Geometric consistency", [
            Block("text", "Each item asked again with its images turned, mirrored or its "
                          "candidates reordered, the gold moved with the geometry. A model "
                          "that reads geometry is right on every variant (circular_accuracy) "
                          "and does not flip; one that repeats a favourite answer flips."),
            Block("table", table=_labelled(table))]))
    pride = pride_table(frame)
    if len(pride):
        out.append(("Prior-corrected accuracy (PriDe)", [
            Block("text", "Prior over option labels estimated from the variants of 20% of "
                          "the items; accuracy of the argmax before and after removing it."),
            Block("table", table=_labelled(pride))]))
    return out


def build_sections(preds: pd.DataFrame, tables: Tables, manifest: dict | None,
                   table_paths: dict[str, Path], plot_paths: dict[str, Path],
                   problems: list[str], notes: list[str] | None = None
                   ) -> list[tuple[str, list[Block]]]:
    """The report, in reading order: notes (a limited or stopped run), headline, problems,
    details, glossary, configuration. Each section is (heading, blocks); add a line or a
    column by adding a Block."""
    sections: list[tuple[str, list[Block]]] = []
    if notes:  # "limited: N of M items", a stopped run: above everything
        sections.append(("Notes", [Block("text", "\n".join(f"- {n}" for n in notes))]))
    head = [Block("text", _summary(preds, tables))]
    headline = headline_table(tables)
    if len(headline):
        head += [Block("table", table=headline, digits=3)]
    if "accuracy.png" in plot_paths:
        head.append(Block("image", text="accuracy.png", path=plot_paths["accuracy.png"]))
    sections.append(("Headline", head))
    if problems:  # right after the headline, so nobody reads scores without seeing them
        sections.append(("Problems", [Block("text", "\n".join(f"- {p}" for p in problems))]))
    totals = _labelled(tables.accuracy[tables.accuracy["instance"] == ALL])
    sections.append(("Accuracy per task, 95% CI", [
        Block("table", table=totals[["model", "decode", "task", "n", "correct", "invalid",
                                     "failed",
                                     "accuracy", "ci_low", "ci_high", "chance"]])]))
    per_instance = [Block("text", "Accuracy by source instance; CIs in tables/accuracy.csv.")]
    for name, pivot in _instance_pivots(tables):
        per_instance += [Block("text", f"**{name}**"), Block("table", table=pivot)]
    sections.append(("Accuracy per instance", per_instance))
    bias_blocks = [Block("text", "Over valid answers (`counts`) and, where option "
                                 "probabilities were scored, over the expected distribution "
                                 "(`expected`). p_mode near 1 and h_norm near 0 mean the "
                                 "model keeps giving one answer.")]
    if "option_shares.png" in plot_paths:
        bias_blocks.append(Block("image", text="option_shares.png",
                                 path=plot_paths["option_shares.png"]))
    bias_blocks += [Block("table", table=_labelled(tables.bias))]
    sections.append(("Choice bias", bias_blocks))
    sections += _optional_sections(preds)
    if "fixed_vs_random.png" in plot_paths:
        sections.append(("Fixed vs random position", [
            Block("image", text="fixed_vs_random.png", path=plot_paths["fixed_vs_random.png"])]))
    invalid = _labelled(tables.invalid)
    sections.append(("Invalid answers by reason",
                     [Block("table", table=invalid) if len(invalid)
                      else Block("text", "No invalid answers.")]))
    stems = dict.fromkeys(Path(name).stem for name in table_paths)
    sections.append(("Tables", [Block("links", links=[
        (stem, [(Path(n).suffix[1:].upper(), f"tables/{n}") for n in table_paths
                if Path(n).stem == stem]) for stem in stems])]))
    shown = [c for _, blocks in sections for b in blocks if b.kind == "table"
             for c in b.table.columns]
    sections.append(("Glossary", [Block("table", table=glossary_rows(shown))]))
    if manifest:
        info = pd.DataFrame(_flatten(manifest), columns=["key", "value"])
        sections.append(("Configuration", [Block("details", text="run configuration and "
                                                 "versions (manifest.json)", table=info)]))
    return sections


def render_markdown(title: str, sections: list[tuple[str, list[Block]]]) -> str:
    out = [f"# {title}\n"]
    for heading, blocks in sections:
        out.append(f"## {heading}\n")
        for b in blocks:
            if b.kind == "text":
                out.append(b.text + "\n")
            elif b.kind == "table":
                out.append(to_markdown(b.table, digits=b.digits))
            elif b.kind == "details":  # folded on GitHub and in HTML viewers
                out.append(f"<details><summary>{b.text}</summary>\n\n{to_markdown(b.table)}"
                           "\n</details>\n")
            elif b.kind == "image":
                out.append(f"![{b.text}](plots/{b.path.name})\n")
            elif b.kind == "links":
                out.append("\n".join(f"- {label}: " + ", ".join(f"[{t}]({h})" for t, h in refs)
                                      for label, refs in b.links) + "\n")
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border-bottom:1px solid #ddd;padding:3px 8px}th{background:#f3f3f3;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;margin:1em 0}
h2{border-bottom:2px solid #444;padding-bottom:2px;margin-top:1.6em}"""


def html_table(table: pd.DataFrame, digits: int = 4) -> str:
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = []
    for row in table.itertuples(index=False):
        cells = "".join(f'<td class="num">{html.escape(format_cell(v, digits))}</td>' if num
                        else f"<td>{html.escape(format_cell(v, digits))}</td>"
                        for v, num in zip(row, numeric))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_text(text: str) -> str:
    lines = text.split("\n")
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{html.escape(li[2:])}</li>" for li in lines) + "</ul>"
    escaped = html.escape(text)
    if escaped.startswith("**") and escaped.endswith("**"):
        return f"<h3>{escaped[2:-2]}</h3>"
    return f"<p>{escaped}</p>"


def render_html(title: str, sections: list[tuple[str, list[Block]]]) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, blocks in sections:
        out.append(f"<h2>{html.escape(heading)}</h2>")
        for b in blocks:
            if b.kind == "text":
                out.append(_html_text(b.text))
            elif b.kind == "table":
                out.append(html_table(b.table, digits=b.digits))
            elif b.kind == "details":
                out.append(f"<details><summary>{html.escape(b.text)}</summary>"
                           f"{html_table(b.table)}</details>")
            elif b.kind == "image":  # embedded, so the HTML file stands alone
                data = base64.b64encode(b.path.read_bytes()).decode("ascii")
                out.append(f'<figure><img alt="{html.escape(b.text)}" '
                           f'src="data:image/png;base64,{data}"><figcaption>'
                           f'<a href="plots/{html.escape(b.path.name)}">{html.escape(b.text)}'
                           f"</a></figcaption></figure>")
            elif b.kind == "links":
                out.append("<ul>" + "".join(
                    f"<li>{html.escape(label)}: " + ", ".join(
                        f'<a href="{html.escape(h)}">{html.escape(t)}</a>' for t, h in refs)
                    + "</li>" for label, refs in b.links) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(out_dir: str | Path, preds: pd.DataFrame | None = None,
                 manifest: dict | None = None, *, n_boot: int = DEFAULT_N_BOOT,
                 seed: int = DEFAULT_SEED, title: str = "geoxray report",
                 notes: list[str] | None = None) -> Path:
    """Write out_dir/tables/*, out_dir/plots/*.png, out_dir/report.html and out_dir/report.md
    (returned). Without `preds`, run/store.py reads the run's predictions; without `manifest`,
    reads out_dir/manifest.json when present."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    if preds is None:
        preds = read_predictions(out_dir, problems)
    if manifest is None:
        manifest = read_manifest(out_dir, problems)
    from geoxray.score.consistency import primary_rows

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables = compute_tables(primary_rows(preds), n_boot=n_boot, seed=seed)
    problems += [str(w.message) for w in caught]
    table_paths = write_tables(None, out_dir, tables=tables)
    limited = [n for n in notes or [] if n.startswith("limited:")]
    plot_paths = write_plots(tables, out_dir, note=limited[0] if limited else None)
    sections = build_sections(preds, tables, manifest, table_paths, plot_paths, problems, notes)
    (out_dir / "report.html").write_text(render_html(title, sections))
    report = out_dir / "report.md"
    report.write_text(render_markdown(title, sections))
    return report


__all__ = ["SCORE_COLUMNS", "read_predictions", "read_manifest", "write_report",
           "render_markdown", "render_html", "build_sections", "headline_table",
           "console_table", "glossary_rows"]
