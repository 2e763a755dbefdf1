"""What a radiology utilization team asks of the evaluation log, as text, CSV, JSON or HTML.

Counts are per order (the latest card of each order, see `store.orders`), not per hook call:
an order re-fired by order-select five times and then signed is one order. Advice is "taken"
when the clinician accepted a suggestion on any card of the order, "overridden" when the
latest feedback overrode it. The same numbers feed `cds-service report` and `GET /dashboard`.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import sqlalchemy as sa

from .store import evaluations, feedback, orders

NOT_INDICATED = ("low-value", "radiographs-first")
VERDICT_ORDER = ("indicated-urgent", "indicated-routine", "radiographs-first", "low-value", "insufficient-information")
REGION_ORDER = ("lumbar", "cervical", "thoracic", "multi", "unspecified")
VERDICT_COLOURS = {
    "indicated-urgent": "#b2182b",
    "indicated-routine": "#4393c3",
    "radiographs-first": "#f4a582",
    "low-value": "#d6604d",
    "insufficient-information": "#bababa",
}


@dataclass(frozen=True)
class Window:
    since: date
    until: date  # inclusive

    @property
    def start(self) -> datetime:
        return datetime.combine(self.since, datetime.min.time())

    @property
    def end(self) -> datetime:
        return datetime.combine(self.until + timedelta(days=1), datetime.min.time())

    @classmethod
    def last_days(cls, days: int, today: date | None = None) -> Window:
        today = today or datetime.utcnow().date()
        return cls(today - timedelta(days=days - 1), today)


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = share * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 1)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def build_report(engine: sa.Engine, window: Window, top: int = 10) -> dict:
    latest = evaluations.alias("latest")
    with engine.connect() as connection:
        order_rows = connection.execute(
            sa.select(
                orders.c.order_key,
                orders.c.evaluations,
                latest.c.region,
                latest.c.verdict,
                latest.c.rating,
                latest.c.user_id,
                latest.c.unread_sources,
                latest.c.evaluated_at,
                latest.c.synthetic,
                latest.c.mode,
                latest.c.suggestion_kinds,
            )
            .join(latest, latest.c.card_uuid == orders.c.latest_card_uuid)
            .where(orders.c.latest_at >= window.start, orders.c.latest_at < window.end)
        ).all()
        in_window = sa.select(orders.c.order_key).where(
            orders.c.latest_at >= window.start, orders.c.latest_at < window.end
        )
        feedback_rows = connection.execute(
            sa.select(
                evaluations.c.order_key,
                feedback.c.outcome,
                feedback.c.accepted_kinds,
                feedback.c.override_code,
                feedback.c.override_display,
                feedback.c.received_at,
            )
            .join(evaluations, evaluations.c.card_uuid == feedback.c.card_uuid)
            .where(evaluations.c.order_key.in_(in_window))
            .order_by(feedback.c.received_at)
        ).all()
        # a call that rated several orders has one card each but one latency: count calls, not cards
        calls = connection.execute(
            sa.select(sa.func.max(evaluations.c.latency_ms))
            .where(evaluations.c.evaluated_at >= window.start, evaluations.c.evaluated_at < window.end)
            .group_by(evaluations.c.hook_instance)
        ).all()
        latencies = [value for (value,) in calls if value is not None]

    # The clinician's answer per order: accepted if any card of it had a suggestion accepted,
    # else the latest override.
    outcome: dict[str, dict] = {}
    for answer_row in feedback_rows:
        current = outcome.get(answer_row.order_key)
        if answer_row.outcome == "accepted":
            kinds = json.loads(answer_row.accepted_kinds or "[]")
            outcome[answer_row.order_key] = {"outcome": "accepted", "kinds": kinds}
        elif current is None or current["outcome"] != "accepted":
            outcome[answer_row.order_key] = {
                "outcome": "overridden",
                "code": answer_row.override_code or "(none given)",
                "display": answer_row.override_display or "",
            }

    total = len(order_rows)
    by_region: dict[str, Counter[str]] = defaultdict(Counter)
    verdicts: Counter[str] = Counter()
    clinicians: dict[str, Counter[str]] = defaultdict(Counter)
    weekly: dict[str, Counter[str]] = defaultdict(Counter)
    unread_orders, unread_by_source = 0, Counter[str]()
    advised: Counter[str] = Counter()
    override_reasons: Counter[str] = Counter()
    override_displays: dict[str, str] = {}
    accepted_kinds: Counter[str] = Counter()
    for row in order_rows:
        verdicts[row.verdict] += 1
        by_region[row.region or "unspecified"][row.verdict] += 1
        week = (row.evaluated_at.date() - timedelta(days=row.evaluated_at.weekday())).isoformat()
        weekly[week]["orders"] += 1
        clinician = row.user_id or "(no userId)"
        clinicians[clinician]["orders"] += 1
        if row.verdict == "low-value":
            clinicians[clinician]["low_value"] += 1
            weekly[week]["low_value"] += 1
        unread = json.loads(row.unread_sources or "[]")
        if unread:
            unread_orders += 1
            unread_by_source.update(unread)
        has_advice = bool(json.loads(row.suggestion_kinds or "{}"))
        answer = outcome.get(row.order_key)
        if has_advice:
            advised["with advice"] += 1
            if answer is None:
                advised["no feedback"] += 1
            elif answer["outcome"] == "accepted":
                advised["taken"] += 1
                weekly[week]["taken"] += 1
                accepted_kinds.update(answer["kinds"])
            else:
                advised["overridden"] += 1
                weekly[week]["overridden"] += 1
                override_reasons[answer["code"]] += 1
                override_displays.setdefault(answer["code"], answer["display"])

    ranked = sorted(clinicians.items(), key=lambda item: (-item[1]["low_value"], -item[1]["orders"], item[0]))
    return {
        "window": {"since": window.since.isoformat(), "until": window.until.isoformat()},
        "orders": total,
        "hook_calls": len(calls),
        "synthetic_orders": sum(1 for row in order_rows if row.synthetic),
        "shadow_orders": sum(1 for row in order_rows if row.mode == "shadow"),
        "verdicts": {v: verdicts[v] for v in VERDICT_ORDER if verdicts[v]},
        "verdicts_by_region": {
            region: {v: by_region[region][v] for v in VERDICT_ORDER if by_region[region][v]}
            for region in REGION_ORDER
            if region in by_region
        },
        "low_value_rate": _rate(verdicts["low-value"], total),
        "not_indicated_rate": _rate(sum(verdicts[v] for v in NOT_INDICATED), total),
        "advice": {
            "orders_with_advice": advised["with advice"],
            "taken": advised["taken"],
            "overridden": advised["overridden"],
            "no_feedback": advised["no feedback"],
            "taken_rate": _rate(advised["taken"], advised["taken"] + advised["overridden"]),
            "accepted_by_kind": dict(accepted_kinds.most_common()),
            "override_reasons": [
                {"code": code, "display": override_displays.get(code, ""), "orders": n}
                for code, n in override_reasons.most_common()
            ],
        },
        "clinicians": [
            {
                "user": user,
                "orders": c["orders"],
                "low_value": c["low_value"],
                "low_value_rate": _rate(c["low_value"], c["orders"]),
            }
            for user, c in ranked[:top]
        ],
        "weekly": [
            {
                "week": week,
                "orders": c["orders"],
                "low_value": c["low_value"],
                "low_value_rate": _rate(c["low_value"], c["orders"]),
                "taken": c["taken"],
                "overridden": c["overridden"],
            }
            for week, c in sorted(weekly.items())
        ],
        "latency_ms": {
            "hook_calls": len(latencies),
            "p50": _percentile(latencies, 0.5),
            "p99": _percentile(latencies, 0.99),
        },
        "completeness": {
            "orders_with_unread_sources": unread_orders,
            "share": _rate(unread_orders, total),
            "unread_by_source": dict(unread_by_source.most_common()),
        },
    }


# ----------------------------------------------------------------------------- renderers


def _pct(value) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _looks_numeric(cell: str) -> bool:
    return cell.rstrip("%").replace(".", "", 1).replace("-", "", 1).isdigit() or cell == "-"


def _table(headers: list[str], rows: list[list]) -> list[str]:
    cells = [headers] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_looks_numeric(row[i]) for row in cells[1:]) for i in range(len(headers))]

    def line(row):  # words to the left, numbers to the right
        return "  ".join(
            cell.rjust(w) if numeric[i] else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    return [line(cells[0]), line(["-" * w for w in widths])] + [line(row) for row in cells[1:]]


def render_text(report: dict) -> str:
    window = report["window"]
    out = [f"spine-imaging CDS: spine MRI orders {window['since']} to {window['until']}", ""]
    notes = []
    if report["synthetic_orders"]:
        notes.append(f"{report['synthetic_orders']} of them synthetic demo history (cds-service demo)")
    if report["shadow_orders"]:
        notes.append(f"{report['shadow_orders']} evaluated in shadow mode (no card shown)")
    out.append(
        f"Orders evaluated: {report['orders']} ({report['hook_calls']} hook calls)"
        + (f"; {'; '.join(notes)}" if notes else "")
    )
    out.append(
        f"Low-value MRI: {_pct(report['low_value_rate'])} of orders; not indicated as ordered "
        f"(low-value or another study first): {_pct(report['not_indicated_rate'])}"
    )
    out += ["", "Verdicts by region"]
    regions = report["verdicts_by_region"]
    out += _table(
        ["region", *list(VERDICT_ORDER), "orders"],
        [[r] + [counts.get(v, 0) for v in VERDICT_ORDER] + [sum(counts.values())] for r, counts in regions.items()],
    )
    advice = report["advice"]
    out += [
        "",
        f"Advice (orders whose card suggested something): {advice['orders_with_advice']}; taken "
        f"{advice['taken']}, overridden {advice['overridden']}, no feedback {advice['no_feedback']}; "
        f"taken rate {_pct(advice['taken_rate'])}",
    ]
    if advice["accepted_by_kind"]:
        out.append("  taken as: " + ", ".join(f"{kind} {n}" for kind, n in advice["accepted_by_kind"].items()))
    if advice["override_reasons"]:
        out += ["", "Override reasons"]
        out += _table(
            ["reason", "display", "orders"],
            [[r["code"], r["display"], r["orders"]] for r in advice["override_reasons"]],
        )
    out += ["", "Ordering clinicians, most low-value orders first"]
    out += _table(
        ["userId", "orders", "low-value", "rate"],
        [[c["user"], c["orders"], c["low_value"], _pct(c["low_value_rate"])] for c in report["clinicians"]],
    )
    out += ["", "Weekly trend"]
    out += _table(
        ["week of", "orders", "low-value", "rate", "taken", "overridden"],
        [
            [w["week"], w["orders"], w["low_value"], _pct(w["low_value_rate"]), w["taken"], w["overridden"]]
            for w in report["weekly"]
        ],
    )
    latency = report["latency_ms"]
    out += [
        "",
        f"Latency per hook call: p50 {latency['p50']} ms, p99 {latency['p99']} ms ({latency['hook_calls']} calls)",
    ]
    completeness = report["completeness"]
    out.append(
        f"Data completeness: {completeness['orders_with_unread_sources']} orders ({_pct(completeness['share'])}) "
        "were rated with a data source unread"
        + (
            ": " + ", ".join(f"{k} {n}" for k, n in completeness["unread_by_source"].items())
            if completeness["unread_by_source"]
            else ""
        )
    )
    return "\n".join(out) + "\n"


def render_csv(report: dict) -> str:
    """Long format (section, key, subkey, value): one sheet an analyst can pivot."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["section", "key", "subkey", "value"])
    for name in ("orders", "hook_calls", "synthetic_orders", "shadow_orders", "low_value_rate", "not_indicated_rate"):
        writer.writerow(["summary", name, "", report[name]])
    for region, counts in report["verdicts_by_region"].items():
        for verdict, n in counts.items():
            writer.writerow(["verdicts_by_region", region, verdict, n])
    advice = report["advice"]
    for name in ("orders_with_advice", "taken", "overridden", "no_feedback", "taken_rate"):
        writer.writerow(["advice", name, "", advice[name]])
    for kind, n in advice["accepted_by_kind"].items():
        writer.writerow(["accepted_by_kind", kind, "", n])
    for reason in advice["override_reasons"]:
        writer.writerow(["override_reasons", reason["code"], reason["display"], reason["orders"]])
    for clinician in report["clinicians"]:
        for name in ("orders", "low_value", "low_value_rate"):
            writer.writerow(["clinicians", clinician["user"], name, clinician[name]])
    for week in report["weekly"]:
        for name in ("orders", "low_value", "low_value_rate", "taken", "overridden"):
            writer.writerow(["weekly", week["week"], name, week[name]])
    for name, value in report["latency_ms"].items():
        writer.writerow(["latency_ms", name, "", value])
    completeness = report["completeness"]
    writer.writerow(["completeness", "orders_with_unread_sources", "", completeness["orders_with_unread_sources"]])
    writer.writerow(["completeness", "share", "", completeness["share"]])
    for source, n in completeness["unread_by_source"].items():
        writer.writerow(["completeness", "unread_by_source", source, n])
    return buffer.getvalue()


