"""`cds-service validate-mappings`: every mapping file against its JSON Schema and the code checks.

Catches the mistakes that silently produce wrong verdicts: a mistyped SNOMED CT id (Verhoeff
check digit), LOINC code (mod-10 check digit) or ICD-10-CM code (not in the FY2026 code set),
a concept citing a guideline that does not exist, a duplicated concept id.
"""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from .codesystems import icd10cm_exists, loinc_check_digit_valid, verhoeff_valid


def _load_schemas(directory: Path) -> dict[str, dict]:
    schemas = {}
    for path in sorted((directory / "schema").glob("*.schema.json")):
        schemas[path.name.split(".")[0]] = json.loads(path.read_text(encoding="utf-8"))
    return schemas


def _code_errors(where: str, entry: dict) -> list[str]:
    system = entry.get("system")
    values = [entry[k] for k in ("code", "prefix") if k in entry] + list(entry.get("range", []))
    errors = []
    for value in values:
        value = str(value)
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


def validate_mappings(directory: Path) -> list[str]:
    directory = Path(directory)
    if not directory.exists():
        return [f"{directory}: no such folder"]
    if not directory.is_dir():
        return [f"{directory}: is a file; --dir takes the mappings folder"]
    errors: list[str] = []
    schemas = _load_schemas(directory)
    if not schemas:
        return [f"{directory / 'schema'}: no JSON Schemas found"]
    documents: dict[str, dict] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            errors.append(f"{path.name}: not valid YAML ({error})")
            continue
        kind = document.get("kind") if isinstance(document, dict) else None
        if kind not in schemas:
            errors.append(f"{path.name}: 'kind' must be one of {sorted(schemas)}, got {kind!r}")
            continue
        validator = jsonschema.Draft202012Validator(schemas[kind])
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
            location = "/".join(str(p) for p in error.absolute_path) or "(top)"
            errors.append(f"{path.name}: {location}: {error.message}")
        documents[path.name] = document
    if not documents:
        return errors + [f"{directory}: no mapping files (*.yaml) found"]

    guideline_ids = {g.get("id") for d in documents.values() if d.get("kind") == "guidelines"
                     for g in d.get("guidelines", []) if isinstance(g, dict)}
    seen: dict[str, str] = {}
    for name, document in documents.items():
        if document.get("kind") == "concepts":
            for concept in document.get("concepts", []):
                if not isinstance(concept, dict):
                    continue
                concept_id = concept.get("id")
                where = f"{name}: {concept_id}"
                if concept_id in seen:
                    errors.append(f"{where}: concept id also defined in {seen[concept_id]}")
                seen[concept_id] = name
                for guideline in concept.get("guidelines", []):
                    if guideline not in guideline_ids:
                        errors.append(f"{where}: guideline '{guideline}' is not in guidelines.yaml")
                for entry in concept.get("codes", []) + concept.get("observations", []):
                    if isinstance(entry, dict):
                        errors.extend(_code_errors(where, entry))
        elif document.get("kind") == "orders":
            for index, order in enumerate(document.get("orders", [])):
                for entry in order.get("codes", []) if isinstance(order, dict) else []:
                    if isinstance(entry, dict):
                        errors.extend(_code_errors(f"{name}: orders[{index}]", entry))
    return errors
