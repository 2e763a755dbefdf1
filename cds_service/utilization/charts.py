"""The report as one HTML page with charts: `cds-service report --format html` (an offline file,
plotly.js inside) and `GET /dashboard` (plotly.js from the service, filters, exports).

Read at a glance: verdict and outcome colours that stay apart for colour-blind readers and in
greyscale (tests/test_report.py simulates both), every time labelled UTC, every label plain text.
Plotly draws `<a href>`, `<b>` and friends in any label it is given, so every string from the
record (clinician ids, sites, override texts) reaches plotly with `<`, `>` and `&` as entities,
which it shows as the characters themselves. The page's script runs the charts from JSON data
blocks, so the dashboard can forbid every script but its own (a nonce; see web/dashboard.py).
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import urlencode

from .render import render_text
from .report import MODES, NO_SITE, OUTCOME_LABELS, OUTCOMES, verdict_label, verdict_order

# Dark blue, light blue, light orange, dark red, light grey: apart in hue and lightness, also for
# protanopia, deuteranopia, tritanopia and in greyscale. A verdict added later: grey, hatched.
VERDICT_COLOURS = {
    "indicated-urgent": "#08306B",
    "indicated-routine": "#6BAED6",
    "radiographs-first": "#FDB863",
    "low-value": "#B2182B",
    "insufficient-information": "#E0E0E0",
}
OTHER_VERDICT_COLOUR = "#7F7F7F"
OUTCOME_COLOURS = {"changed": "#08306B", "cancelled": "#6BAED6", "signed": "#B2182B", "pending": "#E0E0E0"}
MODE_COLOURS = {"live": "#2166AC", "shadow": "#BDBDBD"}
OUTLINE = {"color": "#555555", "width": 0.6}  # so the light grey bars show on white
# a rate on the right of a chart of counts: 0 to 100% in quarters, not ticks aligned with the counts
RATE_AXIS = {
    "overlaying": "y",
    "side": "right",
    "range": [0, 1.02],
    "tickmode": "array",
    "tickvals": [0, 0.25, 0.5, 0.75, 1],
    "ticktext": ["0%", "25%", "50%", "75%", "100%"],
    "showgrid": False,
    "zeroline": False,
}


def plain(text: Any) -> str:
    """A label plotly shows as it is: no tag it could draw as a link or as markup."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _pct(value) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def verdict_marker(verdict: str) -> dict:
    if verdict in VERDICT_COLOURS:
        return {"color": VERDICT_COLOURS[verdict], "line": OUTLINE}
    return {"color": OTHER_VERDICT_COLOUR, "line": OUTLINE, "pattern": {"shape": "x"}}


def _figure(data: list[dict], layout: dict) -> dict:
    base = {
        "margin": {"l": 60, "r": 70, "t": 20, "b": 40},
        "template": "plotly_white",
        # below the chart, in the order the traces are drawn (stacked bars: bottom first)
        "legend": {"orientation": "h", "y": -0.22, "yanchor": "top", "traceorder": "normal", "font": {"size": 11}},
        "font": {"size": 12, "family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif"},
        "hoverlabel": {"namelength": -1},
    }
    return {"data": data, "layout": {**base, **layout}}


