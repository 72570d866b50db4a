"""`fusecache` command line: one subcommand per module, errors as one line on stderr."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import CliError
from . import format as format_cmd
from . import info, mount, stats, status, umount, warmup

COMMANDS = (format_cmd, mount, umount, status, info, warmup, stats)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints usage plus the error; keep the promised single line.
        raise CliError(f"{self.prog}: {message} (see --help)", exit_code=2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fusecache", description="A FUSE caching filesystem over Redis and S3.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return int(args.run(args) or 0)
    except CliError as exc:
        print(f"fusecache: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fusecache: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
