"""The fast timestamp parser S3Store gives botocore returns what botocore's own would, for
every form an S3 server sends (and hands anything else to botocore's)."""

from __future__ import annotations

import time

import botocore.utils
import pytest

from fusecache.object.s3 import S3Store, parse_s3_timestamp
from tests.servers import S3Server


@pytest.mark.parametrize("value", [
    "Wed, 02 Dec 2026 19:50:00 GMT",  # Last-Modified header
    "Wed, 02 Dec 2026 19:50:00 +0100",
    "Wed, 02 Dec 2026 19:50:00 -0000",  # "no zone known": botocore's rule, by fallback
    "2026-12-02T19:50:00.123Z",  # listing, with milliseconds
    "2026-12-02T19:50:00Z",
    "2026-12-02T19:50:00+01:00",
    "1733169000",  # epoch seconds
])
def test_parsed_like_botocore(value: str) -> None:
    ours, theirs = parse_s3_timestamp(value), botocore.utils.parse_timestamp(value)
    assert ours == theirs and ours.utcoffset() == theirs.utcoffset()
    assert ours.timestamp() == theirs.timestamp()


def test_garbage_is_botocores_error() -> None:
    with pytest.raises(ValueError):
        parse_s3_timestamp("not a date")


def test_head_and_listing_times_through_a_real_server(bucket_url: str, s3_server: S3Server) -> None:
    store = S3Store(bucket_url, s3_server.access_key, s3_server.secret_key)
    store.put("t/a", b"x")
    head, listed = store.head("t/a"), store.list("t/")
    assert [info.key for info in listed] == ["t/a"]
    assert abs(head.mtime - time.time()) < 60 and abs(head.mtime - listed[0].mtime) < 2