def _figures(report: dict) -> list[tuple[str, str, dict]]:
    """(title, note under the title, plotly figure as JSON-able dict) for each chart."""
    charts = []
    regions = list(report["verdicts_by_region"])
    verdicts = verdict_order({v for counts in report["verdicts_by_region"].values() for v in counts})
    charts.append(
        (
            "Verdicts by region",
            "orders, by the latest card of each",
            _figure(
                [
                    {
                        "type": "bar",
                        "name": plain(verdict_label(v)),
                        "x": [plain(r) for r in regions],
                        "y": [report["verdicts_by_region"][r].get(v, 0) for r in regions],
                        "marker": verdict_marker(v),
                    }
                    for v in verdicts
                ],
                {"barmode": "stack", "yaxis": {"title": {"text": "orders"}}},
            ),
        )
    )

    weeks = [w["week"] for w in report["weekly"]]
    charts.append(
        (
            "Orders per week and low-value rate as ordered",
            "weeks start on Monday (UTC); bars: orders by mode; line: low-value share of the first cards",
            _figure(
                [
                    *[
                        {
                            "type": "bar",
                            "name": f"{mode} orders",
                            "x": weeks,
                            "y": [w[mode] for w in report["weekly"]],
                            "marker": {"color": MODE_COLOURS[mode], "line": OUTLINE},
                        }
                        for mode in MODES
                    ],
                    {
                        "type": "scatter",
                        "mode": "lines+markers",
                        "name": "low-value rate as ordered",
                        "x": weeks,
                        "y": [w["low_value_rate"] for w in report["weekly"]],
                        "yaxis": "y2",
                        "line": {"color": VERDICT_COLOURS["low-value"], "width": 2},
                    },
                ],
                {
                    "barmode": "stack",
                    "xaxis": {"title": {"text": "week of (UTC)"}, "type": "category"},
                    "yaxis": {"title": {"text": "orders"}},
                    "yaxis2": {**RATE_AXIS, "title": {"text": "low-value rate"}},
                },
            ),
        )
    )

    outcomes = report["outcomes"]
    advice_verdicts = list(outcomes["by_verdict"])
    charts.append(
        (
            "What happened to advised orders",
            f"live cards saying low-value or another study first; cancelled includes no order-sign within "
            f"{outcomes['unsigned_after_hours']:g} h",
            _figure(
                [
                    {
                        "type": "bar",
                        "orientation": "h",
                        "name": OUTCOME_LABELS[name],
                        "y": [plain(verdict_label(v)) for v in advice_verdicts],
                        "x": [outcomes["by_verdict"][v][name] for v in advice_verdicts],
                        "text": [outcomes["by_verdict"][v][name] or "" for v in advice_verdicts],
                        "textposition": "inside",
                        "insidetextanchor": "middle",
                        "marker": {"color": OUTCOME_COLOURS[name], "line": OUTLINE},
                    }
                    for name in OUTCOMES
                ],
                {"barmode": "stack", "xaxis": {"title": {"text": "orders"}}, "yaxis": {"automargin": True}},
            ),
        )
    )
    charts.append(
        (
            "Signed despite the advice, per week",
            "share of the decided advised orders (changed, cancelled or signed) that were signed; "
            "by the week of the advice (UTC)",
            _figure(
                [
                    {
                        "type": "bar",
                        "name": "advised orders",
                        "x": weeks,
                        "y": [w["advised"] for w in report["weekly"]],
                        "marker": {"color": "#D9D9D9", "line": OUTLINE},
                    },
                    {
                        "type": "scatter",
                        "mode": "lines+markers",
                        "name": "signed despite the advice",
                        "x": weeks,
                        "y": [w["signed_rate"] for w in report["weekly"]],
                        "yaxis": "y2",
                        "line": {"color": OUTCOME_COLOURS["signed"], "width": 2},
                    },
                ],
                {
                    "xaxis": {"title": {"text": "week of (UTC)"}, "type": "category"},
                    "yaxis": {"title": {"text": "advised orders"}},
                    "yaxis2": {**RATE_AXIS, "title": {"text": "signed rate"}},
                },
            ),
        )
    )

    go_live = report["go_live"]
    periods = [m for m in ("shadow", "live") if go_live[m]["signed_orders"]]  # before, then after go-live
    charts.append(
        (
            "Go-live: low-value MRI among signed orders",
            "shadow period (no card shown) against live period; dates in UTC",
            _figure(
                [
                    {
                        "type": "bar",
                        "x": [
                            f"{mode}<br>{go_live[mode]['since']} to {go_live[mode]['until']}<br>"
                            f"{go_live[mode]['signed_orders']} signed"
                            for mode in periods
                        ],
                        "y": [go_live[mode]["low_value_rate"] for mode in periods],
                        "text": [_pct(go_live[mode]["low_value_rate"]) for mode in periods],
                        "textposition": "outside",
                        "marker": {"color": [MODE_COLOURS[m] for m in periods], "line": OUTLINE},
                        "showlegend": False,
                    }
                ],
                {
                    "yaxis": {"tickformat": ".0%", "range": [0, 1.05], "title": {"text": "low-value rate"}},
                    "margin": {"l": 60, "r": 30, "t": 20, "b": 70},
                },
            ),
        )
    )

    charts.append(_funnel(report))
    charts.append(_heatmap(report))

    advice = report["advice"]
    charts.append(
        (
            "Advice taken or overridden",
            "live orders whose card suggested something",
            _figure(
                [
                    {
                        "type": "bar",
                        "x": ["taken", "overridden", "no feedback"],
                        "y": [advice["taken"], advice["overridden"], advice["no_feedback"]],
                        "marker": {"color": ["#2166AC", "#B2182B", "#E0E0E0"], "line": OUTLINE},
                        "showlegend": False,
                    }
                ],
                {"yaxis": {"title": {"text": "orders"}}},
            ),
        )
    )
    reasons = advice["override_reasons"]
    charts.append(
        (
            "Override reasons",
            "live orders whose latest answer overrode the card",
            _figure(
                [
                    {
                        "type": "bar",
                        "orientation": "h",
                        "y": [plain(r["display"] or r["code"]) for r in reasons][::-1],
                        "x": [r["orders"] for r in reasons][::-1],
                        "marker": {"color": "#B2182B"},
                        "showlegend": False,
                    }
                ],
                {"xaxis": {"title": {"text": "orders"}}, "yaxis": {"automargin": True}},
            ),
        )
    )
    return charts


