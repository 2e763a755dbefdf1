"""spine-imaging CDS: a CDS Hooks service that rates spine MRI orders against the guidelines.

The package is cut by domain, and imports run one way (tests/test_layout.py holds it):

    cli -> web -> hooks -> fhir -> clinical
           web -> utilization

- `clinical`: the decision. FHIR resources in, facts, rules, verdict out; the knowledge itself
  is `mappings/`. No web, database or HTTP library: a clinician reviewer reads this and
  `mappings/` alone.
- `fhir`: getting the patient's record: the hook's prefetch, then the EHR's FHIR server, and
  every outbound HTTP call (allowlist, deadlines, size caps).
- `hooks`: the CDS Hooks contract: request checks, discovery, one hook call end to end, cards,
  suggestions and the PAMA rating.
- `utilization`: the record of what was rated and what the clinician did (database, report).
- `web`: the HTTP face: Flask app, authentication, settings, log lines; hands each answered
  hook to `utilization`.
- `cli`: the `cds-service` command, the demo and its local FHIR server, fixtures.
"""
