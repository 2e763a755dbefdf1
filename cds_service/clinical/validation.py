"""Is a mappings folder fit to serve? The one list of checks that `cds-service validate-mappings`
prints and `cds-service serve` refuses to start on, so "all files valid" never precedes a refusal.

- every file against its kind's JSON Schema (`mappings/schema/`);
- every code: a SNOMED CT id with its Verhoeff check digit, a LOINC code with its mod-10 check
  digit, an ICD-10-CM code in the FY2026 code set, a five-character CPT code;
- a concept id defined twice, a guideline a concept cites that guidelines.yaml lacks;
- the rules and the mappings fit each other: a concept, variant or guideline a rule reads by name
  that the mappings lack, and a concept no rule reads (it would look active to a reviewer and
  change nothing);
- one code filed under concepts of different kinds (a cancer code under cauda equina would make
  every cancer patient's MRI a cauda equina emergency).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .codesystems import SYSTEM_URIS, icd10cm_exists, loinc_check_digit_valid, verhoeff_valid
from .mappings import Json, Mappings, load_mappings, read_mapping_documents
from .rules import READ_CONCEPTS, READ_KINDS, knowledge_gaps


def check_mappings(directory: Path) -> list[str]:
    """Every problem with the mappings folder, one line each; empty when it may be served."""
    directory = Path(directory)
    documents, _, problems = read_mapping_documents(directory)
    if not documents:
        return problems
    problems += _reference_problems(documents)
    if problems:
        return problems  # the checks below need a folder that loads
    mappings = load_mappings(directory)
    problems += [f"the rules read {gap}, which the mappings do not define" for gap in knowledge_gaps(mappings)]
    problems += [
        f"{concept.source_file}.yaml: {concept.id}: read by no rule (make a rule read it in "
        "cds_service/clinical/rules.py, or remove it)"
        for concept in mappings.concepts.values()
        if concept.id not in READ_CONCEPTS and concept.kind not in READ_KINDS
    ]
    return problems + _kind_conflicts(documents, mappings)


def _code_errors(where: str, entry: Json) -> list[str]:
    system = entry.get("system")
    values = [entry[k] for k in ("code", "prefix") if k in entry] + list(entry.get("range", []))
    errors = []
    for raw in values:
        value = str(raw)
        if system == "snomed" and not verhoeff_valid(value):
            errors.append(f"{where}: SNOMED CT {value} fails its Verhoeff check digit")
        elif system == "loinc" and not loinc_check_digit_valid(value):
            errors.append(f"{where}: LOINC {value} fails its mod-10 check digit")
        elif system == "icd10cm" and not icd10cm_exists(value):
            errors.append(f"{where}: ICD-10-CM {value} is not in the official code set")
        elif system == "cpt" and not (len(value) == 5 and value[:4].isdigit()):
            errors.append(f"{where}: CPT {value} is not a five-character code")
    # A 7th character narrows a family of ICD-10 codes; on one exact code it would say nothing.
    if "seventh" in entry and (system not in ("icd10cm", "icd10") or "code" in entry):
        errors.append(f"{where}: 'seventh' applies only to ICD-10 prefix or range entries")
    return errors


def _objects(value: Any) -> list[Json]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _reference_problems(documents: dict[Path, Json]) -> list[str]:
    guideline_ids = {
        guideline.get("id")
        for document in documents.values()
        if document.get("kind") == "guidelines"
        for guideline in _objects(document.get("guidelines"))
    }
    problems: list[str] = []
    seen: dict[str, str] = {}
    for path, document in documents.items():
        if document.get("kind") == "concepts":
            for concept in _objects(document.get("concepts")):
                concept_id = str(concept.get("id"))
                where = f"{path.name}: {concept_id}"
                if concept_id in seen:
                    problems.append(f"{where}: concept id also defined in {seen[concept_id]}")
                seen[concept_id] = path.name
                problems += [
                    f"{where}: guideline '{guideline}' is not in guidelines.yaml"
                    for guideline in concept.get("guidelines", [])
                    if guideline not in guideline_ids
                ]
                entries = _objects(concept.get("codes")) + _objects(concept.get("observations"))
                for entry in entries + _objects(concept.get("excludes")):
                    problems += _code_errors(where, entry)
        elif document.get("kind") == "orders":
            for index, order in enumerate(_objects(document.get("orders"))):
                for entry in _objects(order.get("codes")):
                    problems += _code_errors(f"{path.name}: orders[{index}]", entry)
    return problems


def _kind_conflicts(documents: dict[Path, Json], mappings: Mappings) -> list[str]:
    """Each code entry (an exact code, a prefix, a range's bounds) looked up as a record's code would
    be: every concept it lands in must be of the entry's own concept's kind."""
    problems = []
    for document in documents.values():
        for concept in _objects(document.get("concepts")) if document.get("kind") == "concepts" else []:
            own = mappings.concepts[concept["id"]]
            for entry in _objects(concept.get("codes")):
                uri = SYSTEM_URIS.get(entry["system"])
                for value in [entry[k] for k in ("code", "prefix") if k in entry] + list(entry.get("range", [])):
                    others = {
                        match.concept.id: match.concept.kind
                        for match in mappings.match_coding(uri, str(value))
                        if match.concept.kind != own.kind and match.concept.id not in entry.get("also_under", ())
                    }
                    problems += [
                        f"{own.source_file}.yaml: {entry['system']} {value} is filed under {own.id} ({own.kind}) "
                        f"and {other} ({kind}): a code means one kind of finding"
                        for other, kind in sorted(others.items())
                    ]
    return list(dict.fromkeys(problems))