def _funnel(report: dict) -> tuple[str, str, dict]:
    from .report import funnel_limits

    group = report["group_low_value_rate"] or 0.0
    minimum = report["min_orders"]
    shown = [c for c in report["clinicians"] if c["low_value_rate"] is not None]
    most = max([c["orders"] for c in shown] + [minimum * 2])
    steps = sorted({minimum + round((most - minimum) * i / 60) for i in range(61)})
    limits = [funnel_limits(group, n) for n in steps]
    lines = [
        ("99.8% limits", "lower_998", "upper_998", "dash"),
        ("95% limits", "lower_95", "upper_95", "dot"),
    ]
    data: list[dict] = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "group rate",
            "x": [steps[0], steps[-1]],
            "y": [group, group],
            "line": {"color": "#333333", "width": 1.5},
        }
    ]
    for name, low, high, dash in lines:
        for key, legend in ((low, True), (high, False)):
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": name,
                    "legendgroup": name,
                    "showlegend": legend,
                    "x": steps,
                    "y": [limit[key] for limit in limits],
                    "line": {"color": "#777777", "width": 1, "dash": dash},
                    "hoverinfo": "skip",
                }
            )
    outside = {"above 99.8% limit", "below 99.8% limit"}
    data.append(
        {
            "type": "scatter",
            "mode": "markers+text",
            "name": "clinicians",
            "x": [c["orders"] for c in shown],
            "y": [c["low_value_rate"] for c in shown],
            # only clinicians outside the 99.8% limits are named on the chart; every one on hover
            "text": [plain(c["user"]) if c["funnel"] in outside else "" for c in shown],
            "textposition": "top center",
            "hovertext": [
                plain(f"{c['user']}: {c['low_value']} of {c['orders']} ({_pct(c['low_value_rate'])}), {c['funnel']}")
                for c in shown
            ],
            "hoverinfo": "text",
            "marker": {
                "size": 9,
                "color": ["#B2182B" if c["funnel"].startswith("above") else "#2166AC" for c in shown],
                "line": {"color": "#FFFFFF", "width": 1},
            },
        }
    )
    note = (
        f"low-value rate as ordered against number of orders, limits around the group rate ({_pct(group)}); "
        f"names on hover, and on the chart outside the 99.8% limits; fewer than {minimum} orders: not shown"
    )
    return (
        "Clinicians compared: funnel plot",
        note,
        _figure(
            data,
            {
                "xaxis": {"title": {"text": "orders in the period"}},
                "yaxis": {"title": {"text": "low-value rate as ordered"}, "tickformat": ".0%", "range": [0, 1]},
            },
        ),
    )


