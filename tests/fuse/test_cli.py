"""The CLI's promises: clear one-line errors, nothing written on failure, secrets hidden."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.fuse.helpers import CLI, Volume, format_volume, run_cli
from tests.servers import RedisServer, S3Server, free_port, start_redis


def assert_clean_failure(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


def db_keys(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return client.keys("*")
    finally:
        client.close()


def test_unreachable_redis(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/1"
    assert_clean_failure(run_cli("format", url, "vol1", "--bucket", str(tmp_path), check=False))
    assert_clean_failure(run_cli("mount", url, str(tmp_path), check=False))
    assert_clean_failure(run_cli("status", url, check=False))


def test_wrong_redis_password(tmp_path: Path) -> None:
    server: RedisServer = start_redis(password="right-password")
    try:
        bad = f"redis://:wrong-password@127.0.0.1:{server.port}/1"
        result = run_cli("format", bad, "vol1", "--bucket", str(tmp_path / "o"), check=False)
        assert_clean_failure(result)
        assert "wrong-password" not in result.stderr
        good = server.url(1)
        run_cli("format", good, "vol1", "--bucket", str(tmp_path / "o"))
        assert "vol1" in run_cli("status", good).stdout
    finally:
        server.stop()


def test_unformatted_volume(meta_url: str, tmp_path: Path) -> None:
    assert_clean_failure(run_cli("mount", meta_url, str(tmp_path), check=False), "format")
    assert_clean_failure(run_cli("status", meta_url, check=False), "format")


def test_wrong_s3_credentials_and_missing_bucket(meta_url: str, s3_server: S3Server, bucket_url: str) -> None:
    env = {"ACCESS_KEY": s3_server.access_key, "SECRET_KEY": "not-the-secret"}
    result = run_cli("format", meta_url, "vol1", "--storage", "s3", "--bucket", bucket_url, env=env, check=False)
    assert_clean_failure(result)
    assert "not-the-secret" not in result.stderr
    assert db_keys(meta_url) == []
    env = {"ACCESS_KEY": s3_server.access_key, "SECRET_KEY": s3_server.secret_key}
    missing = s3_server.bucket_url("no-such-bucket")
    result = run_cli("format", meta_url, "vol1", "--storage", "s3", "--bucket", missing, env=env, check=False)
    assert_clean_failure(result, "no-such-bucket")
    assert db_keys(meta_url) == []


def test_refuses_to_overwrite_without_force(volume: Volume, tmp_path: Path) -> None:
    result = run_cli("format", volume.meta_url, "testvol", "--bucket", str(tmp_path / "x"), check=False)
    assert_clean_failure(result, "--force")


def test_bad_mountpoints_and_flags(volume: Volume, tmp_path: Path) -> None:
    assert_clean_failure(run_cli("mount", volume.meta_url, str(tmp_path / "missing"), check=False), "does not exist")
    (tmp_path / "file").write_text("")
    assert_clean_failure(run_cli("mount", volume.meta_url, str(tmp_path / "file"), check=False), "not a directory")
    m = volume.mount()
    assert_clean_failure(run_cli("mount", volume.meta_url, str(m.path), check=False), "already mounted")
    assert_clean_failure(run_cli("mount", volume.meta_url, str(tmp_path), "--no-such-flag", check=False))
    assert_clean_failure(run_cli("format", volume.meta_url, "Bad_Name!", check=False), "name")
    assert_clean_failure(run_cli("format", volume.meta_url, "vol2", "--block-size", "huge", check=False), "size")
    assert_clean_failure(run_cli("umount", str(tmp_path), check=False), "not mounted")
    (m.path / "busy").write_bytes(b"x")
    with open(m.path / "busy", "rb"):
        assert_clean_failure(run_cli("umount", str(m.path), check=False), "busy")
    run_cli("umount", str(m.path))
    assert not os.path.ismount(m.path)
    assert_clean_failure(run_cli("mount", volume.meta_url, str(tmp_path / "m2"), "--subdir", "nope", check=False))


def test_status_masks_secrets_and_lists_sessions(meta_url: str, tmp_path: Path, s3_server: S3Server,
                                                 bucket_url: str) -> None:
    vol = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url)
    try:
        m = vol.mount()
        out = run_cli("status", meta_url, "--json").stdout
        assert s3_server.secret_key not in out and s3_server.access_key not in out
        doc = json.loads(out)
        assert doc["setting"]["name"] == "testvol"
        assert doc["setting"]["secret_key"] == "****"
        assert [s["mountpoint"] for s in doc["sessions"]] == [str(m.path)]
        assert doc["sessions"][0]["pid"] == m.pid
        assert 0 <= doc["sessions"][0]["heartbeat_age_s"] < 30
        (m.path / "f").write_bytes(b"x" * 5000)
        usage = json.loads(run_cli("status", meta_url, "--json").stdout)["usage"]
        assert usage["used_bytes"] >= 5000 and usage["used_inodes"] == 1

        # For people: a report with the settings, usage and a table of sessions.
        text = run_cli("status", meta_url).stdout
        assert s3_server.secret_key not in text and s3_server.access_key not in text
        assert not text.lstrip().startswith("{")
        lines = text.splitlines()
        assert any(line.split() == ["uuid:", doc["setting"]["uuid"]] for line in lines), text
        assert any(line.startswith("used:") and "of unlimited" in line for line in lines), text
        header = next(line for line in lines if "MOUNT POINT" in line)
        assert header.split() == ["SID", "HOST", "MOUNT", "POINT", "PID", "VERSION", "STARTED", "LAST", "HEARTBEAT"]
        (row,) = [line for line in lines if str(m.path) in line]
        assert f" {m.pid} " in row and socket.gethostname() in row and " 0.1.0 " in row
        assert re.search(r"\d+ s ago$", row), row
        m.umount()
        assert json.loads(run_cli("status", meta_url, "--json").stdout)["sessions"] == []
        assert "sessions: none" in run_cli("status", meta_url).stdout
    finally:
        vol.cleanup()


def test_secrets_not_visible_in_ps(meta_url: str, tmp_path: Path, s3_server: S3Server, bucket_url: str) -> None:
    """Even when given as flags, the secret key is masked in the process's command line
    (after interpreter start-up), and a mount never carries the Redis password in argv."""
    proc = subprocess.Popen(
        [*CLI, "format", meta_url, "vol1", "--storage", "s3", "--bucket", bucket_url,
         "--access-key", s3_server.access_key, "--secret-key", s3_server.secret_key],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    seen = []
    while proc.poll() is None:
        try:
            seen.append(Path(f"/proc/{proc.pid}/cmdline").read_bytes())
        except OSError:
            break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert s3_server.secret_key not in out + err
    secret = s3_server.secret_key.encode()
    masked = [i for i, s in enumerate(seen) if b"fusecache" in s and secret not in s]
    assert masked, "the command line was never masked"
    assert all(secret not in s for s in seen[masked[0]:]), "the secret reappeared"

    server = start_redis(password="pw-in-url")
    try:
        url = server.url(1)
        run_cli("format", url, "vol2", "--bucket", str(tmp_path / "objects"))
        vol = Volume(url, tmp_path)
        try:
            m = vol.mount()
            cmdline = Path(f"/proc/{m.pid}/cmdline").read_bytes()
            assert b"pw-in-url" not in cmdline and b"mount" in cmdline
            status = run_cli("status", url).stdout
            assert "pw-in-url" not in status
        finally:
            vol.cleanup()
    finally:
        server.stop()


def test_info_shows_slices_and_objects(mnt: Path) -> None:
    (mnt / "f").write_bytes(os.urandom(5 << 20))
    result = run_cli("info", str(mnt / "f"), "--json")
    doc = json.loads(result.stdout)
    assert doc["size"] == 5 << 20
    assert doc["inode"] == os.stat(mnt / "f").st_ino
    (chunk,) = doc["chunks"]
    objects = [o for s in chunk["slices"] for o in s["objects"]]
    assert len(objects) == 2 and objects[0].endswith("_0_4194304")
    text = run_cli("info", str(mnt / "f")).stdout
    assert "slice" in text and "inode" in text
    assert_clean_failure(run_cli("info", "/tmp", check=False), "not inside a fusecache mount")


@pytest.mark.parametrize("cmd, words", [
    (["format"], ["format:", "META_URL"]),
    (["mount", "redis://x"], ["mount:", "MOUNTPOINT"]),
    (["bogus"], ["unknown command 'bogus'", "destroy"]),
    ([], ["no command", "mount"]),
    (["destroy", "redis://x"], ["destroy:", "UUID"]),
    (["mount", "redis://x", "/mnt", "--no-such-flag"], ["mount:", "--no-such-flag"]),
])
def test_usage_errors(cmd: list[str], words: list[str]) -> None:
    result = subprocess.run([*CLI, *cmd], capture_output=True, text=True)
    assert_clean_failure(result, *words)
    assert result.returncode == 2
    assert result.stderr.count("fusecache:") == 1, result.stderr  # the program is named once


def test_help_texts_speak_to_users(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command's --help: no constant, module, function or source file names."""
    from fusecache.cli.main import COMMANDS, build_parser

    monkeypatch.setenv("COLUMNS", "100")
    user_words = {"META_URL", "ACCESS_KEY", "SECRET_KEY", "META_PASSWORD", "allow_other", "DEST_DIR",
                  "SOURCE_ACCESS_KEY", "SOURCE_SECRET_KEY"}
    for command in ("", *COMMANDS):
        with pytest.raises(SystemExit):
            build_parser(command or None).parse_args([command, "--help"] if command else ["--help"])
        text = capsys.readouterr().out
        assert "usage: fusecache" in text
        words = set(re.findall(r"[A-Za-z0-9]+(?:_[A-Za-z0-9]+)+", text)) - user_words
        assert not words, f"{command} --help shows internal names: {sorted(words)}"
        for internal in (".py", "`", "vfs", "DEFAULT", "xattr", "Fluid"):
            assert internal not in text, f"{command} --help shows {internal!r}"


