"""The curation report as one self-contained HTML page: inline CSS, SVG charts, data-URI images.

No scripts, fonts or links to fetch: it opens from a bucket download or a laptop with no network.
"""

from __future__ import annotations

import html
import json
from typing import Any

from airflow_curator.core.report.data import (
    BINS,
    PAIRS,
    SCORES,
    TOP_LANGUAGES,
    Card,
    Histogram,
    ReportData,
)
from airflow_curator.core.stats import Result, Stats

MAX_ROWS = 500
MAX_MANIFEST_SHARDS = 20
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;border-bottom:1px solid #eef;
text-align:right}th{background:#f4f6fa}td:first-child,th:first-child{text-align:left}
.kpi{display:inline-block;margin:6px 18px 6px 0}.kpi b{display:block;font-size:22px}
.charts{display:flex;flex-wrap:wrap;gap:18px}.grid{display:flex;flex-wrap:wrap;gap:10px}
.pair{display:flex;gap:4px;border:1px solid #dde;border-radius:8px;padding:4px}
.card{width:132px;font-size:11px;background:#f7f8fb;border-radius:6px;padding:6px;overflow:hidden}
.card img{width:112px;height:112px;object-fit:contain;background:#e8eaf0;display:block;margin:auto}
.noimg{width:112px;height:112px;background:#fbe9e9;color:#a33;display:flex;align-items:center;
justify-content:center;text-align:center;margin:auto}.kept{color:#18794e}.dropped{color:#b42318}
.cap{color:#555;max-height:3em;overflow:hidden}pre{background:#f4f6fa;padding:8px;overflow:auto;
max-height:320px;font-size:12px}.muted{color:#777}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def histogram_svg(title: str, hist: Histogram, threshold: tuple[str, float] | None) -> str:
    w, h, pad = 360, 170, 28
    peak = max(hist.counts) or 1
    bar = (w - 2 * pad) / BINS
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 40}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text x="{pad}" y="14" font-size="13" font-weight="600">{_e(title)}</text>',
    ]
    for i, c in enumerate(hist.counts):
        bh = (h - pad - 20) * c / peak
        x = pad + i * bar
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{h - pad - bh:.1f}" width="{bar - 1:.1f}" '
            f'height="{bh:.1f}" fill="#5b7bd5"><title>{c}</title></rect>'
        )
    parts.append(f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>')
    for frac in (0, 0.5, 1):
        v = hist.lo + (hist.hi - hist.lo) * frac
        parts.append(
            f'<text x="{pad + (w - 2 * pad) * frac:.1f}" y="{h - pad + 14}" font-size="10" '
            f'text-anchor="middle">{v:g}</text>'
        )
    if threshold is not None:
        kind, value = threshold
        x = pad + (w - 2 * pad) * (min(max(value, hist.lo), hist.hi) - hist.lo) / (
            hist.hi - hist.lo
        )
        parts.append(
            f'<line class="threshold" x1="{x:.1f}" y1="22" x2="{x:.1f}" y2="{h - pad}" '
            f'stroke="#d92d20" stroke-width="2" stroke-dasharray="4 3"/>'
        )
        parts.append(
            f'<text x="{x + 3:.1f}" y="32" font-size="10" fill="#d92d20">{kind} {value:g}</text>'
        )
    out = f"n={hist.total}"
    if hist.below or hist.above:
        out += f" (outside the axis: {hist.below} below, {hist.above} above)"
    parts.append(f'<text x="{pad}" y="{h + 2}" font-size="10" fill="#666">{_e(out)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _card(s: Card) -> str:
    img = (
        f'<img src="{s.thumbnail}" alt="{_e(s.id)}">'
        if s.thumbnail
        else f'<div class="noimg">{_e(s.error or "no image")}</div>'
    )
    status = (
        ""
        if s.kept is None
        else (
            '<span class="kept">kept</span>' if s.kept else '<span class="dropped">dropped</span>'
        )
    )
    scores = " · ".join(f"{k.split('_')[0]} {_fmt(v, 2)}" for k, v in s.scores.items())
    error = f'<div class="dropped">{_e(s.error)}</div>' if s.error and s.thumbnail else ""
    return (
        f'<div class="card" data-id="{_e(s.id)}">{img}<div><b>{_e(s.id)}</b> {status}</div>'
        f'<div>{_e(scores)}</div>{error}<div class="cap">{_e(s.caption or "")}</div></div>'
    )


def _grid(title: str, cards: list[Card]) -> str:
    if not cards:
        return f'<h3>{_e(title)}</h3><p class="muted">none</p>'
    return f'<h3>{_e(title)}</h3><div class="grid">{"".join(_card(s) for s in cards)}</div>'


def _pairs(pairs: list[tuple[Card, Card | None]]) -> str:
    if not pairs:
        return ""
    cells = "".join(
        f'<div class="pair">{_card(d)}{_card(o) if o else "<div class=card>not found</div>"}</div>'
        for d, o in pairs
    )
    return f"<h3>Duplicates (left) and the record kept (right)</h3><div class='grid'>{cells}</div>"


def _steps_table(steps: dict[str, list[dict[str, Any]]], shard_records: dict[str, int]) -> str:
    """Per step: tasks (each mapped task's latest successful try), records, failures, summed task
    seconds and records per task-second. A try that found shards already done (a cleared or
    retried task) counts their records too, from the shard table, but not in the rate."""
    if not steps:
        return '<p class="muted">No run record (run.json): per-step throughput is unknown.</p>'
    rows = []
    for step, results in steps.items():
        worked = sum(int(r.get("records") or 0) for r in results)
        done = sum(shard_records.get(s, 0) for r in results for s in r.get("done_before") or [])
        failures = sum(int(r.get("failed") or r.get("failures") or 0) for r in results)
        seconds = sum(float(r.get("seconds") or 0) for r in results)
        rate = f"{worked / seconds:.1f}" if seconds and worked else "–"
        rows.append(
            f"<tr><td>{_e(step)}</td><td>{len(results)}</td><td>{worked + done}</td>"
            f"<td>{failures}</td><td>{seconds:.1f}</td><td>{rate}</td></tr>"
        )
    return (
        "<table><tr><th>step</th><th>tasks</th><th>records</th><th>failures</th>"
        f"<th>task seconds</th><th>records/s</th></tr>{''.join(rows)}</table>"
    )


RULES = {
    "min_image_side": "smaller side >= {} px",
    "max_aspect_ratio": "long / short side <= {}",
    "min_caption_words": "caption words >= {}",
    "min_caption_chars": "caption characters >= {}",
    "caption_languages": "caption language in {}",
    "min_language_score": "language confidence >= {}",
    "min_aesthetic": "aesthetic_score >= {}",
    "max_nsfw": "nsfw_score <= {}",
    "min_clip_score": "clip_score >= {}",
}


def _rule(name: str, filters: dict[str, Any]) -> str:
    """What a record needs to pass the filter: ``smaller side >= 200 px``."""
    if name == "error":
        return "no error (decoded, scored)"
    if name.startswith("require:"):
        return f"{name[len('require:') :]} is true"
    value = filters.get(name)
    if name == "clip_score_top_fraction":
        top = filters.get("clip_score_top_threshold")
        at = "no score" if top is None else f"clip_score >= {top:.4g}"
        return f"top {value:g} of the run ({at})"
    if isinstance(value, list):
        value = ", ".join(map(str, value))
    if name in RULES and value is not None:
        return RULES[name].format(value)
    return "true in the input's own column"


def _funnel(data: ReportData, total: int) -> str:
    """Records removed by each filter alone and in sequence (in the order they apply)."""
    if not data.funnel:
        return '<p class="muted">No filters recorded in the metadata.</p>'
    left = total
    rows = []
    for name, counts in data.funnel.items():
        left -= counts["in_sequence"]
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_e(_rule(name, data.filters))}</td>"
            f"<td>{counts['alone']}</td><td>{counts['in_sequence']}</td><td>{left}</td></tr>"
        )
    return (
        '<table id="funnel"><tr><th>filter</th><th>keeps</th><th>removed alone</th>'
        f"<th>removed in sequence</th><th>left</th></tr>{''.join(rows)}</table>"
    )


def _languages(languages: dict[str, int]) -> str:
    if not languages:
        return ""
    shown = list(languages.items())[:TOP_LANGUAGES]
    rest = sum(languages.values()) - sum(n for _, n in shown)
    cells = "".join(f"<tr><td>{_e(k)}</td><td>{n}</td></tr>" for k, n in shown)
    if rest:
        cells += f'<tr><td class="muted">others</td><td>{rest}</td></tr>'
    return (
        f'<table id="languages"><tr><th>caption language</th><th>records</th></tr>{cells}</table>'
    )


def _brief(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """A manifest with its shard list cut short: the page stays small for 50,000 shards."""
    if manifest is None:
        return None
    shards = manifest.get("shards", [])
    brief = dict(manifest, shards=shards[:MAX_MANIFEST_SHARDS])
    if len(shards) > MAX_MANIFEST_SHARDS:
        brief["shards_not_shown"] = len(shards) - MAX_MANIFEST_SHARDS
    return brief


def render(data: ReportData) -> str:
    t = data.totals
    out_records = (data.output_manifest or {}).get("records")
    kpis = [
        ("input records", t["records"]),
        ("annotated", t["annotated"]),
        ("failed", t["failures"]),
        ("kept", t["kept"] if t["kept"] is not None else "–"),
        ("duplicates", t["duplicates"] if t["duplicates"] is not None else "–"),
        ("output records", out_records if out_records is not None else "–"),
        ("output shards", len((data.output_manifest or {}).get("shards", [])) or "–"),
    ]
    shard_rows = "".join(
        f"<tr><td>{_e(r.shard)}</td><td>{r.records}</td><td>{r.annotated}</td>"
        f"<td>{r.failures}</td><td>{'–' if r.kept is None else r.kept}</td>"
        f"<td>{'–' if r.duplicates is None else r.duplicates}</td></tr>"
        for r in data.shards[:MAX_ROWS]
    )
    if len(data.shards) > MAX_ROWS:
        shard_rows += (
            f'<tr><td colspan="6" class="muted">… {len(data.shards) - MAX_ROWS} more</td></tr>'
        )

    charts = (
        "".join(
            histogram_svg(SCORES[c][0], data.histograms[c], data.thresholds.get(c))
            for c in SCORES
            if data.histograms[c].total
        )
        or '<p class="muted">No scores found.</p>'
    )
    pair_charts = "".join(
        histogram_svg(PAIRS[c][0], data.pair_histograms[c], data.pair_thresholds.get(c))
        for c in PAIRS
        if c in data.pair_histograms and data.pair_histograms[c].total
    )
    params = json.dumps(data.params, indent=1, sort_keys=True, default=str)
    manifest = json.dumps(
        {"input": _brief(data.input_manifest), "output": _brief(data.output_manifest)},
        indent=1,
        sort_keys=True,
        default=str,
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Curation report · {_e(data.output)}</title>
<style>{CSS}</style></head><body>
<h1>Curation report</h1>
<div class="muted">{_e(data.dataset)} → {_e(data.output)}</div>
<div>{"".join(f'<span class="kpi"><b>{_e(v)}</b>{_e(k)}</span>' for k, v in kpis)}</div>
{"".join(f'<p class="note">{_e(n)}</p>' for n in data.notes)}
<h2>Scores</h2><div class="charts">{charts}</div>
<h2>Filters</h2>{_funnel(data, t["records"] or 0)}
<div class="charts">{pair_charts}</div>{_languages(data.languages)}
<h2>Records</h2>
{_grid("Random kept records", data.kept)}
{_grid("Random dropped records", data.dropped)}
{_grid("Lowest aesthetic scores", data.lowest)}
{_grid("Highest aesthetic scores", data.highest)}
{_pairs(data.pairs)}
<h2>Steps</h2>{_steps_table(data.steps, {r.shard: r.records for r in data.shards})}
<h2>Shards</h2><table id="shards"><tr><th>shard</th><th>records</th><th>annotated</th>
<th>failed</th><th>kept</th><th>duplicates</th></tr>{shard_rows}</table>
<h2>Parameters</h2><pre>{_e(params)}</pre>
<h2>Manifests</h2><pre>{_e(manifest)}</pre>
</body></html>
"""


def write_report(output: str, report_url: str | None = None, **options: Any) -> Result:
    """Gather, render and write ``<output>/report.html`` (atomically); return a small summary."""
    from airflow_curator.core.io import storage
    from airflow_curator.core.layout import REPORT_NAME
    from airflow_curator.core.report.data import gather

    stats = Stats()
    data = gather(output, **options)
    url = report_url or storage.join(output, REPORT_NAME)
    page = render(data)
    storage.write_bytes(url, page.encode())
    return stats.result(
        report=url,
        bytes=len(page),
        **data.totals,
        output_records=(data.output_manifest or {}).get("records"),
        notes=data.notes,
    )
