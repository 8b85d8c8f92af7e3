"""``retention report``: what owners read — metrics, segments, cohorts, risk, value.

:func:`report_data` turns a :class:`~rules.models.RulesResult` into plain JSON-able data
(what ``--json`` prints; keys documented in ``docs/report.md``); :func:`render_terminal`
and :func:`render_html` only present that data. Formulas live in ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from html import escape
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from connector.charts import bar_chart, heatmap, histogram
from rules.models import CustomerState, RowSequence, RulesResult

__all__ = ["HEADLINES", "render_html", "render_terminal", "report_data"]

# (key in data["metrics"], label, what it means in one line, format)
HEADLINES = (
    ("crr_percent", "Customer retention rate", "share of customers active at the start "
     "still active at the end, new ones excluded", "{:.1f} %"),
    ("churn_rate_percent", "Churn rate", "share of customers active at the start who "
     "were no longer active at the end", "{:.1f} %"),
    ("repeat_purchase_percent", "Repeat purchase rate", "share of buyers with two or more "
     "purchases", "{:.1f} %"),
    ("purchase_frequency", "Purchase frequency", "purchases per buying customer in the "
     "period", "{:.2f}"),
    ("average_order_value", "Average order value", "revenue per purchase in the period",
     "{:,.0f} ₽"),
    ("historical_clv", "Historical CLV", "revenue per customer to date", "{:,.0f} ₽"),
    ("predicted_clv", "Predicted CLV", "model: expected value over the CLV horizon",
     "{:,.0f} ₽"),
    ("points_liability", "Points liability", "unspent loyalty points (1 point = 1 ₽)",
     "{:,.0f} ₽"),
)


def report_data(
    result: RulesResult,
    *,
    as_of: datetime | date,
    top_risk: int = 20,
    names: Mapping[int, str] | None = None,
    managers: Mapping[int, int | None] | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as plain data (stable keys, see docs/report.md)."""
    metrics = result.metrics
    states = result.states
    columns = _state_columns(states)
    buyers = [i for i, n in enumerate(columns.get("purchases", [])) if n > 0]
    risk = [float(columns["churn_score"][i]) for i in buyers]
    clv = [float(v) for i in buyers if (v := columns["predicted_clv"][i]) is not None]
    return {
        "as_of": as_of.isoformat(),
        "customers": len(states),
        "buyers": len(buyers),
        "period": {"start": metrics.period_start.isoformat(),
                   "end": metrics.period_end.isoformat()},
        "metrics": _metrics(result),
        "lifecycle": dict(metrics.lifecycle_distribution),
        "value": dict(metrics.value_distribution),
        "rfm": dict(metrics.rfm_distribution),
        "tiers": dict(metrics.tier_distribution),
        "cohorts": [{"cohort": c.cohort, "size": c.size, "retention": list(c.retention)}
                    for c in metrics.cohorts],
        "churn_histogram": _histogram(risk, [i / 10 for i in range(11)]),
        "clv_histogram": _histogram(clv, _clv_edges(clv)),
        "at_risk": _at_risk(states, columns, buyers, top_risk, names or {}, managers or {}),
        "notes": list(result.notes),
    }


def _state_columns(states: Sequence[CustomerState]) -> Mapping[str, list[Any]]:
    # A RowSequence builds columns in bulk; any other sequence is read row by row.
    if isinstance(states, RowSequence):
        return states.columns(0, len(states))
    names = ("purchases", "churn_score", "predicted_clv", "lifecycle", "revenue")
    return {name: [getattr(s, name) for s in states] for name in names}


def _metrics(result: RulesResult) -> dict[str, Any]:
    m = result.metrics
    keys = ("customers_at_start", "customers_at_end", "new_customers", "first_time_customers",
            "reactivated_customers", "retained_customers", "crr_percent", "churn_rate_percent",
            "repeat_purchase_percent", "purchase_frequency", "average_order_value",
            "period_revenue", "period_purchases", "historical_clv", "predicted_clv",
            "points_liability")
    return {key: getattr(m, key) for key in keys}


def _histogram(values: Sequence[float], edges: Sequence[float]) -> dict[str, Any]:
    # Bin i holds edges[i] <= v < edges[i + 1]; the first and last bins also take what
    # falls below or above the edges.
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    bins = np.searchsorted(inner, np.asarray(values, dtype=np.float64), side="right")
    counts = np.bincount(bins, minlength=len(edges) - 1)
    return {"edges": list(edges), "counts": [int(c) for c in counts]}


def _clv_edges(values: Sequence[float]) -> list[float]:
    # Ten equal bins up to the 99th percentile; the last bin takes the long tail.
    if not values:
        return [0.0, 1.0]
    ordered = sorted(values)
    top = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] or ordered[-1] or 1.0
    step = _nice(top / 10)
    return [round(step * i, 2) for i in range(10)] + [max(ordered[-1], step * 10)]


def _nice(step: float) -> float:
    magnitude = 10 ** math.floor(math.log10(step)) if step > 0 else 1.0
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= step)


