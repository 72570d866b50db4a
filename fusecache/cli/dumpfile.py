"""The dump document: one JSON document, written and read as a stream.

    {"fusecache_dump": 1, "dumped_at": "...", "source_prefix": "fc",
     "volume": {...settings...},
     "keys": [
      {"key": "counters", "type": "hash", "value": [["nextinode", "1025"], ...]},
      ...
     ],
     "key_count": 1234, "complete": true}

Each key is one line, so neither side holds more than one key in memory. The reader does
not depend on that layout (a document re-indented by a JSON tool still loads), only on
the order of the members: header, then "keys", then the trailer, whose key count tells
a whole document from a cut one. A name ending in .gz is gzip-compressed.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import time
from collections.abc import Iterator
from typing import IO, Any

from ..errors import CliError
from ..meta.dump import KeyDump

VERSION = 1
READ_CHUNK = 1 << 20
_KEYS = re.compile(r'"keys"\s*:\s*\[')
_DECODER = json.JSONDecoder()


def open_text(path: str, mode: str) -> IO[str]:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, mode + "b"), encoding="utf-8")  # type: ignore[arg-type]
    return open(path, mode, encoding="utf-8")


class DumpWriter:
    def __init__(self, out: IO[str], prefix: str, volume: dict[str, Any]) -> None:
        self._out = out
        self.count = 0
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out.write(f'{{"fusecache_dump": {VERSION}, "dumped_at": "{stamp}", '
                  f'"source_prefix": {json.dumps(prefix)},\n')
        out.write(f' "volume": {json.dumps(volume, sort_keys=True)},\n "keys": [\n')

    def key(self, item: KeyDump) -> None:
        line = json.dumps({"key": item.name, "type": item.kind, "value": item.value}, separators=(",", ":"))
        self._out.write((",\n " if self.count else " ") + line)
        self.count += 1

    def finish(self) -> None:
        self._out.write(f'\n ],\n "key_count": {self.count}, "complete": true}}\n')


class DumpReader:
    """`header` right away; `entries()` then streams the keys and checks the trailer."""

    def __init__(self, src: IO[str], name: str) -> None:
        self._src = src
        self._name = name
        self._buf = ""
        self._pos = 0
        self._eof = False
        self.count = 0
        self.header = self._read_header()

    def _more(self) -> bool:
        if self._eof:
            return False
        chunk = self._src.read(READ_CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._buf = self._buf[self._pos:] + chunk
        self._pos = 0
        return True

    def _bad(self, why: str) -> CliError:
        return CliError(f"{self._name} is not a fusecache dump: {why}")

    def _read_header(self) -> dict[str, Any]:
        while not (match := _KEYS.search(self._buf)):
            if not self._more() or len(self._buf) > (64 << 20):
                raise self._bad('no "keys" list found')
        head = self._buf[:match.start()].rstrip().rstrip(",") + "}"
        try:
            header = json.loads(head)
        except ValueError:
            raise self._bad("its header is not JSON") from None
        if not isinstance(header, dict) or header.get("fusecache_dump") != VERSION:
            raise self._bad(f"no \"fusecache_dump\": {VERSION} in its header")
        if not isinstance(header.get("volume"), dict):
            raise self._bad("it names no volume")
        self._pos = match.end()
        return header

    def _skip(self, chars: str) -> str:
        """Skip `chars`; the next other character ('' at the end)."""
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in chars:
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._more():
                return ""

    def entries(self) -> Iterator[KeyDump]:
        while True:
            ahead = self._skip(" \t\r\n,")
            if ahead == "]":
                self._pos += 1
                break
            if ahead == "":
                raise CliError(f"{self._name} is cut short after {self.count} keys (no end of the key list)")
            item = self._decode()
            try:
                entry = KeyDump(item["key"], item["type"], item["value"])
            except (KeyError, TypeError):
                raise self._bad(f"key entry {self.count + 1} lacks key, type or value") from None
            self.count += 1
            yield entry
        self._check_trailer()

    def _decode(self) -> Any:
        while True:
            try:
                item, end = _DECODER.raw_decode(self._buf, self._pos)
            except ValueError:
                if self._more():
                    continue
                raise CliError(f"{self._name} is cut short or damaged after {self.count} keys") from None
            self._pos = end
            return item

    def _check_trailer(self) -> None:
        while self._more():
            pass
        rest = self._buf[self._pos:].strip().lstrip(",")
        try:
            trailer = json.loads("{" + rest)
        except ValueError:
            raise CliError(f"{self._name} is cut short after its key list (no key count)") from None
        if trailer.get("key_count") != self.count or trailer.get("complete") is not True:
            raise CliError(f"{self._name} says it has {trailer.get('key_count')} keys but holds {self.count}")
