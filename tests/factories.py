"""Builds small, hand-made model artifacts so scorer behaviour can be checked on known geometry."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fuserank import artifacts as art
from fuserank.similarity import l2_normalise


def empty_db(redis_url: str, db: int) -> str:
    """``redis_url`` pointed at database ``db`` of the same server, emptied: one database per test module."""
    from fuserank.redis_client import connect
    url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    with connect(url) as client:
        client.flushdb()
    return url


def precomputed_random(path, redis_url: str, db: int, settings) -> tuple[str, str]:
    """A 30-user, 40-anime random model precomputed with ``settings`` into database ``db``: (model, url)."""
    from fuserank.batch.pipeline import precompute
    url = empty_db(redis_url, db)
    model = random_artifact(path, n_users=30, n_anime=40, seed=1)
    precompute(model, url, settings)
    return model, url


def make_artifact(path, user_emb, anime_emb, lists, genres=None, names=None) -> str:
    """``lists``: dense users x anime array of raw ratings (0 = not on the list, -1 = listed, unrated)."""
    os.makedirs(path, exist_ok=True)
    user_emb, anime_emb = np.asarray(user_emb, np.float32), np.asarray(anime_emb, np.float32)
    n_users, n_anime = user_emb.shape[0], anime_emb.shape[0]
    np.save(os.path.join(path, art.USER_EMB), l2_normalise(user_emb))
    np.save(os.path.join(path, art.ANIME_EMB), l2_normalise(anime_emb))
    pd.DataFrame({"user": np.arange(n_users, dtype=np.int32), "user_id": 100 + np.arange(n_users, dtype=np.int64),
                  "n_ratings": np.zeros(n_users, np.int32)}).to_parquet(os.path.join(path, art.USERS))
    pd.DataFrame({"anime": np.arange(n_anime, dtype=np.int32), "anime_id": 1000 + np.arange(n_anime, dtype=np.int64),
                  "name": names or [f"Anime {i}" for i in range(n_anime)],
                  "genres": genres or ["Action"] * n_anime, "type": ["TV"] * n_anime,
                  "in_metadata": [True] * n_anime}).to_parquet(os.path.join(path, art.ANIME))
    art.save_user_lists(os.path.join(path, art.USER_LISTS), sp.csr_matrix(np.asarray(lists, np.int8)))
    version, hashes = art.content_version(path)
    with open(os.path.join(path, art.MANIFEST), "w") as fh:
        json.dump({"model_version": version, "files": hashes}, fh)
    return str(path)


def random_artifact(path, n_users=40, n_anime=30, dim=8, seed=0, adult=()) -> str:
    rng = np.random.default_rng(seed)
    lists = np.zeros((n_users, n_anime), np.int8)
    for u in range(n_users):
        picked = rng.choice(n_anime, size=rng.integers(3, 10), replace=False)
        lists[u, picked] = rng.integers(1, 11, size=len(picked))
        lists[u, picked[:1]] = -1
    genres = ["Hentai" if a in adult else "Comedy, Drama" for a in range(n_anime)]
    return make_artifact(path, rng.normal(size=(n_users, dim)), rng.normal(size=(n_anime, dim)), lists, genres)


def csr(rows, n_items) -> sp.csr_matrix:
    """rows: list of {item: rating} dicts -> CSR (users x items)."""
    r, c, d = [], [], []
    for u, items in enumerate(rows):
        for i, v in items.items():
            r.append(u)
            c.append(i)
            d.append(v)
    return sp.csr_matrix((np.asarray(d, dtype=np.float32), (r, c)), shape=(len(rows), n_items))


def start_server(model_dir: str, redis_url: str, env: dict | None = None, timeout: float = 90,
                 workers: int = 2):
    """``fuserank serve`` as a real subprocess (gunicorn), once /healthz answers: ``(base_url, proc)``."""
    import subprocess
    import sys
    import time
    import urllib.request

    from fuserank.redis_server import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fuserank", "serve", "--model", str(model_dir),
                             "--redis-url", redis_url, "--port", str(port), "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    return base, proc


def stop_server(proc) -> None:
    """SIGINT (gunicorn's graceful stop), as an operator's Ctrl-C."""
    import signal
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)


def api_app(model_dir, redis_url: str, hybrid=None, *, clock=None, service=None, instrument: bool = True,
            hot_route: bool = True, **settings):
    """``create_app`` over ``ServeSettings(model_dir, redis_url, hybrid, **settings)``; ``clock``: a fake clock
    for the service's breaker, pointer re-reads and rate-limit windows."""
    from fuserank.api.app import create_app
    from fuserank.api.service import RecommendationService
    from fuserank.config import ServeSettings
    serve = ServeSettings(model=str(model_dir), redis_url=redis_url, hybrid=hybrid, **settings)
    if service is None and clock is not None:
        service = RecommendationService(serve, clock=clock)
    return create_app(serve, service=service, instrument=instrument, hot_route=hot_route)


class FakeClock:
    """A clock tests move by hand (``advance``); callable like time.monotonic / time.time."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def reasons_of(model, ranked, row: int = 0):
    """Row ``row``'s reasons as the API's objects (``{"because": [{"anime_id", "name"}, ...], "similar_users"}``),
    built here independently of keys.ListEncoder, the one encoder they are checked against; None when the
    ranking was not explained."""
    if ranked.because is None:
        return None
    keep = ranked.items[row] >= 0
    names = model.anime["name"].fillna("").to_numpy(object)
    return [{"because": [{"anime_id": int(model.anime_ids[a]), "name": str(names[a])} for a in liked if a >= 0],
             "similar_users": int(c)}
            for liked, c in zip(ranked.because[row][keep].tolist(), ranked.similar_users[row][keep].tolist())]
