"""`fusecache mount META_URL MOUNTPOINT`: serve a volume through FUSE.

The one place that wires the layers: meta → object store → block cache → chunk store →
vfs → fuse ops. With `-d` the command starts itself again as a detached process and
returns once that process reports the mount ready (or prints why it failed).

Cache tiers (`--cache`, in tier order) mirror Fluid's tieredstore levels; see docs/cache.md.
Without `--cache` a client keeps a 256 MiB MEM tier (`DEFAULT_CACHE`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from .. import __version__
from ..errors import CliError, FsError, ObjectStoreError
from ..mountinfo import is_mounted, top_mount
from ..types import ROOT_INO
from ..units import format_size, parse_size
from ..vfs.memory import MEM_TIER_SHARE, BudgetTooSmall, MemoryPlan, plan_memory
from .common import connect_meta, eviction_problem, load_volume, refuse_destroyed
from .secrets import mask_url

if TYPE_CHECKING:
    from ..cache import TierConfig
    from ..fuse.ops import FuseOps
    from ..meta.base import Meta
    from ..vfs.vfs import Vfs

log = logging.getLogger(__name__)
READY_FD_ENV = "FUSECACHE_READY_FD"
HEARTBEAT = 10.0
STALE_SESSION = 60.0
DEFAULT_CACHE = "mem:256MiB"
UPLOAD_DRAIN_STALL = 60.0  # seconds without upload progress after which unmount stops waiting
GIL_SWITCH_INTERVAL = 0.005  # seconds; see _serve_volume
# pyfuse3 ends a request task whenever more than min_tasks wait for the next request, so
# with its default of 1 every burst of parallel readers creates and ends tasks per request.
FUSE_MIN_TASKS = 16
TRASH_EVERY = 600.0  # seconds between looks for trash older than the volume's trash_days


DESCRIPTION = """\
Mount a volume at MOUNTPOINT. Everything else the volume needs (storage, credentials,
block size) was recorded by 'fusecache format'; env ACCESS_KEY/SECRET_KEY override the
stored credentials. With -d the command returns once the mount is ready, or prints why
it failed.

Each client keeps data blocks in cache tiers (--cache, repeatable, in lookup order):
mem:SIZE, ssd:DIR:SIZE or ssd:DIR1,DIR2:SIZE. Without --cache a client keeps a
{default} memory tier.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mount", help="mount a volume", description=DESCRIPTION.format(default=DEFAULT_CACHE[4:]),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-d", "--background", action="store_true", help="run in the background; return once mounted")
    p.add_argument("--subdir", default="", metavar="PATH", help="mount this directory of the volume as the root")
    p.add_argument("--read-only", action="store_true", help="mount read-only (writes fail with EROFS)")
    p.add_argument("-o", dest="fuse_options", action="append", default=[], metavar="OPTIONS",
                   help="FUSE mount options, comma separated (e.g. allow_other)")
    p.add_argument("--attr-timeout", type=float, default=1.0, metavar="SECONDS",
                   help="kernel attribute cache seconds (default 1)")
    p.add_argument("--entry-timeout", type=float, default=1.0, metavar="SECONDS",
                   help="kernel name cache seconds (default 1)")
    p.add_argument("--coherent-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="kernel name and attribute cache seconds while Redis tells this client of "
                        "changes (standalone Redis; taken back at once on a change; 0: off; default 60)")
    p.add_argument("--readahead", type=int, default=4, metavar="N",
                   help="most blocks prefetched ahead of a sequential reader (default 4; 0: off)")
    p.add_argument("--buffer-blocks", type=int, default=32, metavar="N",
                   help="blocks buffered for upload at once (default 32)")
    p.add_argument("--cache", action="append", default=[], metavar="SPEC",
                   help="a cache tier, repeatable, in lookup order: mem:SIZE or ssd:DIR[,DIR...]:SIZE "
                        f"(default {DEFAULT_CACHE})")
    p.add_argument("--cache-low", type=float, default=0.7, metavar="RATIO",
                   help="eviction stops at this share of a tier's quota (default 0.7)")
    p.add_argument("--cache-high", type=float, default=0.95, metavar="RATIO",
                   help="eviction starts above this share of a tier's quota (default 0.95)")
    p.add_argument("--cache-free-ratio", type=float, default=0.1, metavar="RATIO",
                   help="an ssd tier stops growing when its disk has less free space than this (default 0.1)")
    p.add_argument("--writeback", action="store_true",
                   help="stage written blocks on the ssd tier and upload them in the background")
    p.add_argument("--mem-cache", metavar="SIZE", help="same as --cache mem:SIZE (kept for compatibility)")
    p.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics on this address")
    p.add_argument("--memory-budget", default="1GiB", metavar="SIZE",
                   help="memory for block data: the mem cache tier, read and write buffers, readahead and "
                        "loads in flight together (default 1GiB; the client's fixed overhead comes on top)")
    p.add_argument("--io-threads", type=int, default=32, metavar="N", help="object store worker threads (default 32)")
    p.add_argument("--s3-data-client", choices=["boto3", "lean"], default="boto3",
                   help="how block GETs and PUTs reach S3: boto3 (default) or lean, a minimal signed "
                        "HTTP path that costs about a third of boto3's CPU per request")
    p.add_argument("--log", metavar="FILE",
                   help="log file (default with -d: /var/log/fusecache/<mountpoint>.log as root, "
                        "else ~/.fusecache/log/<mountpoint>.log)")
    p.set_defaults(run=run)