def _heatmap(report: dict) -> tuple[str, str, dict]:
    months = report["months"]
    rows = report["clinician_months"][:25][::-1]
    z, text = [], []
    for entry in rows:
        z.append([(entry["months"].get(m) or {}).get("low_value_rate") for m in months])
        text.append(
            [
                (
                    f"{cell['low_value']} of {cell['orders']}"
                    if cell and cell["low_value_rate"] is not None
                    else (f"{cell['orders']} order{'s' if cell['orders'] != 1 else ''}" if cell else "")
                )
                for cell in (entry["months"].get(m) for m in months)
            ]
        )
    return (
        "Clinicians by month: low-value rate as ordered",
        f"calendar months (UTC); low-value orders of all orders; uncoloured: fewer than {report['min_orders']} "
        "orders in the month, no rate",
        _figure(
            [
                {
                    "type": "heatmap",
                    "x": months,
                    "y": [plain(entry["user"]) for entry in rows],
                    "z": z,
                    "text": text,
                    "texttemplate": "%{text}",
                    "hovertemplate": "%{y}, %{x}: %{text}<extra></extra>",
                    "zmin": 0,
                    "zmax": 1,
                    "colorscale": [[0, "#F7F7F7"], [0.5, "#F4A582"], [1, "#67001F"]],
                    "colorbar": {"tickformat": ".0%", "title": {"text": "rate"}},
                    "xgap": 2,
                    "ygap": 2,
                }
            ],
            {
                "xaxis": {"type": "category", "side": "top"},
                "yaxis": {"automargin": True},
                "margin": {"l": 60, "r": 30, "t": 40, "b": 20},
            },
        ),
    )


def _data_block(figure: dict, element_id: str) -> str:
    """A figure as a JSON data block: never executed, and no `</script>` can end it early."""
    payload = json.dumps(figure, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{element_id}">{payload}</script>'


DRAW = """
document.querySelectorAll('script[type="application/json"][id^="figure-"]').forEach(function (block) {
  var figure = JSON.parse(block.textContent);
  var target = document.getElementById(block.id.replace('figure-', 'chart-'));
  Plotly.newPlot(target, figure.data, figure.layout,
    {displaylogo: false, responsive: true, modeBarButtonsToRemove: ['select2d', 'lasso2d']});
});
"""

STYLE = (
    "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}"
    "h1{font-size:22px;margin:0 0 4px}.sub{color:#555;margin-bottom:12px}"
    "form.filters{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-end;background:#fff;border:1px solid #ddd;"
    "border-radius:8px;padding:10px 14px;margin-bottom:14px}form.filters label{display:flex;flex-direction:column;"
    "font-size:12px;color:#555;gap:2px}form.filters select,form.filters input{font-size:13px;padding:3px 4px}"
    "form.filters button{font-size:13px;padding:4px 12px}.exports{font-size:13px;margin-left:auto}"
    ".exports a{margin-left:10px}"
    ".tiles{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}.tile{background:#fff;border:1px solid #ddd;"
    "border-radius:8px;padding:12px 16px;min-width:170px;flex:1}.tile .v{font-size:26px;font-weight:600}"
    ".tile .k{color:#444;font-size:13px}.tile .s{color:#666;font-size:12px}"
    ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:16px}"
    ".card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px 12px;min-width:0;overflow:hidden}"
    ".card h2{font-size:15px;margin:6px 0 0}.card .note{color:#666;font-size:12px;margin:2px 0 4px}"
    ".chart{height:380px}.notice{color:#8a5a00;font-size:13px;margin:2px 0}"
    "table.t{border-collapse:collapse;font-size:13px;background:#fff;margin:8px 0 16px}"
    "table.t th,table.t td{border:1px solid #ddd;padding:3px 8px;text-align:left}table.t td.n{text-align:right}"
    "h2.section{font-size:16px;margin:22px 0 6px}"
)


