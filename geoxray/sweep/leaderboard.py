"""A sweep's leaderboard: the predictions of its finished points, scored together.

    SWEEP_DIR/leaderboard/              (one data variant; with several: leaderboard/<data>/)
      tables/leaderboard_ranked.{csv,md}     models ranked by mean accuracy, marked cells
      tables/compare_{pairs,cells}.{csv,md}  paired tests behind the marks (sweep/compare.py)
      tables/leaderboard_accuracy.{csv,md}   accuracy, task x model
      tables/leaderboard_p_mode.{csv,md}     choice bias (share of the most given answer)
      tables/leaderboard_h_norm.{csv,md}     choice bias (normalised answer entropy)
      tables/{accuracy,bias,option_shares,invalid}.{csv,md}
      plots/{accuracy,option_shares,fixed_vs_random}.png
      report.html, report.md                 the score package's report over all models
      points.{csv,md}                        every point: status, counts, wall time, error
      index.html                             the ranked leaderboard, links to all of the
                                             above and to each point

Scoring is the score package's (`geoxray.score.report.write_report`); this module only
gathers the points and adds the index and the points table.
"""
from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

from geoxray.bench.schema import SCORE_COLUMNS
from geoxray.run import store
from geoxray.sweep.spec import SweepSpec

POINT_COLUMNS = ["point", "model", "data", "decode", "status", "predictions", "invalid",
                 "wall_s", "attempts", "error"]


def point_predictions(out_dir: Path, series: str) -> pd.DataFrame:
    """One point's scoring frame (its selected keys, failed items flagged; read by the store),
    its model column set to the point's leaderboard label. Unreadable parts are skipped here:
    the point's own report names them."""
    frame = store.scoring_frame(out_dir)
    frame["model"] = series
    return frame


def points_table(points: dict[str, dict]) -> pd.DataFrame:
    rows = [{"point": name, **{c: entry.get(c) for c in POINT_COLUMNS if c != "point"}}
            for name, entry in points.items()]
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def write_leaderboard(sweep_dir: Path, spec: SweepSpec, points: dict[str, dict],
                      bootstrap: int = 1000) -> Path:
    """Write the leaderboard(s); returns the index.html at SWEEP_DIR/leaderboard/."""
    from geoxray.score.tables import to_markdown

    sweep_dir = Path(sweep_dir)
    root = sweep_dir / "leaderboard"
    root.mkdir(parents=True, exist_ok=True)
    data_names = list(dict.fromkeys(v.name for v in spec.data))
    by_data = {d: {n: e for n, e in points.items() if e.get("data") == d} for d in data_names}
    table = points_table(points)
    table.to_csv(root / "points.csv", index=False)
    (root / "points.md").write_text(to_markdown(table))
    if len(data_names) == 1:
        _write_board(root, sweep_dir, spec, data_names[0], by_data[data_names[0]], bootstrap)
        return root / "index.html"
    for d in data_names:
        _write_board(root / d, sweep_dir, spec, d, by_data[d], bootstrap)
    links = [(f"{d}: leaderboard", f"{d}/index.html") for d in data_names]
    links.append(("all points (CSV)", "points.csv"))
    _write_index(root / "index.html", f"geoxray sweep {spec.name}", links, table, root,
                 sweep_dir)
    return root / "index.html"


