"""Keeping credentials out of `ps` and out of printed text."""

from __future__ import annotations

import sys

from ..secrets import mask_url

__all__ = ["SECRET_FLAGS", "hide_secrets_from_ps", "mask_url", "masked_argv"]

SECRET_FLAGS = ("--secret-key", "--access-key")


def masked_argv(argv: list[str]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("****")
            hide_next = False
            continue
        flag, eq, _value = arg.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                out.append(f"{flag}=****")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(mask_url(arg))
    return out


def hide_secrets_from_ps() -> None:
    """Rewrite this process's command line as `ps` shows it, with secrets masked."""
    masked = masked_argv(sys.argv)
    if masked == sys.argv:
        return
    try:
        import setproctitle
    except ImportError:
        return
    # argv[0] is "-m" or a script path here; name the program as users typed it.
    setproctitle.setproctitle(" ".join(["fusecache", *masked[1:]]))
