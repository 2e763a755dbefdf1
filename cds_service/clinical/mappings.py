"""Load `mappings/` into lookup indexes the fact extractor uses.

The YAML files are the clinical knowledge; this module only turns them into
fast lookups: (system, code) -> concepts, with ICD-10 prefixes and ranges
resolved by walking the code's ancestors instead of expanding the code set.
An ICD-10 prefix or range may also require a 7th character (`seventh: [A]`:
the injury's initial encounter), which ICD-10-CM codes carry and WHO ICD-10
codes do not: a WHO code matches on its category alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .codesystems import normalise_icd10, short_system

ICD_SYSTEMS = ("icd10cm", "icd10")
REQUIRED_KINDS = ("concepts", "orders", "guidelines")
MATCH_CACHE_SIZE = 100_000
# A mapping file's object as YAML gives it (checked against its JSON Schema first).
Json = dict[str, Any]
K = TypeVar("K")
V = TypeVar("V")


def bounded_put(cache: dict[K, V], key: K, value: V, limit: int = MATCH_CACHE_SIZE) -> None:
    """Remember `value` under `key`, emptying the cache first when it holds `limit` entries: the
    caches' keys come from records, whose variety has no end."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value


PACKAGED_MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


class MappingsError(ValueError):
    """The mappings folder cannot be used. The message is one line naming the folder or file and the problem."""


def default_mappings_dir() -> Path:
    configured = os.environ.get("CDS_MAPPINGS_DIR")
    if configured:
        return Path(configured)
    return PACKAGED_MAPPINGS


# How records spell the UCUM units the thresholds accept: a temperature in "degC" or "°C", a CRP
# in "mg/dl", is the same value (a spine physician's review: a 39.2 in "degC" read as no fever).
UNIT_ALIASES = {
    "°c": "cel",
    "degc": "cel",
    "c": "cel",
    "celsius": "cel",
    "°f": "[degf]",
    "degf": "[degf]",
    "f": "[degf]",
    "fahrenheit": "[degf]",
    "mm/hr": "mm/h",
    "mm/hour": "mm/h",
}


def unit_key(unit: str) -> str:
    """A unit as compared: without case or spaces, common spellings read as their UCUM code."""
    key = unit.replace(" ", "").lower()
    return UNIT_ALIASES.get(key, key)


@dataclass(frozen=True)
class Threshold:
    """An Observation code with the value that makes it count (e.g. temperature >= 38.0 Cel)."""

    concept_id: str
    code: str
    display: str
    comparator: str
    value: float
    unit: str
    # accepted unit (as unit_key spells it) -> {"scale", "offset"} to convert into `unit`
    units: dict[str, dict[str, float]]

    def to_canonical(self, value: float, unit: str | None) -> float | None:
        """The value in the threshold's unit, or None when the unit is not one we accept."""
        if unit is None:
            return None
        conversion = self.units.get(unit_key(unit))
        if conversion is None:
            return None
        return value * float(conversion.get("scale", 1)) + float(conversion.get("offset", 0))

    def is_met(self, canonical_value: float) -> bool:
        return {
            ">": canonical_value > self.value,
            ">=": canonical_value >= self.value,
            "<": canonical_value < self.value,
            "<=": canonical_value <= self.value,
        }[self.comparator]


@dataclass(frozen=True)
class Concept:
    id: str
    label: str
    source_file: str
    kind: str = "other"  # what kind of finding (neurological, cancer, therapy, ...): mappings/README.md
    region: str = "any"
    guidelines: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    excluded_name_words: tuple[str, ...] = ()


@dataclass(frozen=True)
class CodeMatch:
    concept: Concept
    system: str
    code: str
    display: str
    region: str  # the code's own region, else the concept's


@dataclass(frozen=True)
class IcdRule:
    """An ICD-10 prefix or range entry, with the 7th characters it requires (None: any)."""

    match: CodeMatch
    seventh: frozenset[str] | None = None

    def accepts(self, system: str, code: str) -> bool:
        if self.seventh is None or system == "icd10":
            return True
        compact = code.replace(".", "")
        return len(compact) >= 7 and compact[6] in self.seventh