def test_cache_watermark_errors_name_the_flag(tmp_path: Path) -> None:
    for flags, words in ((["--cache-low", "0.99"], ["--cache-low 0.99", "--cache-high 0.95"]),
                         (["--cache-high", "1.5"], ["--cache-high 1.5"]),
                         (["--cache-low", "0"], ["--cache-low 0"]),
                         (["--cache-low", "nan"], ["--cache-low nan"]),
                         (["--cache-free-ratio", "1"], ["--cache-free-ratio 1"])):
        result = run_cli("mount", "redis://127.0.0.1:1/1", str(tmp_path), *flags, check=False)
        assert_clean_failure(result, *words)
        assert "mem:256" not in result.stderr and "spec" not in result.stderr  # the user gave no spec
        assert result.returncode == 2


def test_a_mem_tier_larger_than_ram_is_refused_with_the_numbers(tmp_path: Path) -> None:
    from fusecache.sysmem import memory_limit
    from fusecache.units import format_size

    limit = memory_limit()
    assert limit is not None
    result = run_cli("mount", "redis://127.0.0.1:1/1", str(tmp_path), "--cache", "mem:100TiB",
                     "--memory-budget", "400TiB", check=False)
    assert_clean_failure(result, "100.0TiB", format_size(limit.bytes), "smaller")
    assert result.returncode == 2


