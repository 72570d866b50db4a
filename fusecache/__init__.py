"""fusecache: a POSIX filesystem with metadata in Redis and data in an object store."""

__version__ = "0.1.0"
