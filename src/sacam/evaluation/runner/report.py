"""``report.html``: one self-contained page with the summary table and every figure.

The table marks the best mean per value in bold (ties all marked) and adds a ★ only where
the best is decided: where the summary compared it with the runner-up on the same images
and the paired interval excludes no difference. Wide tables scroll inside their panel and
figures shrink to the page, so nothing overflows it horizontally.
"""

from __future__ import annotations

import base64
import html
import json
import math
import sys
from typing import Any

from ..registry import arrow, value_of
from .figures import ranked, write_figures
from .state import Run
from .summary import format_interval, value_columns

TITLES = {
    "deletion_insertion.png": "Deletion and insertion curves",
    "road.png": "ROAD curves",
    "metrics.png": "Every metric, one method order (best in bold)",
    "examples.png": "Example maps",
}
STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:100%}"
    ".panel{overflow-x:auto;max-width:100%}"
    "table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}"
    "td.best{font-weight:bold;background:#eef7ee}"
    "img{max-width:100%;height:auto}"
    "pre{white-space:pre-wrap;word-break:break-word}"
)


def _best(table: dict[str, dict[str, Any]], value: str) -> set[str]:
    """The methods whose mean is the best one (ties all marked); none if all are NaN."""
    order = ranked(table, value)
    if not order or not math.isfinite(best := table[order[0]][value]["mean"]):
        return set()
    return {m for m in order if table[m][value]["mean"] == best}


def _star(summary: dict[str, Any], value: str) -> bool:
    """Whether the best of ``value`` earns a ★: decided by the paired comparison.

    A table without the comparison (one built by hand) stars the best mean.
    """
    if "best" not in summary:
        return True
    return bool(summary["best"].get(value, {}).get("decided"))


def render_table(summary: dict[str, Any]) -> str:
    """The summary table as HTML: the best mean per value bold, ★ where it is decided."""
    table = summary["table"]
    names = value_columns(table)
    best = {v: _best(table, v) for v in names}
    star = {v: "★ " if _star(summary, v) else "" for v in names}
    head = "".join(
        f"<th title='{html.escape(value_of(m).description)}'>{html.escape(m)} {arrow(m)}</th>"
        for m in names
    )
    parts = [f"<table><tr><th>method</th>{head}<th>map s / image</th></tr>"]
    for method, t in table.items():
        cells = []
        for m in names:
            if m not in t:
                cells.append("<td>–</td>")
                continue
            text = format_interval(t[m])
            if method in best[m]:
                cells.append(f"<td class='best'>{star[m]}{text}</td>")
            else:
                cells.append(f"<td>{text}</td>")
        time_s = t.get("time_s", {}).get("mean", float("nan"))
        parts.append(
            f"<tr><th>{html.escape(method)}</th>{''.join(cells)}<td>{time_s:.3f}</td></tr>"
        )
    parts.append("</table>")
    return "".join(parts)


def write_report(run: Run, summary: dict[str, Any]) -> None:
    """Write the figures and ``report.html`` (a line on stderr where progress bars show)."""
    out = run.config.out
    if run.progress or (run.progress is None and sys.stderr.isatty()):
        print(f"writing the figures and report.html to {out}/", file=sys.stderr, flush=True)
    figures = write_figures(run, summary)
    n = summary["settings"]["images"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>sacam benchmark</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>sacam benchmark</h1>",
        "<h2>Summary</h2><div class='panel'>",
        render_table(summary),
        f"</div><p>Mean [95% bootstrap interval] over {n} image(s). Bold: the best mean per "
        "column (↑ higher is better, ↓ lower is better); ★: the best is decided, its paired "
        "95% interval against the runner-up on the same images excludes no difference. "
        f"{summary['failures']} failed pair(s).</p>",
    ]
    for path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        title = TITLES.get(path.name, path.stem)
        parts.append(
            f"<h2>{html.escape(title)}</h2><div class='panel'>"
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'></div>"
        )
    parts.append(
        "<h2>Settings</h2><pre>"
        + html.escape(json.dumps(summary["settings"], indent=1, default=str))
        + "</pre></body></html>"
    )
    (out / "report.html").write_text("\n".join(parts), encoding="utf-8")
