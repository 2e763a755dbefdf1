"""The `cds-service` command (`main`): serve, evaluate, validate-mappings, demo, seed, keygen,
token, report. Also what only the command line and the tests use: the demo and its synthetic
history, a local FHIR server and seeding (`local_fhir`), fixtures with dates moved to today,
and process helpers.
"""

from .main import main

__all__ = ["main"]
