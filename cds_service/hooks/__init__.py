"""The CDS Hooks 2.0 contract: which services exist (`discovery`), what a request must hold
(`request`), one hook call end to end (`evaluation`: read the record, rate each spine MRI
order), and what the EHR gets back (`cards`: card, suggestions, PAMA rating systemAction).
Knows nothing of HTTP or the database: `web` calls it, `cds-service evaluate` too.
"""