@dataclass(frozen=True)
class OrderCode:
    modality: str  # mri | radiograph | ct
    region: str  # lumbar | cervical | thoracic | multi | unspecified
    contrast: str  # without | with | with-and-without | unspecified
    preferred: bool
    codes: tuple[Json, ...]  # the entry's codings (system short name, code, display)
    next_step: str | None = None  # a next step's order (modality "referral" or "lab"): its kind


@dataclass
class Mappings:
    concepts: dict[str, Concept] = field(default_factory=dict)
    _exact: dict[tuple[str, str], list[CodeMatch]] = field(default_factory=dict)
    _prefix: dict[tuple[str, str], list[IcdRule]] = field(default_factory=dict)
    _ranges: list[tuple[str, str, str, IcdRule]] = field(default_factory=list)
    thresholds: dict[str, list[Threshold]] = field(default_factory=dict)
    orders: list[OrderCode] = field(default_factory=list)
    _order_index: dict[tuple[str, str], OrderCode] = field(default_factory=dict)
    guidelines: dict[str, Json] = field(default_factory=dict)
    medication_names: list[tuple[str, Concept]] = field(default_factory=list)
    version: str = ""  # a digest of the files' contents: which knowledge rated an order
    # Answers already worked out, by (system URI, code): a record's codes repeat across patients
    # and ICD-10 codes walk their ancestors and ranges. Bounded; the lists are never mutated.
    _matched: dict[tuple[object, object], tuple[CodeMatch, ...]] = field(default_factory=dict)
    # Whether a (system URI, code) means anything here at all: the one question asked of every
    # coding in a record, most of which mean nothing. Filled by `knows`; the record's screen in
    # facts reads it inline. Bounded like `_matched`.
    known_codings: dict[tuple[object, object], bool] = field(default_factory=dict)
    _named: dict[str, tuple[Concept, ...]] = field(default_factory=dict)  # medication text -> concepts
    # concept id -> codes it must not match although its ranges or prefixes cover them:
    # (system, "code" | "prefix" | "range", bounds)
    exclusions: dict[str, list[tuple[str, str, tuple[str, ...]]]] = field(default_factory=dict)

    # ---- codes -> concepts -------------------------------------------------
    def match_coding(self, system_uri: str | None, code: str | None) -> tuple[CodeMatch, ...]:
        key = (system_uri, code)
        try:
            return self._matched[key]
        except (KeyError, TypeError):  # TypeError: an unhashable code from a malformed resource
            pass
        found = tuple(self._match_coding(system_uri, code))
        if isinstance(code, str) and len(code) <= 64 and short_system(system_uri):  # what a record repeats
            bounded_put(self._matched, key, found)
        return found

    def knows(self, system_uri: str | None, code: str | None) -> bool:
        """True when the coding names a concept, a spine imaging study or a measurement with a
        threshold: the extractors read a resource only when one of its codings is known."""
        key = (system_uri, code)
        try:
            return self.known_codings[key]
        except (KeyError, TypeError):
            pass
        known = bool(
            self.match_coding(system_uri, code)
            or self.order_for_coding(system_uri, code)
            or (short_system(system_uri) == "loinc" and str(code).strip() in self.thresholds)
        )
        # EHRs add codings in their own systems (e.g. Epic's urn:oid:1.2.840.114350...) beside the
        # standard ones: those are remembered as unknown too.
        if isinstance(code, str) and len(code) <= 64 and isinstance(system_uri, str) and len(system_uri) <= 200:
            bounded_put(self.known_codings, key, known)
        return known

    def _match_coding(self, system_uri: str | None, code: str | None) -> list[CodeMatch]:
        system = short_system(system_uri) if system_uri else None
        if system is None or not code:
            return []
        code = str(code).strip()
        if system in ICD_SYSTEMS:
            found = self._match_icd(code, system)
        else:
            found = list(self._exact.get((system, code), ()))
            for range_system, low, high, rule in self._ranges:
                if range_system == system and _in_numeric_range(code, low, high):
                    found.append(rule.match)
        if self.exclusions:
            found = [match for match in found if not self._excluded(match.concept.id, system, code)]
        return found

    def _excluded(self, concept_id: str, system: str, code: str) -> bool:
        """True when the concept's `excludes` name this code: a skin basal cell carcinoma (C44) is
        in the malignant neoplasm range, yet is not a cancer that spreads to the spine."""
        icd = system in ICD_SYSTEMS
        value = normalise_icd10(code) if icd else code
        for excluded_system, kind, bounds in self.exclusions.get(concept_id, ()):
            if (excluded_system in ICD_SYSTEMS) != icd or (not icd and excluded_system != system):
                continue
            if kind == "code" and value == bounds[0]:
                return True
            if kind == "prefix" and value.replace(".", "").startswith(bounds[0].replace(".", "")):
                return True
            if kind == "range" and bounds[0] <= (value[:3] if icd else value) <= bounds[1]:
                return True
        return False

    def _match_icd(self, code: str, coded_in: str) -> list[CodeMatch]:
        normalised = normalise_icd10(code)
        found: list[CodeMatch] = []
        # ICD-10-CM and WHO ICD-10 share the classification's skeleton, so one
        # mapping serves both; mappings written as icd10cm match either system.
        for system in ICD_SYSTEMS:
            found.extend(self._exact.get((system, normalised), ()))
            ancestor = normalised
            while len(ancestor) >= 3:
                found.extend(
                    rule.match
                    for rule in self._prefix.get((system, ancestor), ())
                    if rule.accepts(coded_in, normalised)
                )
                ancestor = ancestor[:-1].rstrip(".")
        category = normalised[:3]
        for range_system, low, high, rule in self._ranges:
            if range_system in ICD_SYSTEMS and low <= category <= high and rule.accepts(coded_in, normalised):
                found.append(rule.match)
        return _unique(found)

    @cached_property
    def _medication_name_pattern(self) -> re.Pattern[str]:
        # one scan of the text for every ingredient name (substring matches, as the names are written)
        names = sorted({name for name, _ in self.medication_names}, key=len, reverse=True)
        return re.compile("|".join(re.escape(name) for name in names) or r"(?!)")

    def match_medication_name(self, text: str) -> tuple[Concept, ...]:
        """Ingredient-name fallback for medications coded at product level or not at all."""
        try:
            return self._named[text]  # a record's medication names repeat, within and across patients
        except KeyError:
            pass
        lowered = text.lower()
        hits = []
        if self._medication_name_pattern.search(lowered):  # usually not: no ingredient the rules read
            for name, concept in self.medication_names:
                if name in lowered and not any(word in lowered for word in concept.excluded_name_words):
                    hits.append(concept)
        found = tuple(dict.fromkeys(hits))
        if len(text) <= 200:
            bounded_put(self._named, text, found)
        return found

    # ---- orders ------------------------------------------------------------
    def order_for_coding(self, system_uri: str | None, code: str | None) -> OrderCode | None:
        system = short_system(system_uri) if system_uri else None
        if system is None or not code:
            return None
        return self._order_index.get((system, str(code).strip()))

    def preferred_order(self, modality: str, region: str) -> OrderCode | None:
        for order in self.orders:
            if order.modality == modality and order.region == region and order.preferred:
                return order
        return None

    def next_step_order(self, kind: str) -> OrderCode | None:
        """The order for a next step the guideline names (e.g. blood cultures), when mapped."""
        for order in self.orders:
            if order.next_step == kind:
                return order
        return None

    def mri_order(self, region: str, contrast: str) -> OrderCode | None:
        for order in self.orders:
            if order.modality == "mri" and order.region == region and order.contrast == contrast:
                return order
        return None

    # ---- guidelines --------------------------------------------------------
    def guideline(self, guideline_id: str) -> Json:
        return self.guidelines.get(guideline_id, {"id": guideline_id, "title": guideline_id})

    def variant(self, variant_id: str) -> tuple[Json, Json]:
        """(guideline, variant) for a variant id such as LBP-V1."""
        for guideline in self.guidelines.values():
            for variant in guideline.get("variants", ()):
                if variant.get("id") == variant_id:
                    return guideline, variant
        raise KeyError(f"variant {variant_id} is not in guidelines.yaml")

    @cached_property
    def concept_labels(self) -> dict[str, str]:
        """Concept id -> clinical words (built once: every order's facts carry it)."""
        return {concept_id: concept.label for concept_id, concept in self.concepts.items()}

    @cached_property
    def acr_ratings(self) -> dict[str, dict[str, str]]:
        """ACR's rating of each study in each guideline variant (variant id -> study -> rating),
        from guidelines.yaml: what a PAMA rating follows."""
        return {
            variant["id"]: dict(variant.get("ratings") or {})
            for guideline in self.guidelines.values()
            for variant in guideline.get("variants", ())
        }

    @cached_property
    def threshold_concepts(self) -> frozenset[str]:
        """Concepts an Observation proves only by its value (a coded 8310-5 alone is not a fever)."""
        return frozenset(t.concept_id for thresholds in self.thresholds.values() for t in thresholds)

    def observation_codes(self) -> list[str]:
        return sorted(self.thresholds)