def test_a_dead_s3_endpoint_fails_format_and_mount_fast(meta_url: str, tmp_path: Path, s3_server: S3Server,
                                                        bucket_url: str) -> None:
    """A closed port: one line naming the endpoint and why, well before the data path's
    retries (about 25 s) would give up. The bound is generous; speed is for benchmarks."""
    dead = f"http://127.0.0.1:{free_port()}/bucket"
    env = {"ACCESS_KEY": s3_server.access_key, "SECRET_KEY": s3_server.secret_key}
    started = time.monotonic()
    result = run_cli("format", meta_url, "vol1", "--storage", "s3", "--bucket", dead, env=env, check=False)
    assert time.monotonic() - started < 15
    assert_clean_failure(result, "cannot reach S3 endpoint", dead.rsplit("/", 1)[0], "connection refused")
    assert db_keys(meta_url) == []

    vol = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url)
    client = redis.Redis.from_url(meta_url)
    try:
        doc = json.loads(client.get("{fc}setting"))
        client.set("{fc}setting", json.dumps({**doc, "bucket": dead}))
    finally:
        client.close()
    mp = tmp_path / "mp"
    mp.mkdir()
    for extra in ([], ["--read-only"]):
        started = time.monotonic()
        result = run_cli("mount", meta_url, str(mp), "-d", "--log", str(tmp_path / "m.log"), *extra,
                         env=vol.env, check=False)
        assert time.monotonic() - started < 15
        assert_clean_failure(result, "cannot reach S3 endpoint", "connection refused")
    assert not os.path.ismount(mp)


