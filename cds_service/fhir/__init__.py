"""FHIR access: the patient's record from the hook's prefetch (`prefetch`), and what it lacks
from the EHR's FHIR server (`client`), over the one outbound HTTP layer every call of the
service goes through (`outbound`: allowlist check, deadline on the socket, size cap).
Fills a `clinical.record.ClinicalData`; decides nothing clinical.
"""