def render_json(report: dict) -> str:
    return json.dumps(report, indent=2) + "\n"


def _figures(report: dict) -> list[tuple[str, str]]:
    """(title, plotly HTML fragment without plotly.js) for each chart."""
    import plotly.graph_objects as go

    def fragment(figure) -> str:
        figure.update_layout(
            margin={"l": 50, "r": 20, "t": 30, "b": 40},
            autosize=True,
            template="plotly_white",
            legend={"orientation": "h", "y": -0.2},
            font={"size": 12},
        )
        return figure.to_html(
            full_html=False,
            include_plotlyjs=False,
            default_width="100%",
            default_height="340px",
            config={"displaylogo": False, "responsive": True},
        )

    charts = []
    regions = list(report["verdicts_by_region"])
    mix = go.Figure(
        [
            go.Bar(
                name=v,
                x=regions,
                y=[report["verdicts_by_region"][r].get(v, 0) for r in regions],
                marker_color=VERDICT_COLOURS[v],
            )
            for v in VERDICT_ORDER
        ]
    )
    mix.update_layout(
        barmode="stack", yaxis_title="orders", legend={"orientation": "h", "y": -0.2, "font": {"size": 10}}
    )
    charts.append(("Verdicts by region", fragment(mix)))
    weeks = [w["week"] for w in report["weekly"]]
    trend = go.Figure(
        [
            go.Bar(name="orders", x=weeks, y=[w["orders"] for w in report["weekly"]], marker_color="#92c5de"),
            go.Scatter(
                name="low-value rate",
                x=weeks,
                y=[w["low_value_rate"] for w in report["weekly"]],
                yaxis="y2",
                mode="lines+markers",
                line={"color": "#b2182b"},
            ),
        ]
    )
    trend.update_layout(
        yaxis_title="orders",
        yaxis2={
            "overlaying": "y",
            "side": "right",
            "tickformat": ".0%",
            "rangemode": "tozero",
            "title": "low-value rate",
        },
    )
    charts.append(("Weekly orders and low-value rate", fragment(trend)))
    advice = report["advice"]
    outcome = go.Figure(
        [
            go.Bar(
                x=["taken", "overridden", "no feedback"],
                y=[advice["taken"], advice["overridden"], advice["no_feedback"]],
                marker_color=["#1a9850", "#d73027", "#bababa"],
            )
        ]
    )
    outcome.update_layout(yaxis_title="orders with advice")
    charts.append(("Advice taken or overridden", fragment(outcome)))
    reasons = advice["override_reasons"]
    why = go.Figure(
        [
            go.Bar(
                orientation="h",
                y=[r["display"] or r["code"] for r in reasons][::-1],
                x=[r["orders"] for r in reasons][::-1],
                marker_color="#d73027",
            )
        ]
    )
    why.update_layout(xaxis_title="orders", yaxis={"automargin": True})
    charts.append(("Override reasons", fragment(why)))
    clinicians = report["clinicians"][::-1]  # the most low-value orders at the top
    names = [c["user"] for c in clinicians]
    who = go.Figure(
        [
            go.Bar(
                name="low-value",
                orientation="h",
                y=names,
                x=[c["low_value"] for c in clinicians],
                marker_color="#d6604d",
            ),
            go.Bar(
                name="other orders",
                orientation="h",
                y=names,
                x=[c["orders"] - c["low_value"] for c in clinicians],
                marker_color="#92c5de",
            ),
        ]
    )
    who.update_layout(barmode="stack", xaxis_title="orders", yaxis={"automargin": True})
    charts.append(("Ordering clinicians, most low-value orders first", fragment(who)))
    return charts