def _tiles(report: dict) -> list[tuple[str, str, str]]:
    advice, latency, completeness = report["advice"], report["latency_ms"], report["completeness"]
    low = report["outcomes"]["low_value"]
    by_mode = report["orders_by_mode"]
    http = (
        f"{latency['http_p50']} / {latency['http_p99']}"
        if latency["http_calls"]
        else f"{latency['p50']} / {latency['p99']}"
    )
    return [
        ("Orders", f"{report['orders']}", f"live {by_mode['live']}, shadow {by_mode['shadow']}"),
        (
            "Low-value MRI as ordered",
            _pct(report["low_value_rate_as_ordered"]),
            f"as last rated {_pct(report['low_value_rate'])}",
        ),
        (
            "Low-value signed despite advice",
            _pct(low["signed_rate"]),
            f"{low['signed']} of {low['changed'] + low['cancelled'] + low['signed']} decided (live)",
        ),
        ("Advice taken", _pct(advice["taken_rate"]), f"{advice['taken']} taken, {advice['overridden']} overridden"),
        (
            "Hook latency p50 / p99",
            http,
            "ms, as the EHR waited (HTTP)" if latency["http_calls"] else "ms, evaluation only (no HTTP times)",
        ),
        ("Rated with data unread", _pct(completeness["share"]), f"{completeness['orders_with_unread_sources']} orders"),
    ]


def _filters_form(report: dict, controls: dict) -> str:
    chosen = report["filters"]

    def select(name: str, label: str, options: list[str]) -> str:
        items = ['<option value="">all</option>'] + [
            f'<option value="{html.escape(o)}"{" selected" if chosen.get(name) == o else ""}>{html.escape(o)}</option>'
            for o in options
        ]
        return f'<label>{label}<select name="{name}">{"".join(items)}</select></label>'

    choices = report["choices"]
    window = report["window"]
    query = {k: v for k, v in {"since": window["since"], "until": window["until"], **chosen}.items() if v}
    exports = "".join(
        f'<a href="{html.escape(url)}?{html.escape(urlencode(query))}">{html.escape(name)}</a>'
        for name, url in controls.get("exports", [])
    )
    return (
        f'<form class="filters" method="get" action="{html.escape(controls["action"])}">'
        f'<label>from (UTC)<input type="date" name="since" value="{html.escape(window["since"])}"></label>'
        f'<label>to (UTC)<input type="date" name="until" value="{html.escape(window["until"])}"></label>'
        + select("region", "region", choices["regions"])
        + select("clinician", "clinician", choices["clinicians"])
        + select("site", "site", choices["sites"])
        + select("mode", "mode", choices["modes"])
        + '<button type="submit">Show</button>'
        + f'<span class="exports">Export:{exports}</span></form>'
    )


