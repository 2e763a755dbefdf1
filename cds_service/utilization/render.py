"""The report as text, CSV (the long summary, and one row per order) and JSON. HTML: `charts.py`.

Every text cell of a CSV is safe to open in a spreadsheet (OWASP CSV injection): a cell that
starts with = + - @ (or their full-width forms), a tab or a carriage return is prefixed with '.
Clinician ids, sites and override texts come from the EHR, and a spreadsheet would run them.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

from .report import MODES, OUTCOME_LABELS, OUTCOMES, verdict_label, verdict_order

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")

ORDER_COLUMNS = (
    "order",
    "first_card_at",
    "last_card_at",
    "signed_at",
    "mode",
    "region",
    "study",
    "contrast",
    "verdict_as_ordered",
    "verdict",
    "rating",
    "card_shown",
    "advice",
    "outcome",
    "outcome_detail",
    "feedback",
    "accepted",
    "override_reason",
    "override_display",
    "clinician",
    "site",
    "hook_calls",
    "synthetic",
)


def csv_cell(value: Any) -> Any:
    """A CSV cell: numbers as they are; text neutralised when a spreadsheet would read it as a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, datetime):
        return value.replace(microsecond=0).isoformat() + "Z"
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _writer(buffer: io.StringIO):
    writer = csv.writer(buffer, lineterminator="\r\n")

    def write(*cells: Any) -> None:
        writer.writerow([csv_cell(cell) for cell in cells])

    return write


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


def _rate_or_few(value, minimum: int) -> str:
    return f"< {minimum} orders" if value is None else _pct(value)


