"""The utilization record: every rated order, the feedback on its card and seen token ids
(`store`, tables in `schema`, SQLAlchemy with Alembic `migrations/`), kept through a database
outage by the local `spool` and the deadlines of `gate`; and what analysts read from it (`report`:
the numbers; `render`: text, CSV, JSON; `charts`: HTML and the dashboard's charts). Handed its rows
by `web`; imports nothing else of the service.
"""
