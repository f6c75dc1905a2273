"""Redis stopped, slow or black-holed under the API: answers keep coming (live, degraded) within bounded time,
readiness holds, and stored lists are used again without a restart when Redis returns.

The load test runs the real `fuserank serve` (gunicorn, 2 workers x 4 threads) and a real redis-server that
is stopped and restarted (from its RDB snapshot) while client threads hammer the API; it prints its figures
(``FUSERANK_RELIABILITY_OUT=FILE`` also writes them as JSON; docs/reliability.md quotes them).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
import redis

from fuserank.api.breaker import REDIS_RETRY_S
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from fuserank.redis_server import LocalRedis, find_redis_server, free_port, wait_until_answers
from tests.factories import FakeClock, api_app, random_artifact

SETTINGS = HybridSettings(top_n=10, neighbours=5)


class RedisProcess:
    """A real redis-server on 127.0.0.1 that keeps its data across stop/start (RDB snapshot in its own dir)."""

    def __init__(self, *extra: str, port: int | None = None, client_url: str | None = None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="fuserank-redis-test-")
        self.extra = list(extra)
        self.client_url = client_url or f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        port_args = [] if "--tls-port" in self.extra else ["--port", str(self.port)]
        return [find_redis_server(), *port_args, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.dir, "--dbfilename", "dump.rdb", "--maxmemory-policy", "noeviction", *self.extra]

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_until_answers(self.proc, redis.Redis.from_url(self.client_url, socket_connect_timeout=0.2,
                                                           socket_timeout=0.5), timeout)

    def stop(self, save: bool = True) -> None:
        """SAVE (so a restart has the data), then SIGTERM."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if save:
            redis.Redis.from_url(self.client_url, socket_timeout=10).save()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def close(self) -> None:
        self.stop(save=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def debug_command_args() -> list[str]:
    """Redis >= 7 refuses DEBUG unless started with --enable-debug-command."""
    out = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True).stdout
    version = out.split("v=", 1)[1].split()[0] if "v=" in out else "0"
    return ["--enable-debug-command", "yes"] if int(version.split(".")[0]) >= 7 else []


def test_answers_survive_a_redis_outage_and_recover(tmp_path):
    model_dir = random_artifact(tmp_path / "m", n_users=30, n_anime=40)
    server = LocalRedis()
    port = server.port
    try:
        precompute(model_dir, server.url, SETTINGS)
        clock = FakeClock()
        client = api_app(model_dir, server.url, SETTINGS, clock=clock).test_client()
        assert client.get("/v1/users/100/recommendations?n=5").get_json()["source"] == "precomputed"
        stored = [i["anime_id"] for i in client.get("/v1/users/100/recommendations?n=5").get_json()["items"]]

        server.stop()
        down = client.get("/v1/users/100/recommendations?n=5")
        assert down.status_code == 200
        body = down.get_json()
        assert body["source"] == "live" and body["degraded"] is True
        assert [i["anime_id"] for i in body["items"]] == stored  # same model, same list
        assert client.get("/v1/users/999/recommendations").get_json()["source"] == "popular"
        similar = client.get("/v1/anime/1003/similar?n=3").get_json()
        assert similar["source"] == "live" and similar["degraded"] is True
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.get_json()["redis"] == "down"

        server = LocalRedis(port=port)
        precompute(model_dir, server.url, SETTINGS)
        clock.advance(REDIS_RETRY_S)    # past the back-off after the failure
        back = client.get("/v1/users/100/recommendations?n=5").get_json()
        assert back["source"] == "precomputed" and "degraded" not in back
    finally:
        server.stop()


def _timed(client, url, **kwargs):
    t0 = time.monotonic()
    r = client.post(url, **kwargs) if "json" in kwargs else client.get(url)
    return r, time.monotonic() - t0


