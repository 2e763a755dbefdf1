"""Log lines: one JSON object per line, written by `JsonLogFormatter`.

Code that logs often (the answer line, once per request) passes a `LogEntry` (a dict): the
formatter writes it as it is, with orjson, instead of parsing a JSON string back. Other code may
log a JSON string or plain text; both end up as one JSON object too.
"""

from __future__ import annotations

import json
import logging
import time

import orjson

AUTHENTICATION_OFF = (
    "AUTHENTICATION IS OFF (CDS_ALLOW_UNAUTHENTICATED=1): any caller can use this service and send it "
    "patient data. Development only."
)


class LogEntry(dict):
    """A log line's fields. `str()` (what `LogRecord.getMessage()` returns) is its JSON text."""

    def __str__(self) -> str:
        return json.dumps(self)


class JsonLogFormatter(logging.Formatter):
    _second: int | None = None
    _second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # logging's own format ("2026-11-23 11:45:20,123", local time), its date part worked out
        # once per second instead of once per line
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return f"{self._second_text},{int(record.msecs):03d}"  # logging's default_msec_format

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        if isinstance(record.msg, dict) and not record.args:
            entry.update(record.msg)
        else:
            message = record.getMessage()
            try:
                parsed = json.loads(message)
                entry.update(parsed if isinstance(parsed, dict) else {"message": message})
            except ValueError:
                entry["message"] = message
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry).decode()
        except TypeError:  # what orjson will not write (a lone surrogate, an integer beyond 64 bits)
            return json.dumps(entry)


def _json_gunicorn_logger() -> type:
    from gunicorn.glogging import Logger

    class JsonGunicornLogger(Logger):
        """gunicorn's own lines (start, workers booting and exiting, signals) as JSON, like the service's."""

        def setup(self, cfg):
            super().setup(cfg)
            for handler in self.error_log.handlers:
                handler.setFormatter(JsonLogFormatter())

    return JsonGunicornLogger


JsonGunicornLogger = _json_gunicorn_logger()
