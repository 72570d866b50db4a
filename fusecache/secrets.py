"""Keeping credentials out of printed text (every layer: CLI, driver logs, importer)."""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^:/@\s]*:)([^@\s]+)(@)")


def mask_url(text: str) -> str:
    """redis://user:pw@host → redis://user:****@host."""
    return _URL_PASSWORD.sub(r"\1****\3", text)