@dataclass
class Volume:
    """Everything `serve` needs, opened and checked before the mount is attempted."""

    meta: object
    settings: object
    store: object
    root: int


def _check_mountpoint(path: str) -> str:
    path = os.path.abspath(path)
    if is_mounted(path):
        raise CliError(f"mountpoint {path} is already mounted (unmount it first)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CliError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        raise CliError(f"mountpoint {path} is not usable: {exc.strerror}") from None
    import stat as stat_mod

    if not stat_mod.S_ISDIR(st.st_mode):
        raise CliError(f"mountpoint {path} is not a directory")
    return path


def _fuse_options(args: argparse.Namespace, name: str) -> set[str]:
    options = {f"fsname=fusecache:{name}", "subtype=fusecache", "default_permissions"}
    for group in args.fuse_options:
        options.update(o.strip() for o in group.split(",") if o.strip())
    if args.read_only:
        options.add("ro")
    options.discard("rw") if args.read_only else None
    return options


def _resolve_subdir(meta, subdir: str) -> int:  # type: ignore[no-untyped-def]
    ino = ROOT_INO
    for part in [p for p in subdir.split("/") if p]:
        try:
            attr = meta.lookup(ino, part.encode())
        except FsError:
            raise CliError(f"subdirectory {subdir!r} does not exist in the volume") from None
        if not attr.is_dir:
            raise CliError(f"subdirectory {subdir!r} is not a directory")
        ino = attr.ino
    return ino


def open_volume(args: argparse.Namespace) -> Volume:
    from ..object import check_store, create_store
    from ..object.timed import TimedStore

    meta = connect_meta(args.meta_url)
    try:
        settings = load_volume(meta)
        problem = eviction_problem(meta)
        if problem is not None:
            _warn(problem)
        root = _resolve_subdir(meta, args.subdir)
        try:
            options = {"data_client": args.s3_data_client} if settings.storage == "s3" else {}
            check_store(settings.storage, settings.bucket, settings.access_key, settings.secret_key,
                        write=not args.read_only, **options)
            # Timed: every request's latency by method, for stats, metrics and bench.
            store = TimedStore(create_store(settings.storage, settings.bucket, settings.access_key,
                                            settings.secret_key, **options))
        except (ObjectStoreError, ValueError) as exc:
            raise CliError(str(exc)) from None
    except BaseException:
        meta.shutdown()
        raise
    return Volume(meta, settings, store, root)


def cache_tiers(args: argparse.Namespace) -> list[TierConfig]:
    """The cache tiers the flags ask for, validated (CliError with exit code 2 otherwise)."""
    from ..cache import parse_cache_spec

    _check_watermarks(args)  # before the specs: an error must name the flag, not a tier spec
    specs = list(args.cache)
    if args.mem_cache:
        if any(spec.strip().lower().startswith("mem:") for spec in specs):
            raise CliError("--mem-cache and --cache mem:SIZE both size the memory tier; give one", 2)
        specs.insert(0, f"mem:{args.mem_cache}")
    try:
        tiers = [parse_cache_spec(spec or "", low=args.cache_low, high=args.cache_high,
                                  free_ratio=args.cache_free_ratio)
                 for spec in specs or [DEFAULT_CACHE]]
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    if sum(t.medium == "mem" for t in tiers) > 1:
        raise CliError("at most one mem cache tier can be given", 2)
    _check_mem_tier(sum(t.quota for t in tiers if t.medium == "mem"))
    # The client runs with -d from the same directory, but logs and stats read better absolute.
    tiers = [replace(t, paths=tuple(os.path.abspath(p) for p in t.paths)) for t in tiers]
    if args.writeback and not args.read_only and not any(t.medium == "ssd" for t in tiers):
        raise CliError("--writeback stages blocks on disk: it needs an ssd cache tier "
                       "(--cache ssd:DIR:SIZE)", 2)
    return tiers


def _check_watermarks(args: argparse.Namespace) -> None:
    low, high, free = args.cache_low, args.cache_high, args.cache_free_ratio
    # `not a < x < b` also refuses nan.
    if not 0 < low < 1:
        raise CliError(f"--cache-low {low:g}: must be a share of each tier's quota above 0 and below 1", 2)
    if not 0 < high <= 1:
        raise CliError(f"--cache-high {high:g}: must be a share of each tier's quota above 0 and at most 1", 2)
    if low >= high:
        raise CliError(f"--cache-low {low:g} must be below --cache-high {high:g}: eviction starts above "
                       "the high watermark and stops at the low one", 2)
    if not 0 <= free < 1:
        raise CliError(f"--cache-free-ratio {free:g}: must be at least 0 and below 1", 2)


def _check_mem_tier(quota: int) -> None:
    """A mem tier larger than the memory the client can have is refused, not warned about:
    the tier fills up with real allocations, so the client would be killed (or the machine
    would swap) once it is warm, long after the mount looked fine."""
    from ..sysmem import memory_limit

    limit = memory_limit()
    if quota and limit is not None and quota > limit.bytes:
        raise CliError(f"a mem cache tier of {format_size(quota)} is more than {limit.source}, "
                       f"{format_size(limit.bytes)}: give a smaller one, e.g. --cache mem:"
                       f"{format_size(limit.bytes // 4).replace('.0', '')}", 2)


def _warn_budget(budget: int) -> None:
    """A budget above the memory at hand is only warned about: it is a cap, which a
    client reaches only under heavy load."""
    from ..sysmem import memory_limit

    limit = memory_limit()
    if limit is not None and budget > limit.bytes and READY_FD_ENV not in os.environ:
        print(f"fusecache: warning: --memory-budget {format_size(budget)} is more than {limit.source}, "
              f"{format_size(limit.bytes)}: under load the client may be killed for lack of memory",
              file=sys.stderr)


def metrics_address(text: str) -> tuple[str, int]:
    """`ADDR:PORT`, `[v6addr]:PORT` or `:PORT` (all interfaces) → (addr, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"--metrics {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:9567", 2)
    return host.strip("[]") or "0.0.0.0", int(port)


def memory_budget(args: argparse.Namespace) -> int:
    try:
        budget = parse_size(args.memory_budget)
    except ValueError as exc:
        raise CliError(f"--memory-budget: {exc}", 2) from None
    if budget <= 0:
        raise CliError("--memory-budget must be positive", 2)
    return budget


def plan_client_memory(args: argparse.Namespace, block_size: int) -> MemoryPlan:
    """The memory plan of this mount (CliError if the flags ask for more than the budget)."""
    mem_tier = sum(t.quota for t in args.cache_tiers if t.medium == "mem")
    try:
        return plan_memory(memory_budget(args), block_size, mem_tier, readahead_blocks=args.readahead,
                           upload_blocks=max(2, args.buffer_blocks))
    except BudgetTooSmall as exc:
        raise CliError(str(exc), 2) from None


def run(args: argparse.Namespace) -> int:
    args.cache_tiers = cache_tiers(args)  # fail before starting a background client
    mem_tier = sum(t.quota for t in args.cache_tiers if t.medium == "mem")
    if mem_tier > MEM_TIER_SHARE * memory_budget(args):  # the rest needs the block size
        plan_client_memory(args, 1)
    _warn_budget(memory_budget(args))
    if args.metrics:
        metrics_address(args.metrics)
    if args.readahead < 0:
        raise CliError("--readahead must be 0 (off) or a number of blocks", 2)
    for option in ("attr_timeout", "entry_timeout", "coherent_timeout"):
        if not 0 <= getattr(args, option) < 1e6:  # also refuses nan
            raise CliError(f"--{option.replace('_', '-')} must be a number of seconds, 0 or more", 2)
    args.mountpoint = _check_mountpoint(args.mountpoint)
    if args.background:
        return _start_background(args)
    return serve(args)


def _split_password(url: str) -> tuple[str, str]:
    """Take the password out of a URL so it can travel in the environment, not argv."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment)), unquote(parts.password)


def _start_background(args: argparse.Namespace) -> int:
    """Start `mount` again detached, and wait for its verdict on a pipe."""
    url, password = _split_password(args.meta_url)
    env = dict(os.environ)
    if password and "META_PASSWORD" not in env:
        env["META_PASSWORD"] = password
    argv = [a for a in sys.argv[1:] if a not in ("-d", "--background")]
    argv = [url if a == args.meta_url else a for a in argv]
    read_fd, write_fd = os.pipe()
    env[READY_FD_ENV] = str(write_fd)
    log_path = os.path.abspath(args.log or _default_log_path(args))
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    argv = _without_option(argv, "--log")
    with open(log_path, "ab") as logfile:
        # -P: a `fusecache/` folder in the caller's working directory (as $HOME has after
        # quickstart) must not shadow the installed package.
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "fusecache.cli.main", *argv, "--log", log_path],
            stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
            env=env, pass_fds=(write_fd,), start_new_session=True,
        )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        lines = pipe.read().decode(errors="replace").strip().splitlines()
    for line in lines:
        if line.startswith("warning: "):
            print(f"fusecache: {line}", file=sys.stderr)
    verdict = next((line for line in reversed(lines) if not line.startswith("warning: ")), "")
    if verdict == "ready":
        print(f"mounted {args.mountpoint} (pid {proc.pid}, log {log_path})")
        return 0
    proc.wait(timeout=30)
    reason = verdict.removeprefix("error: ")
    raise CliError(reason or f"mount process exited with code {proc.returncode}; see {log_path}")


