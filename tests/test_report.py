"""What the report says about each order and each clinician, on a real SQLite database filled
through the store: outcomes of advised orders, shadow kept apart from live, the go-live
comparison, clinicians compared with funnel limits and a minimum volume, sites, new verdicts and
suggestion kinds, spreadsheet-safe CSV, and chart colours that stay apart for every reader."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from cds_service.utilization.charts import OUTCOME_COLOURS, VERDICT_COLOURS, plain, render_html
from cds_service.utilization.render import ORDER_COLUMNS, csv_cell, render_csv, render_orders_csv, render_text
from cds_service.utilization.report import (
    Filters,
    Options,
    Window,
    apply_filters,
    build_report,
    funnel_limits,
    load_departments,
    order_table,
)
from cds_service.utilization.store import OrderRecord, SignedOrder, Store, utcnow

NOW = utcnow().replace(microsecond=0)
WINDOW = Window.last_days(60, NOW.date())


def card(card_uuid: str, order: str, minutes: float = 0, **changes) -> OrderRecord:
    """A card `minutes` after NOW - 10 days for the order `order` (patient and encounter fixed)."""
    base = OrderRecord(
        card_uuid=card_uuid,
        evaluated_at=NOW - timedelta(days=10) + timedelta(minutes=minutes),
        service_id="spine-mri-order-select",
        hook="order-select",
        hook_instance=f"hi-{card_uuid}",
        user_id="Practitioner/a",
        patient_id=f"patient-{order}",
        encounter_id="enc",
        order_reference=f"ServiceRequest/{order}",
        order_code="cpt|72148",
        region="lumbar",
        contrast="without",
        verdict="low-value",
        variant=None,
        rating=None,
        red_flags=[],
        unread_sources=[],
        suggestion_kinds={f"{card_uuid}-switch": "switch-to-first-study", f"{card_uuid}-cancel": "cancel"},
        latency_ms=4.0,
        mappings_version="v",
        consult_id="",
        mode="live",
        override_reasons={"surgical-candidate": "Surgical candidate", "other": "Other"},
    )
    if changes.get("hook") == "order-sign":
        changes.setdefault("service_id", "spine-mri-order-sign")
    return replace(base, **changes)


@pytest.fixture
def store(tmp_path):
    opened = Store(f"sqlite:///{tmp_path / 'r.sqlite3'}", spool_dir=tmp_path / "spool")
    yield opened
    opened.close()


def answer(store: Store, card_uuid: str, outcome: str, suggestion: str | None = None, code: str | None = None):
    item: dict = {"card": card_uuid, "outcome": outcome, "outcomeTimestamp": "2026-11-22T10:00:00Z"}
    if suggestion:
        item["acceptedSuggestions"] = [{"id": f"{card_uuid}-{suggestion}"}]
    if code:
        item["overrideReason"] = {"reason": {"code": code}}
    assert store.record_feedback("spine-mri-order-select", {"feedback": [item]}) == 1


def by_order(table: list[dict]) -> dict[str, dict]:
    return {row["study"] + "|" + row["_cards"][0].order_code: row for row in table}


def test_each_advised_order_gets_its_outcome(store):
    sign = {"hook": "order-sign"}
    store.write_evaluations(
        [
            # signed as ordered after the card: signed despite the advice
            card("s1", "signed"),
            card("s2", "signed", 30, **sign),
            # order-sign with the MRI changed to without-and-with contrast: changed
            card("c1", "contrast"),
            card("c2", "contrast", 30, contrast="with-and-without", order_code="cpt|72158", **sign),
            # switched to radiographs: order-sign names the order as another study
            card("x1", "xray"),
            # cancel accepted, no order-sign
            card("k1", "cancel"),
            # nothing at all for more than a day: cancelled (not signed)
            card("n1", "never"),
            # an hour ago, nothing yet: pending
            card("p1", "pending", evaluated_at=NOW - timedelta(hours=1)),
            # the card shown at order-sign, switch accepted there: changed
            card("g1", "at-sign", **sign),
            # cancel accepted, but order-sign still came with the MRI: what order-sign shows wins
            card("w1", "won"),
            card("w2", "won", 40, **sign),
            # an indicated order: no advice, no outcome
            card("i1", "indicated", verdict="indicated-routine"),
            card("i2", "indicated", 30, verdict="indicated-routine", **sign),
            # shadow: never advice
            card("h1", "shadow", mode="shadow"),
            card("h2", "shadow", 30, mode="shadow", **sign),
        ],
        [
            SignedOrder(
                "patient-xray", "enc", "ServiceRequest/xray", "loinc|36575-0", NOW - timedelta(days=10, minutes=-20)
            ),
            SignedOrder("patient-nobody", "enc", "ServiceRequest/nobody", "loinc|1", NOW),  # never rated: ignored
        ],
    )
    answer(store, "k1", "accepted", "cancel")
    answer(store, "g1", "accepted", "switch")
    answer(store, "w1", "accepted", "cancel")
    answer(store, "s1", "overridden", code="surgical-candidate")
    table = order_table(store.engine, WINDOW, Options(now=NOW))
    outcome = {row["_cards"][0].card_uuid: (row["outcome"], row["outcome_detail"]) for row in table}
    assert outcome == {
        "s1": ("signed", "signed as ordered"),
        "c1": ("changed", "signed as cpt|72158"),
        "x1": ("changed", "signed as another study (loinc|36575-0)"),
        "k1": ("cancelled", "cancel accepted"),
        "n1": ("cancelled", "not signed within 24 h"),
        "p1": ("pending", "no order-sign yet"),
        "g1": ("changed", "switch-to-first-study accepted at order-sign"),
        "w1": ("signed", "signed as ordered"),
        "i1": ("", ""),
        "h1": ("", ""),
    }
    report = build_report(store.engine, WINDOW, options=Options(now=NOW, min_orders=1), table=table)
    outcomes = report["outcomes"]
    assert (outcomes["advised"], outcomes["changed"], outcomes["cancelled"], outcomes["signed"]) == (8, 3, 2, 2)
    assert outcomes["pending"] == 1 and outcomes["signed_rate"] == round(2 / 7, 4)
    assert outcomes["low_value"]["signed"] == 2
    # a longer wait turns the unsigned order pending again
    waited = order_table(store.engine, WINDOW, Options(now=NOW, unsigned_after_hours=24 * 30))
    assert {row["_cards"][0].card_uuid: row["outcome"] for row in waited}["n1"] == "pending"
    assert "Low-value MRIs signed despite the advice: 2 of 7 decided (28.6%); 1 not signed yet" in render_text(report)


def test_shadow_orders_are_never_advice_and_go_live_compares_signed_orders(store):
    records = []
    for index in range(10):  # shadow period: 6 of 10 signed orders low-value
        verdict = "low-value" if index < 6 else "indicated-routine"
        records += [
            card(f"sh{index}", f"sh{index}", index, verdict=verdict, mode="shadow"),
            card(f"sh{index}s", f"sh{index}", index + 5, verdict=verdict, mode="shadow", hook="order-sign"),
        ]
    for index in range(10):  # live period, days later: 2 of 10 signed orders low-value
        verdict = "low-value" if index < 2 else "indicated-routine"
        later = 60 * 24 * 5 + index
        quiet = {} if verdict == "low-value" else {"suggestion_kinds": {}}  # indicated: nothing suggested
        records += [
            card(f"lv{index}", f"lv{index}", later, verdict=verdict, **quiet),
            card(f"lv{index}s", f"lv{index}", later + 5, verdict=verdict, hook="order-sign", **quiet),
        ]
    store.write_evaluations(records)
    report = build_report(store.engine, WINDOW, options=Options(now=NOW, min_orders=1))
    assert report["orders_by_mode"] == {"live": 10, "shadow": 10}
    assert report["advice"]["orders_with_advice"] == 2  # live low-value cards with suggestions only
    assert report["outcomes"]["advised"] == 2
    go_live = report["go_live"]
    assert (go_live["shadow"]["signed_orders"], go_live["shadow"]["low_value_rate"]) == (10, 0.6)
    assert (go_live["live"]["signed_orders"], go_live["live"]["low_value_rate"]) == (10, 0.2)
    assert go_live["shadow"]["until"] < go_live["live"]["since"]  # the dates of each period
    assert go_live["difference"] == -0.4
    shadow_only = build_report(store.engine, WINDOW, filters=Filters(mode="shadow"), options=Options(now=NOW))
    assert shadow_only["orders"] == 10 and shadow_only["advice"]["orders_with_advice"] == 0
    assert shadow_only["go_live"] == go_live  # the comparison always shows both periods
    csv_text = render_csv(report)
    assert "orders_by_mode,shadow,,10" in csv_text and "go_live,live,low_value_rate,0.2" in csv_text


def test_clinicians_are_compared_by_rate_with_funnel_limits_and_a_minimum_volume(store):
    records, index = [], 0
    # one clinician far below the group's rate, one far above, one with too few orders for a rate
    for user, orders, low in (
        ("Practitioner/typical", 40, 6),
        ("Practitioner/high", 40, 36),
        ("Practitioner/few", 3, 3),
    ):
        for n in range(orders):
            index += 1
            verdict = "low-value" if n < low else "indicated-routine"
            records.append(card(f"k{index}", f"k{index}", index, user_id=user, verdict=verdict))
    store.write_evaluations(records)
    report = build_report(store.engine, WINDOW, options=Options(now=NOW, min_orders=10))
    users = {c["user"]: c for c in report["clinicians"]}
    group = 45 / 83
    assert report["group_low_value_rate"] == round(group, 4)
    assert users["Practitioner/high"]["low_value_rate"] == 0.9
    assert users["Practitioner/high"]["funnel"] == "above 99.8% limit"
    assert users["Practitioner/typical"]["funnel"] == "below 99.8% limit"
    assert (
        users["Practitioner/few"]["low_value_rate"] is None and users["Practitioner/few"]["funnel"] == "too few orders"
    )
    limits = funnel_limits(group, 40)
    spread = math.sqrt(group * (1 - group) / 40)
    assert limits["upper_95"] == pytest.approx(group + 1.959964 * spread)
    assert limits["upper_998"] == pytest.approx(group + 3.090232 * spread)
    month = NOW.strftime("%Y-%m") if (NOW - timedelta(days=10)).month == NOW.month else None
    cells = {entry["user"]: entry["months"] for entry in report["clinician_months"]}
    if month:
        assert cells["Practitioner/few"][month]["low_value_rate"] is None  # under the minimum: no rate
    assert "< 10 orders" in render_text(report)


def test_sites_come_from_the_ehr_or_the_department_file(store, tmp_path):
    store.write_evaluations(
        [
            card("a", "a", site="Orthopaedics clinic"),
            card("b", "b", user_id="Practitioner/mapped"),
            card("c", "c", user_id="Practitioner/nowhere"),
        ]
    )
    mapping = tmp_path / "departments.csv"
    mapping.write_text("userId,department\nPractitioner/mapped,Emergency department\n")
    departments = load_departments(mapping)
    table = order_table(store.engine, WINDOW, Options(now=NOW, departments=departments))
    assert sorted(row["site"] for row in table) == ["(no site named)", "Emergency department", "Orthopaedics clinic"]
    assert [row["clinician"] for row in apply_filters(table, Filters(site="Emergency department"))] == [
        "Practitioner/mapped"
    ]
    as_json = tmp_path / "departments.json"
    as_json.write_text(json.dumps({"Practitioner/x": "Radiology"}))
    assert load_departments(as_json) == {"Practitioner/x": "Radiology"}
    as_json.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_departments(as_json)


def test_new_verdicts_and_suggestion_kinds_do_not_break_the_report(store):
    store.write_evaluations(
        [
            card("n1", "n1", verdict="indicated-after-trial", suggestion_kinds={"s": "brand-new-kind"}),
            card("n2", "n2", verdict="low-value", suggestion_kinds={"n2-urgent": "make-urgent"}),
        ]
    )
    answer(store, "n2", "accepted", "urgent")
    report = build_report(store.engine, WINDOW, options=Options(now=NOW))
    assert report["verdicts"] == {"low-value": 1, "indicated-after-trial": 1}
    assert report["verdicts_by_region"]["lumbar"]["indicated-after-trial"] == 1
    assert report["advice"]["accepted_by_kind"] == {"make-urgent": 1}
    # a kind that says nothing of the order leaves its outcome to order-sign (here: none yet, > 24 h)
    assert {row["verdict"]: row["outcome"] for row in order_table(store.engine, WINDOW, Options(now=NOW))} == {
        "indicated-after-trial": "",
        "low-value": "cancelled",
    }
    page = render_html(report)
    assert "indicated-after-trial" in page
    assert "indicated-after-trial" in render_text(report) and "indicated-after-trial" in render_csv(report)


FORMULAS = ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "\uff1d1+1", '=HYPERLINK("http://evil")']


def test_every_text_cell_of_both_csvs_is_safe_in_a_spreadsheet(store):
    records = [
        card(f"f{index}", f"f{index}", index, user_id=text, site=text, order_code=text)
        for index, text in enumerate(FORMULAS)
    ]
    store.write_evaluations(records)
    reasons = {FORMULAS[0]: FORMULAS[-1]}
    store.write_evaluations([card("r1", "r1", override_reasons=reasons, user_id="-user")])
    answer(store, "r1", "overridden", code=FORMULAS[0])
    table = order_table(store.engine, WINDOW, Options(now=NOW))
    report = build_report(store.engine, WINDOW, options=Options(now=NOW, min_orders=1), table=table)
    for text in (render_csv(report), render_orders_csv(table)):
        cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
        dangerous = [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r", "\uff1d")]
        assert dangerous == []
        assert "'=1+1" in cells and "'@SUM(A1)" in cells
    rows = list(csv.DictReader(io.StringIO(render_orders_csv(table))))
    assert list(rows[0]) == list(ORDER_COLUMNS) and len(rows) == len(FORMULAS) + 1
    overridden = next(row for row in rows if row["clinician"] == "'-user")
    assert overridden["override_reason"] == "'=1+1" and overridden["override_display"] == '\'=HYPERLINK("http://evil")'
    assert csv_cell(-1.5) == -1.5 and csv_cell(3) == 3  # numbers stay numbers


def test_labels_reach_plotly_as_plain_text():
    assert plain('<a href="https://x">y</a> & z') == '&lt;a href="https://x"&gt;y&lt;/a&gt; &amp; z'


def _srgb_to_linear(c: float) -> float:
    c /= 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


# Machado, Oliveira and Fernandes (2009), severity 1.0; and greyscale by luminance
SIMULATIONS = {
    "normal": None,
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.01182, 0.04294, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.3039]],
}


def _lab(colour: str, simulation) -> tuple[float, float, float]:
    rgb = [_srgb_to_linear(int(colour[i : i + 2], 16)) for i in (1, 3, 5)]
    if simulation == "grey":
        rgb = [0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]] * 3
    elif simulation is not None:
        rgb = [min(1, max(0, sum(simulation[i][j] * rgb[j] for j in range(3)))) for i in range(3)]
    r, g, b = rgb
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


@pytest.mark.parametrize("palette", [VERDICT_COLOURS, OUTCOME_COLOURS], ids=["verdicts", "outcomes"])
def test_chart_colours_stay_apart_for_colour_blind_readers_and_in_greyscale(palette):
    for name, simulation in [*SIMULATIONS.items(), ("greyscale", "grey")]:
        floor = 8 if name == "greyscale" else 18  # CIE76 distance; greyscale has lightness alone
        for (a, colour_a), (b, colour_b) in itertools.combinations(palette.items(), 2):
            distance = math.dist(_lab(colour_a, simulation), _lab(colour_b, simulation))
            assert distance > floor, f"{a} and {b} look alike for {name} ({distance:.1f})"


def test_times_are_labelled_utc(store):
    store.write_evaluations([card("t", "t")])
    report = build_report(store.engine, WINDOW, options=Options(now=NOW))
    assert report["window"]["time_zone"] == "UTC" and report["generated_at"].endswith("Z")
    assert "(UTC)" in render_text(report).splitlines()[0]
    page = render_html(report)
    assert "week of (UTC)" in page and "dates and times in UTC" in page
    first = next(csv.DictReader(io.StringIO(render_orders_csv(order_table(store.engine, WINDOW)))))
    assert first["first_card_at"].endswith("Z") and datetime.fromisoformat(first["first_card_at"][:-1])


def test_the_report_command_exports_orders_and_filters(store, tmp_path, capsys):
    from cds_service.cli.main import main

    store.write_evaluations([card("a", "a"), card("b", "b", region="cervical", user_id="=evil()")])
    db = str(store.engine.url.database)
    assert main(["report", "--db", db, "--format", "orders-csv", "--region", "cervical"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(row["region"], row["clinician"]) for row in rows] == [("cervical", "'=evil()")]
    assert main(["report", "--db", db, "--mode", "shadow", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["orders"] == 0
    bad = tmp_path / "departments.json"
    bad.write_text("not json")
    assert main(["report", "--db", db, "--departments", str(bad)]) != 0
    assert capsys.readouterr().err.count("\n") == 1