def test_slow_redis_answers_within_bounds(tmp_path):
    """A Redis that stalls every client (DEBUG SLEEP on the real server): answers come live in < 2 s."""
    model_dir = random_artifact(tmp_path / "m", n_users=30, n_anime=40)
    server = RedisProcess(*debug_command_args())
    try:
        precompute(model_dir, server.url, SETTINGS)
        clock = FakeClock()
        client = api_app(model_dir, server.url, SETTINGS, clock=clock).test_client()
        assert client.get("/v1/users/100/recommendations").get_json()["source"] == "precomputed"
        sleeper = threading.Thread(target=lambda: redis.Redis.from_url(server.url).execute_command("DEBUG", "SLEEP",
                                                                                                   "3"))
        sleeper.start()
        time.sleep(0.2)
        timings = {}
        try:
            for url in ("/v1/users/101/recommendations", "/v1/users/102/recommendations?source=live",
                        "/v1/anime/1002/similar", "/v1/users/999/recommendations", "/readyz"):
                r, timings[url] = _timed(client, url)
                assert r.status_code == 200 and timings[url] < 2.0, (url, r.status_code, timings[url])
            r, timings["POST"] = _timed(client, "/v1/recommendations",
                                        json={"ratings": [{"anime_id": 1001, "rating": 9}]})
            assert r.status_code == 200 and timings["POST"] < 2.0   # the rate limiter fails open, locally bounded
            assert client.get("/v1/users/103/recommendations").get_json()["degraded"] is True
        finally:
            sleeper.join(10)
        print("\nanswers while redis sleeps 3 s (seconds):", {k: round(v, 3) for k, v in timings.items()})
        clock.advance(REDIS_RETRY_S)
        assert client.get("/v1/users/100/recommendations").get_json()["source"] == "precomputed"
    finally:
        server.close()