def _without_option(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag VALUE` / `flag=VALUE`."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def _default_log_path(args: argparse.Namespace) -> str:
    base = "/var/log/fusecache" if os.geteuid() == 0 else os.path.expanduser("~/.fusecache/log")
    name = args.mountpoint.strip("/").replace("/", "-") or "root"
    return os.path.join(base, f"{name}.log")


def _report(message: str) -> None:
    """Tell a waiting `mount -d` parent how the mount went (no-op in the foreground)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), message.encode())
        os.close(int(fd))
    except OSError:
        pass


def _warn(message: str) -> None:
    """A warning for the user: logged, and shown by a waiting `mount -d` parent (or on
    stderr in the foreground)."""
    log.warning("%s", message)
    fd = os.environ.get(READY_FD_ENV)
    if fd is None:
        print(f"fusecache: warning: {message}", file=sys.stderr)
        return
    try:
        os.write(int(fd), f"warning: {message}\n".encode())
    except OSError:
        pass


def serve(args: argparse.Namespace) -> int:
    if args.log:
        handler = logging.FileHandler(args.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.handlers = [handler]  # stderr may be this same file (with -d): log each line once
        root.setLevel(min(root.level, logging.INFO))
    try:
        volume = open_volume(args)
    except CliError as exc:
        _report(f"error: {exc.message}")
        raise
    try:
        return _serve_volume(args, volume)
    except CliError as exc:
        _report(f"error: {exc.message}")
        raise
    finally:
        volume.meta.shutdown()  # type: ignore[attr-defined]


def _serve_volume(args: argparse.Namespace, volume: Volume) -> int:
    from ..cache import TieredCache
    from ..chunk.external import volume_chunks
    from ..fuse.ops import FuseOps
    from ..vfs.vfs import Vfs, VfsOptions
    from ..workers import Workers
    from .stats import start_metrics

    meta, settings = volume.meta, volume.settings
    plan = plan_client_memory(args, settings.block_size)  # type: ignore[attr-defined]
    log.info("%s", plan.describe())
    # The volume's uuid names its cache directories: volumes never share cached blocks,
    # even two volumes of the same name on different metadata servers.
    cache = TieredCache.open(args.cache_tiers, settings.uuid, demote_limit=plan.demote_queue)  # type: ignore[attr-defined]
    # Imported files read from their sources (fusecache import) through chunks.external.
    chunks = volume_chunks(meta, volume.store, settings, cache,  # type: ignore[arg-type]
                           writeback=args.writeback and not args.read_only,
                           upload_threads=max(2, args.io_threads // 4))
    try:
        chunks.resume_uploads()
        workers = Workers(meta_threads=16, io_threads=args.io_threads)
        options = VfsOptions(read_only=args.read_only, readahead_blocks=args.readahead,
                             upload_slots=plan.upload_slots, readahead_slots=plan.readahead_slots,
                             read_slots=plan.read_slots, recent_blocks=plan.recent_blocks,
                             warmup_slots=plan.warmup_slots)
        vfs = Vfs(meta, chunks, settings, workers, options)  # type: ignore[arg-type]
        if chunks.external is not None:  # directories of a lazy import are listed on first use
            from ..importer.lazy import LazyFiller

            vfs.fill_dir = LazyFiller(meta, chunks.external.store_for).fill  # type: ignore[arg-type]
        vfs.about = {
            "volume": settings.name, "uuid": settings.uuid, "pid": os.getpid(),  # type: ignore[attr-defined]
            "mountpoint": args.mountpoint, "subdir": args.subdir, "version": __version__,
            "meta_url": mask_url(args.meta_url),  # for `fusecache quota PATH`; never the password
        }
        ops = FuseOps(vfs, volume.root, args.attr_timeout, args.entry_timeout, args.coherent_timeout)
        metrics = start_metrics(*metrics_address(args.metrics), vfs.stats) if args.metrics else None
    except BaseException:
        chunks.close(drain_stall=0)  # staged blocks wait for the next mount
        volume.store.close()  # type: ignore[attr-defined]
        raise
    try:
        return _run_session(args, volume, vfs, ops)
    finally:
        if metrics is not None:
            metrics.close()
        # Uploads of writeback blocks finish first (the mount is already gone), then the
        # cache writes its MEM blocks down to disk and releases its directories.
        chunks.close(drain_stall=UPLOAD_DRAIN_STALL)
        if chunks.external is not None:
            chunks.external.close()
        volume.store.close()  # type: ignore[attr-defined]


def _run_session(args: argparse.Namespace, volume: Volume, vfs: Vfs, ops: FuseOps) -> int:
    """Mount, serve FUSE requests until unmounted, and end the metadata session."""
    import pyfuse3
    import trio

    meta, settings = volume.meta, volume.settings

    # CPython's own 5 ms GIL switch interval, on purpose: with 0.5 ms (tried earlier for
    # shorter thread hand-offs) the FUSE loop and the I/O threads took the GIL from each
    # other so often that cold 8-reader small-file reads ran 25% slower and warm ones 10%.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    meta.clean_stale_sessions(STALE_SESSION)  # type: ignore[attr-defined]
    close_dead_local_sessions(meta)  # type: ignore[arg-type]
    sid = meta.new_session(socket.gethostname(), os.getpid(), args.mountpoint, __version__,  # type: ignore[attr-defined]
                           machine_origin())
    try:
        # A destroy that began after open_volume read the settings either sees this session
        # (and refuses) or marked the volume before it was registered: then we see the mark.
        refuse_destroyed(meta.load())  # type: ignore[attr-defined]
        pyfuse3.init(ops, args.mountpoint, _fuse_options(args, settings.name))  # type: ignore[attr-defined]
    except RuntimeError as exc:
        meta.close_session(sid)  # type: ignore[attr-defined]
        raise CliError(f"cannot mount {args.mountpoint}: {exc}") from None
    except BaseException:
        meta.close_session(sid)  # type: ignore[attr-defined]
        raise
    log.info("mounted volume %s at %s (session %d)", settings.name, args.mountpoint, sid)  # type: ignore[attr-defined]
    unmounted = False
    try:
        trio.run(_main, vfs, ops, meta, sid, args.mountpoint)
        unmounted = True
    finally:
        pyfuse3.close(unmount=not unmounted)
        meta.close_session(sid)  # type: ignore[attr-defined]
    return 0


def machine_origin() -> str:
    """What tells this machine and PID namespace apart from others: the kernel's boot id and
    the PID namespace. Two sessions with the same origin see each other's processes."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}:{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def close_dead_local_sessions(meta: Meta) -> int:
    """End sessions of clients that ran here and died (kill -9, OOM kill): their process is
    gone, so their open files are closed, and waiting for the stale timeout would only keep
    unlinked files (and their objects) longer. Only sessions of this very machine and PID
    namespace are judged, never those of other hosts or containers."""
    origin = machine_origin()
    if not origin:
        return 0
    closed = 0
    for session in meta.list_sessions():
        if session.origin != origin or session.pid == os.getpid():
            continue
        if _process_alive(session.pid):
            continue  # alive (that client, or another program by now: not ours to judge)
        log.warning("session %d of pid %d on this machine ended without closing; closing it",
                    session.sid, session.pid)
        meta.close_session(session.sid)
        closed += 1
    return closed


def _process_alive(pid: int) -> bool:
    """Whether `pid` is a running process here. Only "no such process" counts as dead (a
    process we may not signal, or whose /proc entry is hidden, is alive), and so does a
    zombie: killed, not reaped yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _widen_kernel_readahead(mountpoint: str, kib: int = 4096) -> None:
    """Let the kernel send 1 MiB reads instead of its default 128 KiB: fewer, larger FUSE
    requests. Best effort: the knob is root-only and absent in some containers."""
    entry = top_mount(mountpoint)
    if entry is None or not entry.dev:
        return
    try:
        with open(f"/sys/class/bdi/{entry.dev}/read_ahead_kb", "w") as f:
            f.write(str(kib))
    except OSError as exc:
        log.info("kernel readahead left at its default: %s", exc.strerror)


async def _after_init(ops: FuseOps, mountpoint: str) -> None:
    """Once the kernel has our INIT reply, widen its readahead, then report the mount ready."""
    import trio

    # The kernel caps readahead when it processes our INIT reply, which libfuse sends right
    # after `ops.init()` returns, in the same synchronous step of the session loop: by the
    # time this task runs again the cap is applied, and widening it now sticks. A file's
    # readahead window is fixed when it is opened, so this must happen before "ready".
    initialized = trio.Event()
    ops.on_init = initialized.set
    if not ops.initialized:
        with trio.move_on_after(10):
            await initialized.wait()
    await trio.to_thread.run_sync(_widen_kernel_readahead, mountpoint)
    _report("ready")


async def _main(vfs, ops, meta, sid: int, mountpoint: str) -> None:  # type: ignore[no-untyped-def]
    import pyfuse3
    import trio

    async with trio.open_nursery() as nursery:
        vfs.start(nursery)
        nursery.start_soon(ops.kernel.run)
        nursery.start_soon(_heartbeat, vfs, meta, sid)
        nursery.start_soon(_janitor, vfs)
        nursery.start_soon(_trash_janitor, vfs)
        nursery.start_soon(_on_signal, mountpoint)
        nursery.start_soon(_after_init, ops, mountpoint)
        await pyfuse3.main(min_tasks=FUSE_MIN_TASKS)
        await vfs.flush_all()
        nursery.cancel_scope.cancel()


async def _heartbeat(vfs, meta, sid: int) -> None:  # type: ignore[no-untyped-def]
    import trio

    while True:
        await trio.sleep(HEARTBEAT)
        try:
            await vfs.workers.meta(meta.heartbeat, sid, vfs.ids.lowest_in_use())
            await vfs.workers.meta(meta.clean_stale_sessions, STALE_SESSION)
        except Exception as exc:
            log.warning("session heartbeat failed: %s", exc)


async def _janitor(vfs) -> None:  # type: ignore[no-untyped-def]
    """Commit idle buffered writes, drop the open notes of closed files, delete objects no
    file references any more (once their garbage delay passed)."""
    import trio

    while True:
        await trio.sleep(1.0)
        try:
            await vfs.flush_idle()
            await vfs.flush_releases()
            while await vfs.collect_garbage() > 0:
                pass
        except Exception as exc:
            log.warning("background cleanup failed: %s", exc)


async def _trash_janitor(vfs) -> None:  # type: ignore[no-untyped-def]
    """Empty trash older than the volume's trash_days: soon after mounting, then every
    TRASH_EVERY seconds, by one client at a time (a lease). Apart from the other chores, so
    that a long purge never delays commits of idle writes."""
    import trio

    from ..meta.trash import purge_expired

    await trio.sleep(5.0)
    while True:
        try:
            meta = vfs.meta
            if meta.trash_days > 0 and await vfs.workers.meta(meta.try_lease, "trash", TRASH_EVERY):
                await vfs.workers.meta(purge_expired, meta, meta.trash_days)
        except Exception as exc:
            log.warning("emptying the trash failed: %s", exc)
        await trio.sleep(TRASH_EVERY)


async def _on_signal(mountpoint: str) -> None:
    """SIGTERM/SIGINT: unmount lazily; the session loop then ends and buffers are flushed."""
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting %s", signum, mountpoint)
            await trio.to_thread.run_sync(
                lambda: subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
            )


