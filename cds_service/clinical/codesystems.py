"""Code system URIs and the check-digit rules that catch mistyped codes."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

SYSTEM_URIS = {
    "snomed": "http://snomed.info/sct",
    "icd10cm": "http://hl7.org/fhir/sid/icd-10-cm",
    "icd10": "http://hl7.org/fhir/sid/icd-10",
    "loinc": "http://loinc.org",
    "rxnorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "cpt": "http://www.ama-assn.org/go/cpt",
}
ALIASES = {uri: short for short, uri in SYSTEM_URIS.items()}
ALIASES.update(
    {
        "http://www.ama-assn.org/go/cpt/": "cpt",
        "urn:oid:2.16.840.1.113883.6.12": "cpt",
        "urn:oid:2.16.840.1.113883.6.90": "icd10cm",
        "urn:oid:2.16.840.1.113883.6.3": "icd10",
        "urn:oid:2.16.840.1.113883.6.96": "snomed",
        "urn:oid:2.16.840.1.113883.6.1": "loinc",
        "urn:oid:2.16.840.1.113883.6.88": "rxnorm",
    }
)


def short_system(uri: str | None) -> str | None:
    """The short name of a FHIR code system URI (None for systems the mappings do not use)."""
    if not isinstance(uri, str):
        return None
    return ALIASES.get(uri.strip())


def normalise_icd10(code: str) -> str:
    """ICD-10(-CM) codes are written with and without the dot; compare them with it."""
    text = str(code).strip().upper().replace(" ", "")
    if len(text) > 3 and "." not in text:
        text = text[:3] + "." + text[3:]
    return text


# Verhoeff tables (dihedral group D5), used by SNOMED CT identifiers' check digit.
_VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]
# SNOMED CT partition identifiers: concept, description, relationship (short and extension forms).
_SNOMED_PARTITIONS = {"00", "01", "02", "10", "11", "12"}


def verhoeff_valid(sctid: str) -> bool:
    """True when a SNOMED CT identifier has a valid partition and Verhoeff check digit."""
    text = str(sctid)
    if not text.isdigit() or not 6 <= len(text) <= 18 or text[0] == "0":
        return False
    if text[-3:-1] not in _SNOMED_PARTITIONS:
        return False
    check = 0
    for position, digit in enumerate(reversed(text)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(digit)]]
    return check == 0


def loinc_check_digit_valid(code: str) -> bool:
    """True when a LOINC code's digit after the hyphen is the mod-10 check of the part before it."""
    text = str(code)
    if text.count("-") != 1:
        return False
    body, check = text.split("-")
    if not body.isdigit() or len(check) != 1 or not check.isdigit():
        return False
    total = 0
    # Luhn-style mod 10: from the rightmost digit of the body, double every other digit.
    for position, digit in enumerate(reversed(body)):
        value = int(digit)
        if position % 2 == 0:
            value *= 2
            value = value // 10 + value % 10
        total += value
    return (10 - total % 10) % 10 == int(check)


@functools.cache
def _icd10cm_code_set() -> frozenset[str]:
    """Every ICD-10-CM code, category and block (no dots), from the code list simple-icd-10-cm ships
    (FY2026, April 2026 update). Read as a list, not as the package's tree: 0.1 s instead of 2 s,
    since `serve` runs these checks at every start."""
    spec = importlib.util.find_spec("simple_icd_10_cm")  # located, not imported: its import reads the tree
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("simple-icd-10-cm is not installed: run scripts/bootstrap.sh")
    folder = Path(spec.submodule_search_locations[0]) / "data"
    listing = next(folder.glob("code-list-*.txt"))
    return frozenset(line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip())


def icd10cm_exists(code: str) -> bool:
    """True when the code (or category) is in the ICD-10-CM code set (FY2026, simple-icd-10-cm)."""
    return normalise_icd10(code).replace(".", "") in _icd10cm_code_set()
