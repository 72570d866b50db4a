"""Structured logging for the driver, with secrets scrubbed from every record.

Two independent guards keep credentials out of logs:
1. Request logging never sees secret fields (`rpc.redacted` blanks every field the CSI proto
   marks `csi_secret`).
2. A filter on the root handler rewrites every record: values registered with
   `remember_secret` (Redis passwords, S3 keys taken from requests) and the password part of
   any `scheme://user:password@host` URL are replaced by `****`. This catches secrets that
   reach a message indirectly, e.g. inside a library's exception text.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import OrderedDict

from fusecache.cli.secrets import mask_url

MASK = "****"
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary words
_MAX_SECRETS = 4096

_secrets: OrderedDict[str, None] = OrderedDict()
_secrets_lock = threading.Lock()


def remember_secret(value: str) -> None:
    """Mask `value` wherever it shows up in a log record from now on."""
    if len(value) < _MIN_SECRET_LEN:
        return
    with _secrets_lock:
        _secrets[value] = None
        _secrets.move_to_end(value)
        while len(_secrets) > _MAX_SECRETS:
            _secrets.popitem(last=False)


def scrub(text: str) -> str:
    """`text` with URL passwords and remembered secrets masked."""
    text = mask_url(text)
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leftovers
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Formats the message once, scrubbed, so no handler can see the raw arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: scrub(v) if isinstance(v, str) else v for k, v in fields.items()}
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus the record's `fields` dict."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
