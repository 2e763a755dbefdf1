"""What a card's evidence page holds, for tests that check why a source was not read.

The five-second card names the verdict and its reason; what could not be read and why (a FHIR
server's error, the time budget, another patient's resources left out) is on the card's
evidence page. `evaluate_with_evidence` runs a hook and hands back each card's page content.
"""

from __future__ import annotations

import json

from cds_service.hooks.evaluation import HookResult, evaluate_hook


def evaluate_with_evidence(service_id: str, body: dict, mappings, **kwargs) -> tuple[HookResult, str]:
    """(the hook's result, the evidence pages of its cards as one JSON text)."""
    pages: list[dict] = []

    def link(page: dict) -> str:
        pages.append(page)
        return f"https://cds.example.org/evidence/{len(pages)}"

    result = evaluate_hook(service_id, body, mappings, evidence_link=link, **kwargs)
    return result, json.dumps(pages)


def evidence_page_of(client, card: dict) -> str:
    """The evidence page a card served over HTTP links to, as its HTML."""
    url = card["links"][0]["url"]
    reply = client.get(url[url.index("/evidence/") :])
    assert reply.status_code == 200
    return reply.get_data(as_text=True)
