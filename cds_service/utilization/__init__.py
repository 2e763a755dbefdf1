"""The utilization record: every rated order, the feedback on its card and seen token ids
(`store`, SQLAlchemy with Alembic `migrations/`), and what analysts read from it (`report`:
text, CSV, JSON, HTML and the dashboard's charts). Handed its rows by `web`; imports nothing
else of the service.
"""
