"""`fusecache` command line: one subcommand per module, errors as one line on stderr."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from types import ModuleType

from ..errors import CliError

# Subcommand → its module. A command line that names one imports only that module: `warmup`
# or `stats` need neither redis-py nor boto3, and a warmup run costs its start-up time.
COMMANDS = ("format", "mount", "umount", "status", "info", "warmup", "stats", "fsck", "gc", "destroy",
            "dump", "load", "quota", "config", "bench", "clone", "snapshot", "import")


def _module(command: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.{command}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints usage plus the error; keep the promised single line. main() puts
        # "fusecache: " in front, so only a subcommand's own name is added here.
        command = self.prog.partition(" ")[2]
        where = f"{command}: " if command else ""
        raise CliError(f"{where}{message} (see {self.prog} --help)", exit_code=2)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (`only`) the one subcommand a command line names."""
    parser = _Parser(prog="fusecache", description="A FUSE caching filesystem over Redis and S3.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in (only,) if only in COMMANDS else COMMANDS:
        _module(command).add_parser(sub)
    return parser


def _named_command(argv: list[str]) -> str | None:
    """The subcommand an argument list names, if its first non-option argument is one."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def _check_command(argv: list[str]) -> None:
    """An unknown subcommand in plain words (argparse says "argument command: invalid choice")."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None and not {"-h", "--help"} & set(argv):
        raise CliError(f"no command given: choose one of {', '.join(COMMANDS)} (see fusecache --help)", 2)
    if first is not None and first not in COMMANDS:
        raise CliError(f"unknown command {first!r}: choose one of {', '.join(COMMANDS)} "
                       "(see fusecache --help)", exit_code=2)


def main(argv: list[str] | None = None) -> int:
    verbose = False
    try:
        argv = sys.argv[1:] if argv is None else argv
        _check_command(argv)
        args, extra = build_parser(_named_command(argv)).parse_known_args(argv)
        if extra:  # argparse would blame the top-level parser; name the subcommand
            raise CliError(f"{args.command}: unrecognized arguments: {' '.join(extra)} "
                           f"(see fusecache {args.command} --help)", exit_code=2)
        verbose = args.verbose
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except CliError as exc:
        print(f"fusecache: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fusecache: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `fusecache ... | head`: the reader went away; end quietly, as cat does.
        _silence_stdout()
        return 141
    except Exception as exc:
        # One line for the user; the traceback goes to the log (a mount's --log file, or
        # stderr with -v), never unasked to the terminal.
        if verbose or _logs_to_file():
            logging.getLogger("fusecache").error("unexpected error", exc_info=True)
        print(f"fusecache: unexpected error: {type(exc).__name__}: {exc}"
              + ("" if verbose else " (run with -v for details)"), file=sys.stderr)
        return 1


def _logs_to_file() -> bool:
    return any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
