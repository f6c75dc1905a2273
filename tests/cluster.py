"""A real Redis Cluster on loopback for the tests and benchmarks: 3 primaries with 1 replica each.

Needs only ``redis-server`` and ``redis-cli`` on PATH. Each node runs in its own temp directory with no
persistence; ``kill(node)`` SIGKILLs one, ``wait_ok`` waits until every live node says ``cluster_state:ok``.
"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time

from fuserank.redis_client import Target, connect

NODE_TIMEOUT_MS = 1000
BUS_OFFSET = 10000     # Redis Cluster's bus port is the client port + 10000


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_ports(n: int) -> list[int]:
    """``n`` ports whose cluster bus ports (+10000) are free too."""
    ports = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + BUS_OFFSET < 65536 and port not in ports and _free(port + BUS_OFFSET):
            ports.append(port)
    return ports


class LocalCluster:
    """``primaries`` primaries with ``replicas`` replicas each on 127.0.0.1; a context manager."""

    def __init__(self, primaries: int = 3, replicas: int = 1, ports: list[int] | None = None,
                 timeout: float = 30.0):
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"a Redis Cluster for the tests needs {tool} on PATH")
        n = primaries * (1 + replicas)
        self.ports = ports or free_cluster_ports(n)
        self.dir = tempfile.mkdtemp(prefix="fuserank-cluster-")
        self.procs: dict[int, subprocess.Popen] = {}
        try:
            for port in self.ports:
                self.procs[port] = subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                     "--appendonly", "no", "--save", "", "--maxmemory-policy", "noeviction"],
                    cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            for port in self.ports:
                self._wait_ping(port, timeout)
            subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                            "--cluster-replicas", str(replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=timeout)
            self.wait_ok(timeout)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def target(self) -> Target:
        return Target(self.url, cluster=True)

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def _info(self, port: int, what: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(port), *what.split()], capture_output=True, text=True, timeout=5)
        return out.stdout

    def _wait_ping(self, port: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while "PONG" not in self._info(port, "ping"):
            if time.time() > deadline or self.procs[port].poll() is not None:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)

    def wait_ok(self, timeout: float = 30.0) -> float:
        """Seconds until every live node reports ``cluster_state:ok`` and knows every slot's owner."""
        t0 = time.time()
        while True:
            if all("cluster_state:ok" in self._info(p, "cluster info") for p in self.alive()):
                return time.time() - t0
            if time.time() - t0 > timeout:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def primaries(self) -> list[int]:
        """Ports of the live primaries, by CLUSTER NODES as the first live node sees it."""
        nodes = self._info(self.alive()[0], "cluster nodes").splitlines()
        return sorted(int(line.split()[1].split(":")[1].split("@")[0]) for line in nodes
                      if "master" in line.split()[2] and "fail" not in line.split()[2])

    def owner(self, key: str) -> int:
        """Port of the primary that serves ``key``."""
        client = connect(self.target)
        try:
            return client.get_node_from_key(key).port
        finally:
            client.close()

    def kill(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(10)

    def flush(self) -> None:
        client = connect(self.target)
        try:
            client.flushall(target_nodes=client.PRIMARIES)
        finally:
            client.close()

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