def test_mount_needs_only_the_meta_url_and_env_overrides_credentials(
    meta_url: str, tmp_path: Path, s3_server: S3Server, bucket_url: str
) -> None:
    vol = format_volume(meta_url, tmp_path, "s3", s3_server, bucket_url)
    vol.env = {}  # mount with no credentials in the environment: the stored ones serve
    try:
        m = vol.mount()
        (m.path / "f").write_bytes(b"stored credentials work")
        m.umount()
        result = run_cli("mount", meta_url, str(m.path), "-d", env={"SECRET_KEY": "an-override"}, check=False)
        assert_clean_failure(result, "access denied")
        assert "an-override" not in result.stderr
    finally:
        vol.cleanup()


def test_format_force_replaces_settings_and_keeps_data(volume: Volume, tmp_path: Path) -> None:
    m = volume.mount()
    (m.path / "kept").write_bytes(b"data survives --force")
    m.umount()
    env = volume.env
    bucket = volume.bucket
    run_cli("format", volume.meta_url, "testvol", "--storage", volume.storage, "--bucket", bucket,
            "--capacity", "1G", "--force", env=env)
    doc = json.loads(run_cli("status", volume.meta_url, "--json").stdout)
    assert doc["setting"]["capacity"] == 1 << 30
    m2 = volume.mount()
    assert (m2.path / "kept").read_bytes() == b"data survives --force"
    assert os.statvfs(m2.path).f_blocks * os.statvfs(m2.path).f_frsize == 1 << 30


def test_lazy_umount_detaches_while_a_file_is_open(volume: Volume) -> None:
    m = volume.mount()
    (m.path / "f").write_bytes(b"still readable")
    with open(m.path / "f", "rb") as f:
        run_cli("umount", str(m.path), "--lazy")
        assert not os.path.ismount(m.path)
        assert f.read() == b"still readable"
    deadline = time.monotonic() + 15
    while Path(f"/proc/{m.pid}").exists():  # the client ends by itself once the file is closed
        assert time.monotonic() < deadline, "client still running after its lazy unmount completed"
        time.sleep(0.1)


def test_console_script_installed() -> None:
    exe = Path(sys.executable).parent / "fusecache"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "format" in result.stdout and "mount" in result.stdout


def test_mount_d_from_a_directory_holding_a_fusecache_folder(volume: Volume, tmp_path: Path) -> None:
    """$HOME after quickstart holds a `fusecache/` checkout; the detached client must still
    import the installed package."""
    home = tmp_path / "home"
    (home / "fusecache").mkdir(parents=True)
    (home / "fusecache" / "__init__.py").write_text("raise ImportError('the wrong fusecache')\n")
    mp = tmp_path / "mp"
    mp.mkdir()
    exe = Path(sys.executable).parent / "fusecache"
    result = subprocess.run([str(exe), "mount", volume.meta_url, str(mp), "-d", "--log", "mount.log"],
                            cwd=home, capture_output=True, text=True, env={**os.environ, **volume.env}, timeout=60)
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split("pid ")[1].split(",")[0])
    from tests.fuse.helpers import Mount

    volume.mounts.append(Mount(mp, pid, home / "mount.log"))
    (mp / "f").write_bytes(b"ok")
    assert (mp / "f").read_bytes() == b"ok"
    assert (home / "mount.log").exists(), "a relative --log is taken from the caller's directory"


