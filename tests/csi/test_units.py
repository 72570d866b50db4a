"""Pure logic of the driver: ids, settings, capacity rules, tokens, mountinfo, redaction."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from csi_driver import fsref, logs, settings
from csi_driver._proto import csi_pb2 as pb
from csi_driver.capabilities import capability_problem, check_capability
from csi_driver.controller import SNAPSHOT_TOKEN_PREFIX, capacity_fits, decode_token, encode_token, requested_capacity
from csi_driver.errors import CsiError
from csi_driver.mounts import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, mount_flags
from csi_driver.state import NodeState, PublishRecord, VolumeRecord
from csi_driver.volume_id import dir_name, fs_tag, make_id, make_snapshot_id, parse_id, parse_snapshot_id
from fusecache.cli.main import build_parser
from fusecache.mountinfo import parse_line
from tests.csi.harness import capability, mount_has_cache_flags

Mode = pb.VolumeCapability.AccessMode


# -- volume ids ----------------------------------------------------------------------------
def test_plain_names_are_their_own_directory() -> None:
    assert dir_name("pvc-0f1e2d3c-aaaa-bbbb-cccc-0123456789ab") == "pvc-0f1e2d3c-aaaa-bbbb-cccc-0123456789ab"


@pytest.mark.parametrize("name", ["x" * 128, "a/b", "..", ".hidden", "ümlaut", "with space", "-lead"])
def test_other_names_map_to_distinct_safe_directories(name: str) -> None:
    d = dir_name(name)
    assert d == dir_name(name)  # deterministic: CreateVolume stays idempotent
    assert len(d) <= 63 and "/" not in d and not d.startswith((".", "-"))
    assert d != dir_name(name + "x")


def test_volume_id_round_trip_and_limits() -> None:
    vid = make_id("0b9c30e8-b297-4cba-8622-c3eb549226d3", "z" * 128)
    assert len(str(vid)) <= 128
    assert parse_id(str(vid)) == vid
    assert vid.fs == "0b9c30e8b2974cba8622c3eb549226d3"
    for other in ("fake-vol-id", "fc1:nothex:pvc", "fc1:" + "a" * 32 + ":../x", ""):
        assert parse_id(other) is None
    assert len(fs_tag("not-a-uuid")) == 32


# -- capacity ------------------------------------------------------------------------------
def _range(required: int = 0, limit: int = 0) -> pb.CapacityRange:
    return pb.CapacityRange(required_bytes=required, limit_bytes=limit)


def test_requested_capacity_rules() -> None:
    assert requested_capacity(_range()) == 0
    assert requested_capacity(_range(required=5)) == 5
    assert requested_capacity(_range(limit=7)) == 7
    assert requested_capacity(_range(5, 7)) == 5
    with pytest.raises(CsiError) as info:
        requested_capacity(_range(8, 7))
    assert info.value.code == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(CsiError) as info:
        requested_capacity(_range(-1))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_capacity_fits() -> None:
    assert capacity_fits(10, _range(10, 10))
    assert capacity_fits(10, _range(5))
    assert not capacity_fits(10, _range(20, 20))
    assert not capacity_fits(10, _range(0, 5))
    assert capacity_fits(0, _range())
    assert not capacity_fits(0, _range(1))


def test_list_tokens() -> None:
    assert decode_token(encode_token("pvc-9")) == "pvc-9"
    for bad in ("invalid-token", "", "dj0", "%%%"):
        with pytest.raises(CsiError) as info:
            decode_token(bad)
        assert info.value.code == grpc.StatusCode.ABORTED


def test_snapshot_list_tokens_are_their_own() -> None:
    token = encode_token("snap-3", SNAPSHOT_TOKEN_PREFIX)
    assert decode_token(token, SNAPSHOT_TOKEN_PREFIX) == "snap-3"
    for foreign in (encode_token("snap-3"), "invalid-token"):  # a ListVolumes token is not one
        with pytest.raises(CsiError) as info:
            decode_token(foreign, SNAPSHOT_TOKEN_PREFIX)
        assert info.value.code == grpc.StatusCode.ABORTED


def test_snapshot_ids() -> None:
    uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    snapshot_id = make_snapshot_id(uuid, "snapshot-1")
    assert str(snapshot_id) == "fc1s:0f1e2d3c4b5a69788796a5b4c3d2e1f0:snapshot-1"
    assert parse_snapshot_id(str(snapshot_id)) == snapshot_id
    long_name = "s" * 128
    assert len(str(make_snapshot_id(uuid, long_name))) <= 128
    assert parse_snapshot_id(str(make_snapshot_id(uuid, long_name))) == make_snapshot_id(uuid, long_name)
    # Volume and snapshot ids never pass for one another; nothing can name the snapshot area.
    volume_id = str(make_id(uuid, "snapshot-1"))
    assert parse_snapshot_id(volume_id) is None and parse_id(str(snapshot_id)) is None
    for bad in ("reallyfakesnapshotid", "fc1s:short:x", f"fc1s:{'0' * 32}:.csi-snapshots", f"fc1s:{'0' * 32}:"):
        assert parse_snapshot_id(bad) is None


# -- capabilities --------------------------------------------------------------------------
def test_capabilities() -> None:
    assert capability_problem(capability()) == ""
    assert capability_problem(capability(Mode.MULTI_NODE_MULTI_WRITER, ("noexec", "ro"))) == ""
    assert "block" in capability_problem(capability(block=True))
    assert capability_problem(capability(Mode.SINGLE_NODE_SINGLE_WRITER)) == ""
    assert capability_problem(capability(Mode.SINGLE_NODE_MULTI_WRITER)) == ""
    assert "not supported" in capability_problem(capability(99))
    assert capability_problem(capability(Mode.UNKNOWN))
    assert "fs_type" in capability_problem(capability(fs_type="ext4"))
    assert "fuseOptions" in capability_problem(capability(flags=("allow_root",)))
    assert check_capability(capability(Mode.MULTI_NODE_READER_ONLY)).readonly
    assert check_capability(capability(flags=("ro",))).readonly
    assert not check_capability(capability()).readonly


def test_bind_flags() -> None:
    assert mount_flags(False, ()) == MS_NOSUID | MS_NODEV
    assert mount_flags(True, ("noexec",)) == MS_NOSUID | MS_NODEV | MS_RDONLY | MS_NOEXEC
    assert mount_flags(False, ("suid", "dev")) == 0


# -- settings ------------------------------------------------------------------------------
def test_mount_settings_round_trip_through_volume_context() -> None:
    params = {"cache": "mem:1GiB; ssd:/var/cache/a,/var/cache/b:10GiB", "cacheLow": "0.6", "cacheHigh": "0.9",
              "cacheFreeRatio": "0.2", "readahead": "8", "writeback": "true", "attrTimeout": "2", "entryTimeout": "3",
              "fuseOptions": "max_read=131072"}
    parsed = settings.parse(params)
    assert settings.parse(parsed.context()) == parsed
    args = parsed.mount_args()
    assert args[args.index("-o") + 1] == "allow_other,max_read=131072"
    assert args[:4] == ["--cache", "mem:1GiB", "--cache", "ssd:/var/cache/a,/var/cache/b:10GiB"]
    assert "--writeback" in args
    for flag, value in (("--cache-low", "0.6"), ("--cache-high", "0.9"), ("--cache-free-ratio", "0.2"),
                        ("--readahead", "8")):
        assert args[args.index(flag) + 1] == value
    # A client's own directories below the ssd ones; everything else is the same.
    own = parsed.mount_args(cache_subdir="0123abcd")
    assert own[:4] == ["--cache", "mem:1GiB", "--cache", "ssd:/var/cache/a/0123abcd,/var/cache/b/0123abcd:10GiB"]
    assert own[4:] == args[4:]
    assert settings.client_cache_tier("ssd:/x:y/z:1G", "k") == "ssd:/x:y/z/k:1G"  # ':' in a directory


@pytest.mark.parametrize("params", [
    {"cache": "disk:1G"}, {"cache": "ssd:relative/dir:1G"}, {"cache": "mem:lots"},
    {"cacheLow": "1.5"}, {"readahead": "-1"}, {"writeback": "maybe"},
    {"fuseOptions": "allow_other"}, {"fuseOptions": "a;rm -rf /"}, {"cacheLow": "0.9", "cacheHigh": "0.5"},
    # the cache's own rules: 0 < low < high <= 1 (defaults 0.7/0.95 fill in), free ratio in [0, 1)
    {"cacheLow": "0.8", "cacheHigh": "0.8"}, {"cacheLow": "0.97"}, {"cacheHigh": "0.5"}, {"cacheLow": "0"},
    {"cache": "mem:1G", "cacheFreeRatio": "1"}, {"cacheFreeRatio": "x"}, {"cache": "mem:/x:1G"},
    {"cache": "mem:1G;mem:2G"}, {"writeback": "true"}, {"cache": "mem:1G", "writeback": "true"},
])
def test_bad_mount_settings_are_invalid_argument(params: dict[str, str]) -> None:
    with pytest.raises(CsiError) as info:
        settings.parse(params)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_parameters_reject_unknown_keys_but_allow_kubernetes_ones() -> None:
    settings.check_parameters({"csi.storage.k8s.io/pvc/name": "x", "storage": "file", "readahead": "2"})
    with pytest.raises(CsiError):
        settings.check_parameters({"cachesize": "1G"})


def test_client_key_depends_on_filesystem_and_settings_only() -> None:
    a = settings.client_key("redis://h/1", settings.parse({"readahead": "2"}))
    assert a == settings.client_key("redis://h/1", settings.parse({"readahead": "2", "subdir": "/x"}))
    assert a != settings.client_key("redis://h/2", settings.parse({"readahead": "2"}))
    assert a != settings.client_key("redis://h/1", settings.parse({"readahead": "3"}))


def test_subdir_normalisation() -> None:
    assert settings.subdir_of({}) == "/"
    assert settings.subdir_of({"subdir": "a/b/"}) == "/a/b"
    assert settings.subdir_of({"subdir": "/../../etc"}) == "/etc"  # cannot climb out of the fs


# -- filesystem references -----------------------------------------------------------------
def test_password_leaves_the_url() -> None:
    fs = fsref.resolve({"metaurl": "redis://user:p%40ss@redis:6379/2", "access-key": "AK", "secret-key": "SK"})
    assert fs.meta_url == "redis://user@redis:6379/2"
    assert fs.password == "p@ss"
    assert fs.env() == {"META_PASSWORD": "p@ss", "ACCESS_KEY": "AK", "SECRET_KEY": "SK"}
    assert fs.url_with_password() == "redis://user:p%40ss@redis:6379/2"
    assert "p@ss" not in repr(fs)


def test_filesystem_resolution_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fsref.ENV_META_URL, raising=False)
    with pytest.raises(CsiError) as info:
        fsref.resolve({})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(CsiError):
        fsref.resolve({"metaurl": "redis://h/1", "storage": "s3"})  # format needs bucket and name too
    fs = fsref.resolve({}, {"storage": "file", "bucket": "/data", "name": "vol", "fs-capacity": "1G"},
                       default_url="redis://h/1")
    assert fs.format is not None
    assert fs.format.args() == ["vol", "--storage", "file", "--bucket", "/data", "--capacity", "1G"]


def test_default_filesystem_password_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("META_PASSWORD", "from-env")
    assert fsref.resolve({}, default_url="redis://h/1").password == "from-env"
    assert fsref.resolve({"metaurl": "redis://h/1"}).password == ""  # secrets never borrow it


# -- mountinfo -----------------------------------------------------------------------------
def test_mountinfo_line() -> None:
    line = ("631 29 0:77 /pvc-1 /var/lib/kubelet/pods/x/volumes/my\\040vol rw,nosuid,nodev,relatime shared:1 "
            "- fuse.fusecache fusecache:vol rw,user_id=0,group_id=0,allow_other\n")
    mount = parse_line(line)
    assert mount is not None
    assert (mount.dev, mount.root, mount.fstype) == ("0:77", "/pvc-1", "fuse.fusecache")
    assert mount.mountpoint == "/var/lib/kubelet/pods/x/volumes/my vol"
    assert mount.is_fusecache and not mount.readonly


# -- logs ----------------------------------------------------------------------------------
def test_log_records_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    logs.remember_secret("s3cr3t-value")
    logger = logging.getLogger("csi_driver.test")
    handler = logging.Handler()
    handler.addFilter(logs.RedactingFilter())
    seen: list[str] = []
    handler.emit = lambda record: seen.append(logs.JsonFormatter().format(record))  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.warning("connect %s failed: %s", "redis://u:pw123@h:1/0", "token s3cr3t-value rejected",
                       extra={"fields": {"url": "rediss://:pw456@h/2"}})
    finally:
        logger.removeHandler(handler)
    assert len(seen) == 1
    assert "pw123" not in seen[0] and "s3cr3t-value" not in seen[0] and "pw456" not in seen[0]
    assert "redis://u:****@h:1/0" in seen[0]


# -- node records --------------------------------------------------------------------------
def test_publish_records_compare_the_spec_arguments(tmp_path: Path) -> None:
    """A second publish at the same target must ask for the same readonly flag, mount flags and
    access mode; records written before the access mode was kept (mode 0) match any mode."""
    rw = PublishRecord(False, ["noatime"], created=True, mode=Mode.MULTI_NODE_MULTI_WRITER)
    assert rw.same_request(PublishRecord(False, ["noatime"], created=False, mode=Mode.MULTI_NODE_MULTI_WRITER))
    assert not rw.same_request(replace(rw, readonly=True))
    assert not rw.same_request(replace(rw, flags=["noatime", "noexec"]))
    assert not rw.same_request(replace(rw, mode=Mode.SINGLE_NODE_WRITER))
    state = NodeState(tmp_path)
    state.save_volume(VolumeRecord("vol-1", "key", "/", "/staging", False, [], publishes={"/t": rw}))
    path = next((tmp_path / "volumes").glob("*.json"))
    older = json.loads(path.read_text())
    del older["publishes"]["/t"]["mode"]
    path.write_text(json.dumps(older))
    loaded = NodeState(tmp_path).volume("vol-1")
    assert loaded is not None and loaded.publishes["/t"].mode == 0
    assert loaded.publishes["/t"].same_request(replace(rw, mode=Mode.SINGLE_NODE_WRITER))


# -- the driver's mount settings against the real `fusecache mount` parser --------------------
def _parse_mount(extra: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["mount", "redis://127.0.0.1:6379/1", "/mnt/x", *extra])


def test_mount_args_without_cache_are_accepted_by_fusecache_mount() -> None:
    parsed = settings.parse({"readahead": "8", "attrTimeout": "2", "entryTimeout": "3",
                             "coherentTimeout": "0", "fuseOptions": "max_read=131072"})
    args = _parse_mount(parsed.mount_args())
    assert (args.readahead, args.attr_timeout, args.entry_timeout, args.coherent_timeout) == (8, 2.0, 3.0, 0.0)
    assert settings.parse(parsed.context()) == parsed
    with pytest.raises(Exception, match="coherentTimeout"):
        settings.parse({"coherentTimeout": "-1"})


@pytest.mark.skipif(not mount_has_cache_flags(), reason="`fusecache mount` has no tiered cache flags (--cache) yet")
def test_every_cache_setting_maps_to_a_fusecache_mount_flag() -> None:
    parsed = settings.parse({"cache": "mem:1GiB;ssd:/var/cache/a,/var/cache/b:10GiB", "cacheLow": "0.6",
                             "cacheHigh": "0.9", "cacheFreeRatio": "0.2", "readahead": "8", "writeback": "true"})
    _parse_mount(parsed.mount_args())  # a flag it does not know fails with CliError
    options = {o for action in _mount_parser()._actions for o in action.option_strings}
    emitted = {a for a in parsed.mount_args() if a.startswith("--")}
    assert emitted <= options
    assert {"--cache", "--cache-low", "--cache-high", "--cache-free-ratio", "--writeback", "--readahead"} <= emitted


def _mount_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["mount"]