def render_text(report: dict) -> str:
    window = report["window"]
    minimum = report["min_orders"]
    title = f"spine-imaging CDS: spine MRI orders {window['since']} to {window['until']} (UTC)"
    out = [title + (f"; only {_filters(report)}" if report["filters"] else ""), ""]
    by_mode = report["orders_by_mode"]
    notes = []
    if report["synthetic_orders"]:
        notes.append(f"{report['synthetic_orders']} of them synthetic demo history (cds-service demo)")
    out.append(
        f"Orders evaluated: {report['orders']} (live {by_mode['live']}, shadow {by_mode['shadow']}; "
        f"{report['hook_calls']} hook calls)" + (f"; {'; '.join(notes)}" if notes else "")
    )
    out.append(
        f"Low-value MRI as ordered (first card): {_pct(report['low_value_rate_as_ordered'])}; "
        f"as last rated: {_pct(report['low_value_rate'])}; not indicated as last rated "
        f"(low-value or another study first): {_pct(report['not_indicated_rate'])}"
    )
    if report["low_value_rate_by_mode"]:
        out.append(
            "Low-value as last rated, by mode: "
            + ", ".join(f"{mode} {_pct(rate)}" for mode, rate in report["low_value_rate_by_mode"].items())
        )
    out += ["", "Verdicts by region (latest card of each order)"]
    regions = report["verdicts_by_region"]
    verdicts = verdict_order({v for counts in regions.values() for v in counts})
    out += _table(
        ["region", *verdicts, "orders"],
        [[r] + [counts.get(v, 0) for v in verdicts] + [sum(counts.values())] for r, counts in regions.items()],
    )

    outcomes = report["outcomes"]
    out += [
        "",
        "What happened to advised orders (live cards saying low-value or another study first)",
    ]
    if outcomes["advised"]:
        low = outcomes["low_value"]
        decided = low["changed"] + low["cancelled"] + low["signed"]
        out.append(
            f"  Low-value MRIs signed despite the advice: {low['signed']} of {decided} decided "
            f"({_pct(low['signed_rate'])}); {low['pending']} not signed yet"
        )
        rows = [
            [verdict_label(verdict)] + [counts[name] for name in OUTCOMES] + [_pct(counts["signed_rate"])]
            for verdict, counts in outcomes["by_verdict"].items()
        ]
        rows.append(["all advised"] + [outcomes[name] for name in OUTCOMES] + [_pct(outcomes["signed_rate"])])
        out += [
            "  " + line
            for line in _table(["advice", *[OUTCOME_LABELS[o].lower() for o in OUTCOMES], "signed rate"], rows)
        ]
        out.append(
            f"  (signed rate: signed / (changed + cancelled + signed); cancelled includes no order-sign "
            f"within {outcomes['unsigned_after_hours']:g} h)"
        )
        if not report["order_sign_calls"]:
            out.append(
                "  No order-sign call in this window: an order is known signed only from order-sign. "
                "Subscribe the EHR to spine-mri-order-sign."
            )
    else:
        out.append("  none")

    go_live = report["go_live"]
    out += ["", "Go-live: low-value MRI among signed orders, shadow period against live period"]
    out += _table(
        ["period", "from", "to", "signed orders", "low-value", "rate", "not indicated"],
        [
            [
                mode,
                go_live[mode]["since"] or "-",
                go_live[mode]["until"] or "-",
                go_live[mode]["signed_orders"],
                go_live[mode]["low_value"],
                _pct(go_live[mode]["low_value_rate"]),
                _pct(go_live[mode]["not_indicated_rate"]),
            ]
            for mode in ("shadow", "live")  # before, then after go-live
        ],
    )
    if go_live["difference"] is not None:
        low, high = go_live["difference_95ci"]
        out.append(
            f"Live minus shadow: {go_live['difference'] * 100:+.1f} percentage points "
            f"(95% CI {low * 100:+.1f} to {high * 100:+.1f})"
        )

    advice = report["advice"]
    out += [
        "",
        f"Advice shown (live orders whose card suggested something): {advice['orders_with_advice']}; taken "
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
    out += [
        "",
        f"Ordering clinicians, highest low-value rate as ordered first (no rate under {minimum} orders; "
        f"group rate {_pct(report['group_low_value_rate'])})",
    ]
    out += _table(
        ["userId", "orders", "low-value", "rate", "funnel", "advised", "signed anyway", "signed rate"],
        [
            [
                c["user"],
                c["orders"],
                c["low_value"],
                _rate_or_few(c["low_value_rate"], minimum),
                c["funnel"],
                c["advised"],
                c["signed_anyway"],
                _pct(c["signed_rate"]),
            ]
            for c in report["clinicians"][: report.get("top", 10)]
        ],
    )
    if report["sites"] and any(s["site"] != "(no site named)" for s in report["sites"]):
        out += ["", "Sites"]
        out += _table(
            ["site", "orders", "low-value", "rate", "advised", "signed anyway", "signed rate"],
            [
                [
                    s["site"],
                    s["orders"],
                    s["low_value"],
                    _rate_or_few(s["low_value_rate"], minimum),
                    s["advised"],
                    s["signed_anyway"],
                    _pct(s["signed_rate"]),
                ]
                for s in report["sites"]
            ],
        )
    out += ["", "Weekly trend (weeks start on Monday, UTC; low-value as ordered; outcomes by the advice's week)"]
    out += _table(
        ["week of", "orders", "live", "shadow", "low-value", "rate", "advised", "signed anyway", "signed rate"],
        [
            [
                w["week"],
                w["orders"],
                w["live"],
                w["shadow"],
                w["low_value"],
                _pct(w["low_value_rate"]),
                w["advised"],
                w["signed"],
                _pct(w["signed_rate"]),
            ]
            for w in report["weekly"]
        ],
    )
    latency = report["latency_ms"]
    out += [
        "",
        f"Latency per hook call as the EHR waited (HTTP request): p50 {latency['http_p50']} ms, "
        f"p99 {latency['http_p99']} ms ({latency['http_calls']} calls); the evaluation alone: "
        f"p50 {latency['p50']} ms, p99 {latency['p99']} ms ({latency['hook_calls']} calls)",
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


def _filters(report: dict) -> str:
    return ", ".join(f"{name} {value}" for name, value in report["filters"].items())


def render_csv(report: dict) -> str:
    """Long format (section, key, subkey, value): one sheet an analyst can pivot."""
    buffer = io.StringIO()
    write = _writer(buffer)
    write("section", "key", "subkey", "value")
    write("window", "since", "", report["window"]["since"])
    write("window", "until", "", report["window"]["until"])
    write("window", "time_zone", "", "UTC")
    for name, value in report["filters"].items():
        write("filters", name, "", value)
    for name in (
        "orders",
        "hook_calls",
        "order_sign_calls",
        "synthetic_orders",
        "shadow_orders",
        "low_value_rate",
        "low_value_rate_as_ordered",
        "not_indicated_rate",
        "group_low_value_rate",
        "min_orders",
    ):
        write("summary", name, "", report[name])
    for mode, n in report["orders_by_mode"].items():
        write("orders_by_mode", mode, "", n)
    for mode, rate in report["low_value_rate_by_mode"].items():
        write("low_value_rate_by_mode", mode, "", rate)
    for region, counts in report["verdicts_by_region"].items():
        for verdict, n in counts.items():
            write("verdicts_by_region", region, verdict, n)
    for mode, counts in report["verdicts_by_mode"].items():
        for verdict, n in counts.items():
            write("verdicts_by_mode", mode, verdict, n)
    outcomes = report["outcomes"]
    for name in ("advised", *OUTCOMES, "signed_rate", "unsigned_after_hours"):
        write("outcomes", name, "", outcomes[name])
    for verdict, counts in outcomes["by_verdict"].items():
        for name in ("advised", *OUTCOMES, "signed_rate"):
            write("outcomes_by_verdict", verdict, name, counts[name])
    for detail, n in outcomes["details"].items():
        write("outcome_details", detail, "", n)
    for mode in MODES:
        for name, value in report["go_live"][mode].items():
            write("go_live", mode, name, value)
    write("go_live", "difference", "", report["go_live"]["difference"])
    advice = report["advice"]
    for name in ("orders_with_advice", "taken", "overridden", "no_feedback", "taken_rate"):
        write("advice", name, "", advice[name])
    for kind, n in advice["accepted_by_kind"].items():
        write("accepted_by_kind", kind, "", n)
    for reason in advice["override_reasons"]:
        write("override_reasons", reason["code"], reason["display"], reason["orders"])
    for clinician in report["clinicians"]:
        for name in ("orders", "low_value", "low_value_rate", "funnel", "advised", "signed_anyway", "signed_rate"):
            write("clinicians", clinician["user"], name, clinician[name])
    for entry in report["clinician_months"]:
        for month, cell in entry["months"].items():
            write("clinician_months", entry["user"], month + " orders", cell["orders"])
            write("clinician_months", entry["user"], month + " low_value_rate", cell["low_value_rate"])
    for site in report["sites"]:
        for name in ("orders", "low_value", "low_value_rate", "advised", "signed_anyway", "signed_rate"):
            write("sites", site["site"], name, site[name])
    for week in report["weekly"]:
        for name, value in week.items():
            if name != "week":
                write("weekly", week["week"], name, value)
    for name, value in report["latency_ms"].items():
        write("latency_ms", name, "", value)
    completeness = report["completeness"]
    write("completeness", "orders_with_unread_sources", "", completeness["orders_with_unread_sources"])
    write("completeness", "share", "", completeness["share"])
    for source, n in completeness["unread_by_source"].items():
        write("completeness", "unread_by_source", source, n)
    return buffer.getvalue()


def render_orders_csv(table: list[dict]) -> str:
    """One row per order (report.order_table, filtered): dates in UTC, every text cell safe."""
    buffer = io.StringIO()
    write = _writer(buffer)
    write(*ORDER_COLUMNS)
    for row in table:
        write(*(row[name] for name in ORDER_COLUMNS))
    return buffer.getvalue()


def render_json(report: dict) -> str:
    return json.dumps(report, indent=2) + "\n"


RENDERERS = {"text": render_text, "csv": render_csv, "json": render_json}
