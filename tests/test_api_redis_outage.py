"""Redis stopped under the API: answers keep coming (live, degraded), readiness holds, recovery is automatic."""
import numpy as np
import pytest

from fuserank.api.app import create_app
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from fuserank.redis_server import LocalRedis
from tests.factories import random_artifact


def test_answers_survive_a_redis_outage_and_recover(tmp_path):
    model_dir = random_artifact(tmp_path / "m", n_users=30, n_anime=40)
    settings = HybridSettings(top_n=10, neighbours=5)
    server = LocalRedis()
    port = server.port
    try:
        precompute(model_dir, server.url, settings)
        app = create_app(model_dir, server.url, settings)
        client = app.test_client()
        assert client.get("/v1/users/100/recommendations?n=5").get_json()["source"] == "precomputed"
        stored = [i["anime_id"] for i in client.get("/v1/users/100/recommendations?n=5").get_json()["items"]]

        server.stop()
        down = client.get("/v1/users/100/recommendations?n=5")
        assert down.status_code == 200
        body = down.get_json()
        assert body["source"] == "live" and body["degraded"] is True
        assert [i["anime_id"] for i in body["items"]] == stored  # same model, same list
        assert client.get("/v1/users/999/recommendations").get_json()["source"] == "popular"
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.get_json()["redis"] == "down"

        server = LocalRedis(port=port)
        precompute(model_dir, server.url, settings)
        app.extensions["fuserank"]._pointer = (0.0, None, None)  # skip the 1 s pointer cache
        back = client.get("/v1/users/100/recommendations?n=5").get_json()
        assert back["source"] == "precomputed" and "degraded" not in back
    finally:
        server.stop()
