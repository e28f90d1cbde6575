"""Secrets out of the logs: a logging filter that masks API keys in every record of the server's log handlers.

uvicorn's access log writes each request's path with its query string (``/v1/stream?api_key=...``), and an error
message may quote a header. The filter rewrites each record's message and arguments before any handler formats it:
query parameters and header values named like a credential become ``***``, and so does the configured key itself
wherever it appears.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
_NAMES = r"api[_-]?key|access[_-]?token|password"
_QUERY = re.compile(rf"(?i)\b({_NAMES})=([^&\s\"'#]+)")
_HEADER = re.compile(rf"(?i)\b(authorization|proxy-authorization|x-api-key|{_NAMES})(['\"]?\s*[:=,]\s*(?:b?['\"])?)"
                     r"(bearer\s+|basic\s+)?([^\s'\",;)]+)")


class RedactSecrets(logging.Filter):
    """Mask credentials in log records (never drops a record)."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def redact(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, MASK)
        text = _QUERY.sub(lambda m: f"{m.group(1)}={MASK}", text)
        return _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{MASK}", text)

    def _value(self, v: Any) -> Any:
        if isinstance(v, str):
            return self.redact(v)
        if isinstance(v, bytes):
            text = v.decode("latin-1")
            masked = self.redact(text)
            return v if masked == text else masked
        return v

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._value(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._value(v) for k, v in record.args.items()}
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


def install(secrets: tuple[str, ...] = ()) -> RedactSecrets:
    """Attach one :class:`RedactSecrets` to every handler of the root and uvicorn loggers, and to uvicorn's loggers
    themselves, replacing any attached before (call again after uvicorn has configured its logging)."""
    f = RedactSecrets(secrets)
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        for target in [logger, *logger.handlers] if name else logger.handlers:
            for old in [x for x in target.filters if isinstance(x, RedactSecrets)]:
                target.removeFilter(old)
            target.addFilter(f)
    return f