def _table(headers: list[str], rows: list[list], numeric: set[int]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{html.escape(str(cell))}</td>' if i in numeric else f"<td>{html.escape(str(cell))}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="t"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(
    report: dict,
    plotly_script: str | None = None,
    title: str = "Spine MRI orders",
    nonce: str | None = None,
    controls: dict | None = None,
) -> str:
    """One HTML page. `plotly_script`: a URL to load plotly.js from; None embeds it (an offline
    file). `nonce`: put on every script the page runs (the dashboard's Content-Security-Policy).
    `controls`: the dashboard's filter form and export links ({"action": url, "exports": [(name, url)]})."""
    from plotly.offline import get_plotlyjs

    nonce_attribute = f' nonce="{html.escape(nonce)}"' if nonce else ""
    script = (
        f'<script src="{html.escape(plotly_script)}"{nonce_attribute}></script>'
        if plotly_script
        else f"<script>{get_plotlyjs()}</script>"
    )
    window = report["window"]
    notices = []
    if report["synthetic_orders"]:
        notices.append(f"Includes {report['synthetic_orders']} synthetic demo orders (cds-service demo).")
    if report["shadow_orders"]:
        notices.append(
            f"{report['shadow_orders']} orders were rated in shadow mode (no card shown): counted as orders, "
            "never as advice, taken, overridden or outcomes."
        )
    if report["outcomes"]["advised"] and not report["order_sign_calls"]:
        notices.append("No order-sign call in this period: signed orders cannot be told from cancelled ones.")
    filters = ", ".join(f"{k} {v}" for k, v in report["filters"].items())
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<link rel='icon' href='data:,'>",  # no favicon request
        f"<title>{html.escape(title)}</title>",
        script,
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<div class='sub'>{html.escape(window['since'])} to {html.escape(window['until'])} (dates and times in UTC)"
        + (f" &middot; only {html.escape(filters)}" if filters else "")
        + f" &middot; per order; generated {html.escape(report['generated_at'])}</div>",
    ]
    if controls:
        parts.append(_filters_form(report, controls))
    parts += [f"<div class='notice'>{html.escape(n)}</div>" for n in notices]
    parts.append(
        "<div class='tiles'>"
        + "".join(
            f"<div class='tile'><div class='k'>{html.escape(k)}</div><div class='v'>{html.escape(v)}</div>"
            f"<div class='s'>{html.escape(s)}</div></div>"
            for k, v, s in _tiles(report)
        )
        + "</div>"
    )
    parts.append("<div class='grid'>")
    blocks = []
    for index, (name, note, figure) in enumerate(_figures(report)):
        parts.append(
            f"<div class='card'><h2>{html.escape(name)}</h2><div class='note'>{html.escape(note)}</div>"
            f"<div class='chart' id='chart-{index}'></div></div>"
        )
        blocks.append(_data_block(figure, f"figure-{index}"))
    parts.append("</div>")
    minimum = report["min_orders"]
    parts.append(f"<h2 class='section'>Clinicians (no rate under {minimum} orders)</h2>")
    parts.append(
        _table(
            ["userId", "orders", "low-value as ordered", "rate", "funnel", "advised", "signed anyway", "signed rate"],
            [
                [
                    c["user"],
                    c["orders"],
                    c["low_value"],
                    _pct(c["low_value_rate"]) if c["low_value_rate"] is not None else f"< {minimum} orders",
                    c["funnel"],
                    c["advised"],
                    c["signed_anyway"],
                    _pct(c["signed_rate"]),
                ]
                for c in report["clinicians"]
            ],
            {1, 2, 3, 5, 6, 7},
        )
    )
    if any(s["site"] != NO_SITE for s in report["sites"]):
        parts.append("<h2 class='section'>Sites</h2>")
        parts.append(
            _table(
                ["site", "orders", "low-value as ordered", "rate", "advised", "signed anyway", "signed rate"],
                [
                    [
                        s["site"],
                        s["orders"],
                        s["low_value"],
                        _pct(s["low_value_rate"]) if s["low_value_rate"] is not None else f"< {minimum} orders",
                        s["advised"],
                        s["signed_anyway"],
                        _pct(s["signed_rate"]),
                    ]
                    for s in report["sites"]
                ],
                {1, 2, 3, 4, 5, 6},
            )
        )
    parts.append(
        "<h2 class='section'>The numbers</h2><pre style='background:#fff;border:1px solid #ddd;"
        f"padding:12px;overflow:auto'>{html.escape(render_text(report))}</pre>"
    )
    parts += blocks
    parts.append(f"<script{nonce_attribute}>{DRAW}</script></body></html>")
    return "\n".join(parts)