def render_html(report: dict, plotly_script: str | None = None, title: str = "Spine MRI orders") -> str:
    """One HTML page. `plotly_script`: a URL to load plotly.js from; None embeds it (an offline file)."""
    from plotly.offline import get_plotlyjs

    window = report["window"]
    script = (
        f'<script src="{html.escape(plotly_script)}"></script>'
        if plotly_script
        else f"<script>{get_plotlyjs()}</script>"
    )
    advice, latency, completeness = report["advice"], report["latency_ms"], report["completeness"]
    tiles = [
        ("Orders evaluated", f"{report['orders']}", f"{report['hook_calls']} hook calls"),
        (
            "Low-value MRI",
            _pct(report["low_value_rate"]),
            f"not indicated as ordered: {_pct(report['not_indicated_rate'])}",
        ),
        ("Advice taken", _pct(advice["taken_rate"]), f"{advice['taken']} taken, {advice['overridden']} overridden"),
        ("Latency p50 / p99", f"{latency['p50']} / {latency['p99']} ms", f"{latency['hook_calls']} hook calls"),
        ("Rated with data unread", _pct(completeness["share"]), f"{completeness['orders_with_unread_sources']} orders"),
    ]
    notes = []
    if report["synthetic_orders"]:
        notes.append(f"Includes {report['synthetic_orders']} synthetic demo orders (cds-service demo).")
    if report["shadow_orders"]:
        notes.append(f"{report['shadow_orders']} orders were evaluated in shadow mode (no card shown).")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        script,
        "<style>body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;"
        "background:#fafafa}h1{font-size:22px;margin:0 0 4px}.sub{color:#666;margin-bottom:16px}"
        ".tiles{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}.tile{background:#fff;border:1px solid #ddd;"
        "border-radius:8px;padding:12px 16px;min-width:170px}.tile .v{font-size:26px;font-weight:600}"
        ".tile .k{color:#555;font-size:13px}.tile .s{color:#888;font-size:12px}"
        ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:16px}"
        ".card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px 12px;min-width:0;overflow:hidden}"
        ".card h2{font-size:15px;margin:6px 0}.note{color:#8a6d3b;font-size:13px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<div class='sub'>{window['since']} to {window['until']} &middot; per order (the latest card of each), "
        "spine-imaging CDS</div>",
        "".join(f"<div class='note'>{html.escape(n)}</div>" for n in notes),
        "<div class='tiles'>"
        + "".join(
            f"<div class='tile'><div class='k'>{html.escape(k)}</div><div class='v'>{html.escape(v)}</div>"
            f"<div class='s'>{html.escape(s)}</div></div>"
            for k, v, s in tiles
        )
        + "</div>",
        "<div class='grid'>",
    ]
    parts += [f"<div class='card'><h2>{html.escape(name)}</h2>{fragment}</div>" for name, fragment in _figures(report)]
    parts.append(
        "</div><h2 style='font-size:15px'>The numbers</h2><pre style='background:#fff;border:1px solid #ddd;"
        f"padding:12px;overflow:auto'>{html.escape(render_text(report))}</pre>"
        # charts drawn while the grid was still filling in take their final width
        "<script>window.addEventListener('load',function(){document.querySelectorAll('.js-plotly-plot')"
        ".forEach(function(p){Plotly.Plots.resize(p);});});</script></body></html>"
    )
    return "\n".join(parts)


RENDERERS = {"text": render_text, "csv": render_csv, "json": render_json, "html": render_html}
