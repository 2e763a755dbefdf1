"""The clinical core: what a spine MRI order is rated, and why.

`record` holds the patient's FHIR resources as the hook got them; `facts` turns them into
coded findings with provenance (using `mappings`, the loaded `mappings/` folder); `rules` is the
decision, a pure function of the facts; `model` is the plain data passed between them.
`validation` checks a mappings folder the way the service does before it serves.

Nothing here imports a web, database or HTTP library, nor any other part of the service.
"""