def _at_risk(states: Sequence[CustomerState], columns: Mapping[str, list[Any]],
             buyers: list[int], top: int, names: Mapping[int, str],
             managers: Mapping[int, int | None]) -> list[dict[str, Any]]:
    # Worth a call: customers who can still be kept (not yet lost), riskiest first, and
    # among equal risk the ones who brought the most revenue.
    keep = [i for i in buyers if columns["lifecycle"][i] != "lost"]
    ranked = sorted(keep, key=lambda i: (-columns["churn_score"][i], -columns["revenue"][i]))
    rows = []
    for index in ranked[:top]:
        state = states[index]
        rows.append({"customer_id": state.customer_id,
                     "name": names.get(state.customer_id),
                     "manager_id": managers.get(state.customer_id),
                     "churn_score": state.churn_score, "lifecycle": state.lifecycle,
                     "value_segment": state.value_segment, "revenue": state.revenue,
                     "last_purchase": _iso(state.last_purchase),
                     "channels": list(state.channels), "reasons": list(state.churn_reasons)})
    return rows


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


def _fmt(value: Any, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


# -- terminal ------------------------------------------------------------------------------


def render_terminal(data: Mapping[str, Any], console: Console) -> None:
    """The report as rich tables."""
    console.print(f"[bold]Retention report[/] as of {data['as_of'][:10]} — "
                  f"{data['customers']:,} customers, {data['buyers']:,} buyers; "
                  f"period {data['period']['start']} → {data['period']['end']}")
    console.print(_headline_table(data))
    console.print(_distribution_table("Lifecycle", data["lifecycle"], data["customers"]),
                  _distribution_table("Value", data["value"], data["customers"]))
    console.print(_distribution_table("Loyalty tiers", data["tiers"], data["customers"]),
                  _distribution_table("RFM groups (buyers)", data["rfm"], data["buyers"]))
    console.print(_histogram_table("Churn risk (buyers)", data["churn_histogram"], "{:.1f}"),
                  _histogram_table("Predicted CLV (buyers)", data["clv_histogram"],
                                   "{:,.0f} ₽"))
    console.print(_cohort_table(data["cohorts"], console.width))
    console.print(_risk_table(data["at_risk"]))
    for note in data["notes"]:
        console.print(f"[dim]note: {note}[/]")


def _headline_table(data: Mapping[str, Any]) -> Table:
    table = Table(title="Headline metrics")
    for column in ("metric", "value", "meaning"):
        table.add_column(column)
    for key, label, meaning, pattern in HEADLINES:
        table.add_row(label, _fmt(data["metrics"].get(key), pattern), meaning)
    return table


def _distribution_table(title: str, counts: Mapping[str, int], total: int) -> Table:
    table = Table(title=title)
    for column in ("segment", "customers", "share"):
        table.add_column(column, justify="left" if column == "segment" else "right")
    for name, count in counts.items():
        table.add_row(name, f"{count:,}", f"{count / total:.1%}" if total else "—")
    return table


def _histogram_table(title: str, histogram: Mapping[str, Any], fmt: str,
                     width: int = 24) -> Table:
    # A bar of block characters per bin: the shape of the distribution at a glance.
    table = Table(title=title)
    table.add_column("range")
    table.add_column("customers", justify="right")
    table.add_column("")
    counts, edges = histogram["counts"], histogram["edges"]
    top = max(counts, default=0)
    if not top:
        table.add_row("no data", "", "")
        return table
    for i, count in enumerate(counts):
        bar = "█" * round(width * count / top)
        table.add_row(f"{fmt.format(edges[i])} – {fmt.format(edges[i + 1])}", f"{count:,}",
                      f"[blue]{bar}[/]")
    return table


def _cohort_table(cohorts: Sequence[Mapping[str, Any]], width: int = 80) -> Table:
    # Month 0 is 100 % by definition; the columns that fit the terminal follow it.
    table = Table(title="Monthly cohorts: % buying in month k after the first purchase")
    months = max((len(c["retention"]) for c in cohorts), default=0)
    shown = range(1, min(months, max(2, (width - 22) // 5)))
    table.add_column("cohort", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    for k in shown:
        table.add_column(str(k), justify="right", no_wrap=True)
    for c in cohorts:
        cells = [_shade_cell(c["retention"][k]) if k < len(c["retention"]) else ""
                 for k in shown]
        table.add_row(c["cohort"], f"{c['size']:,}", *cells)
    return table


def _shade_cell(share: float) -> str:
    colour = "bold green" if share >= 0.3 else "green" if share >= 0.15 else "yellow" \
        if share >= 0.05 else "dim"
    return f"[{colour}]{share * 100:.0f}[/]"


def _risk_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    # Reasons are sentences: a row of their own reads better than a squeezed column.
    table = Table(title="Customers to call first (highest churn risk, not yet lost)",
                  show_lines=True)
    table.add_column("customer")
    table.add_column("risk", justify="right")
    table.add_column("why", ratio=1)
    for r in rows:
        who = (f"{r['customer_id']} {r['name'] or ''}\n[dim]{r['lifecycle']}/"
               f"{r['value_segment']}, {r['revenue']:,.0f} ₽, last {r['last_purchase'] or '—'}"
               f"{', manager ' + str(r['manager_id']) if r.get('manager_id') else ''}[/]")
        table.add_row(who, f"{r['churn_score']:.2f}", "; ".join(r["reasons"]))
    return table


# -- HTML ---------------------------------------------------------------------------------


def render_html(data: Mapping[str, Any]) -> str:
    """One self-contained page (inline CSS and SVG) that opens offline."""
    sections = [
        f"<h1>Retention report</h1><p class=muted>as of {escape(data['as_of'][:10])} · "
        f"{data['customers']:,} customers · {data['buyers']:,} buyers · period "
        f"{escape(data['period']['start'])} → {escape(data['period']['end'])}</p>",
        _cards(data["metrics"]),
        _section("Monthly cohort retention", heatmap(
            [(c["cohort"], c["size"], c["retention"]) for c in data["cohorts"]],
            label="Cohort retention heatmap"),
            "Each row is the customers whose first purchase fell in that month; cell k is "
            "the share of them who bought again in month k."),
        "<div class=grid>",
        _section("Lifecycle segments", bar_chart(list(data["lifecycle"].items()),
                                                 label="Lifecycle segment sizes")),
        _section("Value segments", bar_chart(list(data["value"].items()),
                                             label="Value segment sizes")),
        _section("Loyalty tiers", bar_chart(list(data["tiers"].items()),
                                            label="Loyalty tier distribution")),
        _section("Churn risk", histogram([int(c) for c in data["churn_histogram"]["counts"]],
                                         data["churn_histogram"]["edges"],
                                         label="Churn risk histogram",
                                         x_label="churn score (0 = safe, 1 = gone)")),
        _section("Predicted CLV", histogram([int(c) for c in data["clv_histogram"]["counts"]],
                                            data["clv_histogram"]["edges"],
                                            label="Predicted CLV distribution",
                                            x_label="predicted value per buyer, ₽",
                                            fmt="{:,.0f}")),
        _section("RFM groups", bar_chart(list(data["rfm"].items()), label="RFM group sizes")),
        "</div>",
        _section("Customers to call first", _risk_html(data["at_risk"])),
        "".join(f"<p class=muted>note: {escape(n)}</p>" for n in data["notes"]),
    ]
    return _PAGE.format(body="\n".join(sections))


def _cards(metrics: Mapping[str, Any]) -> str:
    cards = [f"<div class=card><div class=v>{escape(_fmt(metrics.get(key), pattern))}</div>"
             f"<div class=k>{escape(label)}</div><div class=m>{escape(meaning)}</div></div>"
             for key, label, meaning, pattern in HEADLINES]
    return f"<div class=cards>{''.join(cards)}</div>"


def _section(title: str, body: str, caption: str = "") -> str:
    note = f"<p class=muted>{escape(caption)}</p>" if caption else ""
    return f"<section><h2>{escape(title)}</h2>{note}{body}</section>"


def _risk_html(rows: Sequence[Mapping[str, Any]]) -> str:
    head = ("<tr><th>id</th><th>name</th><th>risk</th><th>segment</th><th>revenue, ₽</th>"
            "<th>last purchase</th><th>manager</th><th>why</th></tr>")
    body = "".join(
        f"<tr><td>{r['customer_id']}</td><td>{escape(r['name'] or '')}</td>"
        f"<td>{r['churn_score']:.2f}</td><td>{escape(r['lifecycle'])} / "
        f"{escape(r['value_segment'])}</td><td class=n>{r['revenue']:,.0f}</td>"
        f"<td>{escape(r['last_purchase'] or '')}</td><td>{r.get('manager_id') or ''}</td>"
        f"<td>{escape('; '.join(r['reasons']))}</td></tr>" for r in rows)
    return f"<table>{head}{body}</table>"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Retention report</title>
<style>
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1000px;color:#1d2733;padding:0 16px}}
h1{{margin-bottom:4px}} h2{{font-size:18px;margin:0 0 8px}}
section{{background:#fff;border:1px solid #e3e8ef;border-radius:8px;padding:14px 16px;
margin:14px 0;overflow-x:auto}}
.grid{{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:0 14px}}
.cards{{display:grid;grid-template-columns:repeat(4,1fr);gap:10px;margin:16px 0}}
.card{{border:1px solid #e3e8ef;border-radius:8px;padding:10px 12px;background:#f8fafc}}
.card .v{{font-size:22px;font-weight:600}} .card .k{{font-size:13px;margin-top:2px}}
.card .m,.muted{{color:#66717f;font-size:12px}}
table{{border-collapse:collapse;font-size:13px;width:100%}}
th,td{{border-bottom:1px solid #edf0f4;padding:5px 8px;text-align:left;vertical-align:top}}
td.n{{text-align:right}}
</style></head><body>
{body}
</body></html>
"""