def _in_numeric_range(code: str, low: str, high: str) -> bool:
    if code.isdigit() and low.isdigit() and high.isdigit():
        return int(low) <= int(code) <= int(high)
    return low <= code <= high


def _unique(matches: Iterable[CodeMatch]) -> list[CodeMatch]:
    return list(dict.fromkeys(matches))


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _schemas(directory: Path) -> dict[str, Json]:
    """The JSON Schemas of the mapping kinds: the folder's own, else those shipped with the service."""
    folder = directory / "schema" if (directory / "schema").is_dir() else PACKAGED_MAPPINGS / "schema"
    return {
        path.name.split(".")[0]: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(folder.glob("*.schema.json"))
    }


def read_mapping_documents(directory: Path) -> tuple[dict[Path, Json], str, list[str]]:
    """Every mapping file parsed and checked against its kind's JSON Schema: the files that passed,
    the digest of all files' contents, and every problem found (one line each, file first).
    `load_mappings` refuses on the first; `validation.check_mappings` lists them all."""
    import jsonschema

    if not directory.exists():
        return {}, "", [f"mappings folder {directory} does not exist (set CDS_MAPPINGS_DIR to the mappings/ folder)"]
    if not directory.is_dir():
        return {}, "", [f"mappings folder {directory} is a file, not a folder"]
    paths = sorted(directory.glob("*.yaml"))
    if not paths:
        return {}, "", [f"mappings folder {directory} holds no mapping files (*.yaml)"]
    schemas = _schemas(directory)
    digest = hashlib.sha256()
    documents: dict[Path, Json] = {}
    problems: list[str] = []
    for path in paths:
        raw = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + raw + b"\0")
        try:
            document = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            problems.append(f"{path}: not valid YAML ({_one_line(error)})")
            continue
        kind = document.get("kind") if isinstance(document, dict) else None
        if kind not in schemas:
            problems.append(f"{path}: 'kind' must be one of {', '.join(sorted(schemas))}, got {kind!r}")
            continue
        refusals = sorted(
            jsonschema.Draft202012Validator(schemas[kind]).iter_errors(document),
            key=lambda refusal: [str(part) for part in refusal.absolute_path],
        )
        for refusal in refusals:
            where = "/".join(str(part) for part in refusal.absolute_path) or "(top)"
            problems.append(f"{path}: {where}: {_one_line(refusal.message)[:300]}")
        if not refusals:
            documents[path] = document
    kinds = {document["kind"] for document in documents.values()}
    missing = [kind for kind in REQUIRED_KINDS if kind not in kinds]
    if missing and not problems:
        problems.append(f"mappings folder {directory} has no file of kind {', '.join(missing)}")
    return documents, digest.hexdigest()[:12], problems