def _run_main_with(body: str, *pipe: str) -> subprocess.CompletedProcess[str]:
    """Run fusecache's main() with the `status` command replaced by `body`."""
    code = ("import sys\nimport fusecache.cli.status as s\n"
            f"def run(args):\n{body}\n"
            "s.run = run\nfrom fusecache.cli.main import main\nsys.exit(main(['status', 'redis://x']))\n")
    cmd = f"{sys.executable} -c {__import__('shlex').quote(code)}"
    if pipe:
        cmd += " | " + " ".join(pipe)
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=60)


def test_an_unexpected_error_is_one_line_without_traceback() -> None:
    result = _run_main_with("    raise RuntimeError('boom')")
    assert_clean_failure(result, "unexpected error", "boom")
    verbose = subprocess.run(
        [sys.executable, "-c", "import sys\nimport fusecache.cli.status as s\n"
         "def run(args):\n    raise RuntimeError('boom')\n"
         "s.run = run\nfrom fusecache.cli.main import main\nsys.exit(main(['-v', 'status', 'redis://x']))\n"],
        capture_output=True, text=True, timeout=60)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr, "-v keeps the traceback"


def test_output_piped_into_head_ends_quietly() -> None:
    result = _run_main_with("    for i in range(200000):\n        print('line', i)", "head", "-1")
    assert result.stdout == "line 0\n"
    assert result.stderr == "", result.stderr


def test_a_redis_that_may_evict_keys_is_refused_by_format_and_warned_about_by_mount(
        meta_url: str, tmp_path: Path, redis_server: RedisServer) -> None:
    admin = redis.Redis(port=redis_server.port)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        objects = str(tmp_path / "objects")
        refused = run_cli("format", meta_url, "evictvol", "--bucket", objects, check=False)
        assert_clean_failure(refused, "maxmemory-policy", "allkeys-lru", "noeviction", "--force")
        assert db_keys(meta_url) == []
        forced = run_cli("format", meta_url, "evictvol", "--bucket", objects, "--force")
        assert "warning" in forced.stderr and "allkeys-lru" in forced.stderr
        mp = tmp_path / "mp"
        mp.mkdir()
        mounted = run_cli("mount", meta_url, str(mp), "-d", "--log", str(tmp_path / "m.log"))
        try:
            assert "warning" in mounted.stderr and "maxmemory-policy" in mounted.stderr
            assert "mounted" in mounted.stdout
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
            pid = int(mounted.stdout.split("pid ")[1].split(",")[0])
            from tests.fuse.helpers import wait_pid

            wait_pid(pid)
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()


def test_bucket_url_means_s3(meta_url: str, s3_server: S3Server, bucket_url: str, tmp_path: Path) -> None:
    """A --bucket URL without --storage goes to S3, never to a local `./http:/...` directory;
    --storage file with a URL is refused before anything is written."""
    env = {"ACCESS_KEY": s3_server.access_key, "SECRET_KEY": s3_server.secret_key}
    result = run_cli("format", meta_url, "vol1", "--storage", "file", "--bucket", bucket_url,
                     env=env, check=False, cwd=str(tmp_path))
    assert_clean_failure(result, "--storage file", "url")
    assert db_keys(meta_url) == []
    run_cli("format", meta_url, "vol1", "--bucket", bucket_url, env=env, cwd=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    status = json.loads(run_cli("status", meta_url, "--json").stdout)
    assert status["setting"]["storage"] == "s3"
