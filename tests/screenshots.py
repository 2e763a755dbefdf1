"""The dashboard and the HTML report in headless Chromium: what the Playwright test checks, and the
screenshots in docs/img/ (refresh them with `.venv/bin/python tests/screenshots.py docs/img`).

Chromium runs with --headless --no-sandbox --disable-gpu --disable-background-networking and
nothing else from outside: plotly.js comes from the service (dashboard) or the file (report).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Seen:
    status: int = 0
    charts: int = 0
    bars: int = 0
    links_in_charts: int = 0
    chart_texts: str = ""
    fits: list[bool] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # page errors and console errors (CSP refusals among them)


def look(url: str, shot: Path | None, credentials: tuple[str, str] | None = None, width: int = 1400) -> Seen:
    """Open `url`, wait for the charts, and say what is on the page; a full-page screenshot to `shot`."""
    from playwright.sync_api import sync_playwright

    seen = Seen()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            context = browser.new_context(
                viewport={"width": width, "height": 1000},
                http_credentials={"username": credentials[0], "password": credentials[1]} if credentials else None,
            )
            page = context.new_page()
            page.on("pageerror", lambda error: seen.errors.append(f"page error: {error}"))
            page.on("console", lambda message: message.type == "error" and seen.errors.append(message.text))
            answer = page.goto(url)
            seen.status = answer.status if answer else 0
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30000)
            page.wait_for_function(
                "document.querySelectorAll('.chart').length === document.querySelectorAll('.js-plotly-plot').length",
                timeout=30000,
            )
            seen.charts = page.locator(".js-plotly-plot").count()
            seen.bars = page.locator(".js-plotly-plot .bars path").count()
            seen.links_in_charts = page.locator(".js-plotly-plot a").count()
            seen.chart_texts = page.evaluate(
                "Array.from(document.querySelectorAll('.js-plotly-plot text')).map(t => t.textContent).join('\\n')"
            )
            # every chart fits its card (none drawn wider than the grid gives it)
            seen.fits = page.evaluate(
                "Array.from(document.querySelectorAll('.card')).map(c => "
                "Number(c.querySelector('.main-svg').getAttribute('width')) <= c.clientWidth)"
            )
            if shot is not None:
                page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return seen


def main(out: Path) -> int:
    """Demo history in a fresh database, the dashboard served from it and the offline report,
    each photographed into `out` (docs/img)."""
    import os
    import subprocess
    import tempfile
    from datetime import UTC, datetime, timedelta

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from cds_service.cli.demo_history import fill_demo_history
    from cds_service.cli.processes import free_port, serve_command, wait_for_http
    from cds_service.clinical.mappings import get_mappings
    from cds_service.utilization.store import Store

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "demo.sqlite3"
        store = Store(f"sqlite:///{db}")
        fill_demo_history(store, get_mappings())
        store.close()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        env.update(
            CDS_ALLOW_UNAUTHENTICATED="1", CDS_FEEDBACK_DB=str(db), CDS_DASHBOARD_TOKEN="pw", CDS_LOG_LEVEL="WARNING"
        )
        root = Path(__file__).resolve().parent.parent
        server = subprocess.Popen(serve_command(port, workers=1), cwd=root, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            if not wait_for_http(base + "/healthz", server, seconds=60):
                raise SystemExit("the service did not start")
            seen = look(base + "/dashboard", out / "dashboard.png", ("analyst", "pw"))
            print(f"dashboard: {seen.charts} charts, errors {seen.errors}")
        finally:
            server.terminate()
            server.wait(timeout=30)
        report = Path(folder) / "report.html"
        since = (datetime.now(UTC).date() - timedelta(days=42)).isoformat()
        command = [sys.executable, "-m", "cds_service", "report", "--db", str(db), "--since", since]
        subprocess.run(
            [*command, "--format", "html", "--out", str(report)],
            cwd=root,
            env=env,
            check=True,
        )
        seen = look(report.as_uri(), out / "report.png")
        print(f"report: {seen.charts} charts, errors {seen.errors}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img")))
