"""The `fusecache` command line."""

from .secrets import hide_secrets_from_ps

# Mask secrets given as flags in `ps` before anything slow is imported: the window in which
# the unmasked command line is visible is the interpreter's start-up, not ours.
hide_secrets_from_ps()
