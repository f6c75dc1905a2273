"""Slow clients against the real `fuserank serve`: connections that send part of their headers and then
nothing, while probes ask /healthz. A bounded load test on loopback; figures printed (run with -s)."""
import http.client
import os
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.factories import random_artifact, start_server, stop_server

pytestmark = pytest.mark.slow

HALF_OPEN = 64
PROBES = 10
PROBE_TIMEOUT_S = 2.0


def slow_client_figures(base: str, half_open: int = HALF_OPEN, probes: int = PROBES) -> dict:
    """Open ``half_open`` connections that never finish their headers, then time ``probes`` /healthz GETs."""
    url = urlsplit(base)
    held = []
    try:
        for _ in range(half_open):
            s = socket.create_connection((url.hostname, url.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        time.sleep(0.5)
        answered, latencies = 0, []
        for _ in range(probes):
            t0 = time.perf_counter()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=PROBE_TIMEOUT_S)
            try:
                conn.request("GET", "/healthz")
                answered += conn.getresponse().status == 200
            except OSError:
                pass
            finally:
                conn.close()
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.2)
        return {"half_open": half_open, "probes": probes, "answered": answered,
                "max_probe_s": round(max(latencies), 3)}
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("worker_class,holds", [("gevent", True),
                                                ("gthread", False)])   # gthread: each slow client holds a thread
def test_half_open_connections_and_probes(tmp_path, redis_url, worker_class, holds):
    model = random_artifact(tmp_path / "m", n_users=30, n_anime=40, seed=1)
    base, proc = start_server(model, redis_url, env={**os.environ, "FUSERANK_WORKER_CLASS": worker_class})
    try:
        figures = slow_client_figures(base)
    finally:
        stop_server(proc)
    print(f"\nslow clients, {worker_class}: {figures}")
    assert (figures["answered"] == PROBES) is holds, figures
