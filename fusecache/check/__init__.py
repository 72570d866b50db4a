"""Offline checks of a whole volume: fsck (metadata invariants, object presence) and gc (leaked objects)."""