def _write_board(folder: Path, sweep_dir: Path, spec: SweepSpec, data: str,
                 points: dict[str, dict], bootstrap: int) -> None:
    from geoxray.score.report import write_report
    from geoxray.score.tables import to_markdown

    folder.mkdir(parents=True, exist_ok=True)
    done = {n: e for n, e in points.items() if e.get("status") == "done"}
    frames = [point_predictions(sweep_dir / e.get("out_dir", n), e.get("series") or n)
              for n, e in done.items()]
    frames = [f for f in frames if len(f)]
    preds = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame(columns=list(SCORE_COLUMNS)))
    failed = {n: e.get("error") for n, e in points.items() if e.get("status") != "done"}
    summary = {"sweep": spec.name, "data": data,
               "points": {"done": len(done), "not done": len(failed)},
               "not done": failed or "none"}
    write_report(folder, preds=preds, manifest=summary, n_boot=bootstrap,
                 title=f"geoxray sweep {spec.name} on {data}")
    ranked = _write_ranked(folder, preds, bootstrap)
    table = points_table(points)
    table.to_csv(folder / "points.csv", index=False)
    (folder / "points.md").write_text(to_markdown(table))
    links = [("report (all tables and plots)", "report.html"), ("report (Markdown)", "report.md")]
    for stem in ("leaderboard_ranked", "compare_pairs", "compare_cells",
                 "leaderboard_accuracy", "leaderboard_p_mode", "leaderboard_h_norm",
                 "accuracy", "bias", "option_shares", "invalid"):
        for ext in ("csv", "md"):
            if (folder / "tables" / f"{stem}.{ext}").is_file():
                links.append((f"{stem}.{ext}", f"tables/{stem}.{ext}"))
    for png in sorted((folder / "plots").glob("*.png")):
        links.append((png.name, f"plots/{png.name}"))
    links.append(("points (CSV)", "points.csv"))
    _write_index(folder / "index.html", f"geoxray sweep {spec.name} on {data}", links, table,
                 folder, sweep_dir, ranked)


def _write_ranked(folder: Path, preds: pd.DataFrame, bootstrap: int) -> str:
    """tables/leaderboard_ranked.{csv,md} and compare_{pairs,cells}.{csv,md}: the series
    ranked by mean accuracy with significance marks (`geoxray.sweep.compare`). Returns the
    HTML of the ranked table, its legend and notes, for the index."""
    from geoxray.score.report import html_table
    from geoxray.score.tables import to_markdown
    from geoxray.sweep.compare import MARK_LEGEND, ranked_leaderboard, write_comparison

    if preds.empty:
        return "<p>No finished point yet.</p>"
    ranked, comparison = ranked_leaderboard(preds, n_boot=bootstrap)
    tables = folder / "tables"
    ranked.to_csv(tables / "leaderboard_ranked.csv", index=False)
    legend = MARK_LEGEND.format(alpha=comparison.alpha)
    (tables / "leaderboard_ranked.md").write_text(to_markdown(ranked, digits=3) + "\n"
                                                  + legend + "\n")
    write_comparison(comparison, tables)
    notes = "".join(f"<p><em>{html.escape(n)}</em></p>" for n in comparison.notes)
    return html_table(ranked, digits=3) + f"<p>{html.escape(legend)}</p>" + notes


def _write_index(path: Path, title: str, links: list[tuple[str, str]], table: pd.DataFrame,
                 here: Path, sweep_dir: Path, ranked: str = "") -> None:
    """A plain HTML page: the ranked leaderboard (when given), the files, then every point
    with links to its own report."""
    rows = []
    for r in table.itertuples(index=False):
        point_dir = sweep_dir / r.point
        rel = os.path.relpath(point_dir, here)
        refs = [f'<a href="{html.escape(rel)}/{name}">{label}</a>'
                for name, label in (("report.html", "report"), ("manifest.json", "manifest"),
                                    ("error.txt", "error"))
                if (point_dir / name).is_file()]
        cells = [r.point, r.status, _cell(r.predictions), _cell(r.invalid), _cell(r.wall_s),
                 r.error or ""]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
                    + f"<td>{' '.join(refs)}</td></tr>")
    body = "".join(f'<li><a href="{html.escape(h)}">{html.escape(t)}</a></li>' for t, h in links)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>body{font-family:system-ui,sans-serif;margin:2em auto;"
            "max-width:1100px}table{border-collapse:collapse;font-size:13px}td,th{border-bottom:"
            "1px solid #ddd;padding:3px 8px;text-align:left}td.num{text-align:right}"
            "</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            + (f"<h2>Leaderboard</h2>{ranked}" if ranked else "")
            + f"<h2>Files</h2><ul>{body}</ul><h2>Points</h2>"
            "<table><tr><th>point</th><th>status</th><th>predictions</th><th>invalid</th>"
            f"<th>wall s</th><th>error</th><th>links</th></tr>{''.join(rows)}</table>"
            "</body></html>")
    path.write_text(page)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)
