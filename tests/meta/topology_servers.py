"""Real Redis topologies on local ports, for tests: a 3-master Cluster, a Sentinel-watched
master, and a TLS-only server.

Processes are started here and stopped by PID; each lives in its own temp directory.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.servers import free_port, stop_process, wait_port


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; both must stay < 65536."""
    for _ in range(200):
        port = random.randrange(20000, 50000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _spawn(args: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Cluster:
    ports: list[int]
    procs: list[subprocess.Popen[bytes]]
    workdir: Path

    def url(self, prefix: str) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+cluster://{hosts}?prefix={prefix}"

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_cluster(masters: int = 3, timeout: float = 30.0) -> Cluster:
    exe = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if not exe or not cli:
        raise RuntimeError("redis-server and redis-cli are needed for a cluster")
    workdir = Path(tempfile.mkdtemp(prefix="fc-cluster-"))
    ports: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    cluster = Cluster(ports, procs, workdir)
    try:
        for i in range(masters):
            port = _cluster_port()
            node_dir = workdir / str(i)
            node_dir.mkdir()
            procs.append(_spawn([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                                 "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
                                 "--cluster-config-file", "nodes.conf", "--protected-mode", "no"], node_dir))
            ports.append(port)
        for port, proc in zip(ports, procs, strict=True):
            wait_port(port, proc)
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
        deadline = time.monotonic() + timeout
        for port in ports:
            client = redis.Redis(port=port)
            while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("cluster did not reach state ok")
                time.sleep(0.1)
            client.close()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass
class SentinelSetup:
    master_port: int
    sentinel_port: int
    procs: list[subprocess.Popen[bytes]]
    workdir: Path
    password: str

    def url(self, db: int = 0, master: str = "fcmaster") -> str:
        return f"redis+sentinel://:{self.password}@127.0.0.1:{self.sentinel_port}/{db}?master={master}"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_sentinel(password: str = "s3ntinel-pw", timeout: float = 20.0) -> SentinelSetup:
    """One password-protected master and one sentinel watching it as "fcmaster"."""
    exe = shutil.which("redis-server")
    if not exe:
        raise RuntimeError("redis-server is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="fc-sentinel-"))
    master_port, sentinel_port = free_port(), free_port()
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\nprotected-mode no\ndir {workdir}\n"
        f"sentinel monitor fcmaster 127.0.0.1 {master_port} 1\n"
        f"sentinel auth-pass fcmaster {password}\n"
        "sentinel down-after-milliseconds fcmaster 5000\n"
    )
    procs: list[subprocess.Popen[bytes]] = []
    setup = SentinelSetup(master_port, sentinel_port, procs, workdir, password)
    try:
        procs.append(_spawn([exe, "--port", str(master_port), "--bind", "127.0.0.1", "--dir", str(workdir),
                             "--save", "", "--appendonly", "no", "--requirepass", password,
                             "--protected-mode", "no"], workdir))
        wait_port(master_port, procs[0])
        procs.append(_spawn([exe, str(conf), "--sentinel"], workdir))
        wait_port(sentinel_port, procs[1])
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=sentinel_port)
        while True:
            try:
                client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "fcmaster")
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client.close()
    except BaseException:
        setup.stop()
        raise
    return setup


@dataclass
class TlsRedis:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def ca_file(self) -> Path:
        return self.workdir / "cert.pem"

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_tls_redis() -> TlsRedis:
    """A redis-server speaking only TLS, with a fresh self-signed certificate for 127.0.0.1."""
    exe = shutil.which("redis-server")
    openssl = shutil.which("openssl")
    if not exe or not openssl:
        raise RuntimeError("redis-server and openssl are needed for a TLS server")
    workdir = Path(tempfile.mkdtemp(prefix="fc-tls-"))
    try:
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", "key.pem", "-out", "cert.pem", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = free_port()
        proc = _spawn([exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                       "--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem",
                       "--tls-ca-cert-file", "cert.pem", "--tls-auth-clients", "no",
                       "--dir", str(workdir), "--save", "", "--appendonly", "no"], workdir)
        wait_port(port, proc)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return TlsRedis(port, proc, workdir)