def test_black_holed_redis_never_hangs_a_worker(tmp_path):
    """A Redis address that accepts connections and never answers (a stalled proxy): bounded timeouts."""
    model_dir = random_artifact(tmp_path / "m", n_users=30, n_anime=40)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    accepted = []
    stop = threading.Event()

    def accept():
        hole.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(hole.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        t0, clock = time.monotonic(), FakeClock()
        app = api_app(model_dir, f"redis://127.0.0.1:{hole.getsockname()[1]}/0", SETTINGS, clock=clock)
        start_s = time.monotonic() - t0
        assert start_s < 5.0
        client = app.test_client()
        slowest = 0.0
        for _ in range(3):
            for url in ("/v1/users/100/recommendations", "/v1/anime/1002/similar", "/readyz"):
                r, seconds = _timed(client, url)
                assert r.status_code == 200 and seconds < 2.0, (url, seconds)
                slowest = max(slowest, seconds)
            clock.advance(REDIS_RETRY_S)
        print(f"\nblack-holed redis: create_app {start_s:.2f}s, slowest answer {slowest:.3f}s")
        body = client.get("/v1/users/100/recommendations").get_json()
        assert body["source"] == "live" and body["degraded"] is True
        r, seconds = _timed(client, "/v1/recommendations", json={"ratings": [{"anime_id": 1001, "rating": 9}]})
        assert r.status_code == 200 and seconds < 2.0
        assert accepted, "the API did try the address"
    finally:
        stop.set()
        thread.join(5)
        hole.close()
        for conn in accepted:
            conn.close()


# ------------------------------------------------------------------------------------------------
# Under load: real gunicorn, real redis-server stopped and restarted
# ------------------------------------------------------------------------------------------------
LOAD_SECONDS = 10.0
STOP_AT, RESTART_AT = 3.0, 6.0
CLIENT_THREADS = 4


def _request(base: str, path: str, body: bytes | None = None) -> tuple[int, dict | None]:
    req = urllib.request.Request(base + path, data=body, method="POST" if body else "GET",
                                 headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return e.code, None


def _serve(model_dir: str, redis_url: str, port: int, *extra: str) -> subprocess.Popen:
    """`fuserank serve` (gunicorn, 2 workers x 4 threads, no rate limit) once it is ready; ``extra``: more flags."""
    env = {**os.environ, "FUSERANK_RATE_LIMIT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "fuserank", "serve", "--model", model_dir, "--redis-url", redis_url,
                             "--port", str(port), "--workers", "2", "--threads", "4",
                             "--top-n", str(SETTINGS.top_n), "--neighbours", str(SETTINGS.neighbours), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        try:
            if _request(base, "/readyz")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("fuserank serve did not become ready")


@pytest.mark.slow
def test_gunicorn_under_load_survives_a_redis_restart(tmp_path):
    model_dir = random_artifact(tmp_path / "m", n_users=300, n_anime=200, seed=7)
    server = RedisProcess()
    proc = None
    try:
        precompute(model_dir, server.url, SETTINGS)
        port = free_port()
        proc = _serve(model_dir, server.url, port)
        base = f"http://127.0.0.1:{port}"
        records, lock, t0 = [], threading.Lock(), time.monotonic()
        post = json.dumps({"ratings": [{"anime_id": 1000 + a, "rating": 9} for a in range(5)], "n": 10}).encode()

        def client(k: int):
            i = k
            while time.monotonic() - t0 < LOAD_SECONDS:
                kind = ("known", "known", "known", "similar", "unknown", "post")[i % 6]
                path = {"known": f"/v1/users/{100 + (i * 7) % 300}/recommendations?n=10",
                        "similar": f"/v1/anime/{1000 + i % 200}/similar?n=5",
                        "unknown": f"/v1/users/{10_000 + i}/recommendations",
                        "post": "/v1/recommendations"}[kind]
                start = time.monotonic()
                try:
                    status, body = _request(base, path, post if kind == "post" else None)
                except OSError as exc:          # connection refused/reset, client timeout
                    status, body = type(exc).__name__, None
                with lock:
                    records.append((start - t0, time.monotonic() - start, kind, status, body))
                i += CLIENT_THREADS

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENT_THREADS)]
        for t in threads:
            t.start()
        time.sleep(STOP_AT)
        stopped_at = time.monotonic() - t0
        server.stop()              # SAVE, then SIGTERM: the restart comes back with the same lists
        time.sleep(RESTART_AT - STOP_AT)
        server.start()
        restarted_at = time.monotonic() - t0
        for t in threads:
            t.join(30)

        statuses = Counter(str(r[3])[0] + "xx" if isinstance(r[3], int) else r[3] for r in records)
        slow = [r for r in records if r[1] > 2.0]
        known = [r for r in records if r[2] == "known" and isinstance(r[4], dict)]
        degraded = [r for r in known if r[4].get("degraded")]
        resumed = [r for r in known if r[0] >= restarted_at and r[4]["source"] == "precomputed"]
        after = [r for r in known if r[0] >= restarted_at]
        first_resumed = min(r[0] + r[1] for r in resumed) if resumed else None
        last_live = max((r[0] + r[1] for r in after if r[4]["source"] != "precomputed"), default=restarted_at)
        figures = {
            "seconds": round(max(r[0] + r[1] for r in records), 2), "client_threads": CLIENT_THREADS,
            "requests": len(records), "by_status": dict(statuses),
            "over_2s": len(slow), "max_latency_s": round(max(r[1] for r in records), 3),
            "p99_latency_s": round(sorted(r[1] for r in records)[int(len(records) * 0.99) - 1], 3),
            "redis_stopped_at_s": round(stopped_at, 2), "redis_restarted_at_s": round(restarted_at, 2),
            "by_source": dict(Counter(r[4].get("source") for r in records if isinstance(r[4], dict))),
            "during_outage": sum(stopped_at <= r[0] < restarted_at for r in records),
            "degraded_answers": len(degraded),
            "first_degraded_after_stop_s": round(min(r[0] + r[1] for r in degraded) - stopped_at, 3)
            if degraded else None,
            "first_precomputed_after_restart_s": round(first_resumed - restarted_at, 3) if resumed else None,
            "last_live_after_restart_s": round(last_live - restarted_at, 3),
        }
        print("\nredis restart under load:", json.dumps(figures))
        if os.environ.get("FUSERANK_RELIABILITY_OUT"):
            with open(os.environ["FUSERANK_RELIABILITY_OUT"], "w") as fh:
                json.dump(figures, fh, indent=2)
        assert set(statuses) == {"2xx"}, figures        # no 500, no refused connection, no timeout
        assert not slow, figures
        assert degraded, "the outage was seen: known users answered live, degraded"
        assert resumed and first_resumed - restarted_at < 3.0, figures   # stored lists again, no restart
        assert last_live - restarted_at < 3.0, figures
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(20)
        server.close()