def load_mappings(directory: Path | None = None) -> Mappings:
    """The mappings folder as lookups; MappingsError (one line) on the first problem, so a service
    never starts on knowledge it cannot read (it would answer no card at all, even for cauda equina)."""
    directory = Path(directory or default_mappings_dir())
    documents, version, problems = read_mapping_documents(directory)
    if problems:
        raise MappingsError(problems[0])
    mappings = Mappings(version=version)
    for path, document in documents.items():
        kind = document.get("kind")
        if kind == "concepts":
            _load_concepts(mappings, document, path.stem)
        elif kind == "orders":
            _load_orders(mappings, document)
        elif kind == "guidelines":
            for guideline in document.get("guidelines", ()):
                mappings.guidelines[guideline["id"]] = guideline
    return mappings


def _load_concepts(mappings: Mappings, document: Json, source_file: str) -> None:
    for raw in document.get("concepts", ()):
        concept = Concept(
            id=raw["id"],
            label=raw.get("label", raw["id"]),
            source_file=source_file,
            kind=raw.get("kind", "other"),
            region=raw.get("region", "any"),
            guidelines=tuple(raw.get("guidelines", ())),
            names=tuple(name.lower() for name in raw.get("names", ())),
            excluded_name_words=tuple(word.lower() for word in raw.get("excluded_name_words", ())),
        )
        mappings.concepts[concept.id] = concept
        for name in concept.names:
            mappings.medication_names.append((name, concept))
        for entry in raw.get("codes", ()):
            system = entry["system"]
            match = CodeMatch(
                concept=concept,
                system=system,
                code=str(entry.get("code") or entry.get("prefix") or "-".join(entry.get("range", ()))),
                display=entry.get("display", ""),
                region=entry.get("region", concept.region),
            )
            seventh = frozenset(entry["seventh"]) if entry.get("seventh") else None
            if "code" in entry:
                code = str(entry["code"])
                if system in ICD_SYSTEMS:
                    code = normalise_icd10(code)
                mappings._exact.setdefault((system, code), []).append(match)
            elif "prefix" in entry:
                prefix = normalise_icd10(str(entry["prefix"])).rstrip(".")
                mappings._prefix.setdefault((system, prefix), []).append(IcdRule(match, seventh))
            elif "range" in entry:
                low, high = (str(bound) for bound in entry["range"])
                mappings._ranges.append((system, low, high, IcdRule(match, seventh)))
        for entry in raw.get("excludes", ()):
            kind = next(k for k in ("code", "prefix", "range") if k in entry)
            values = entry["range"] if kind == "range" else [entry[kind]]
            bounds = tuple(normalise_icd10(str(v)) if entry["system"] in ICD_SYSTEMS else str(v) for v in values)
            mappings.exclusions.setdefault(concept.id, []).append((entry["system"], kind, bounds))
        for entry in raw.get("observations", ()):
            threshold = Threshold(
                concept_id=concept.id,
                code=str(entry["code"]),
                display=entry.get("display", ""),
                comparator=entry["comparator"],
                value=float(entry["value"]),
                unit=entry["unit"],
                units={
                    unit_key(name): conversion
                    for name, conversion in (entry.get("units") or {entry["unit"]: {"scale": 1, "offset": 0}}).items()
                },
            )
            mappings.thresholds.setdefault(threshold.code, []).append(threshold)


def _load_orders(mappings: Mappings, document: Json) -> None:
    for raw in document.get("orders", ()):
        order = OrderCode(
            modality=raw["modality"],
            region=raw["region"],
            contrast=raw.get("contrast", "unspecified"),
            preferred=bool(raw.get("preferred", False)),
            next_step=raw.get("next_step"),
            codes=tuple(raw.get("codes", ())),
        )
        mappings.orders.append(order)
        for entry in order.codes:
            mappings._order_index.setdefault((entry["system"], str(entry["code"])), order)


@lru_cache(maxsize=4)
def _cached(directory: str) -> Mappings:
    return load_mappings(Path(directory))


def get_mappings(directory: Path | None = None) -> Mappings:
    """The process-wide mappings (loaded once; the files do not change while serving)."""
    return _cached(str(Path(directory or default_mappings_dir()).resolve()))
