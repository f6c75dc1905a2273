"""The same `fuserank precompute` on three Beam runners: in process (the default FnApiRunner), the FnApiRunner
with two SDK worker processes, and the DaskRunner against a real `dask scheduler` with two `dask worker`
processes on 127.0.0.1. Every run's stored lists must be byte-identical to the in-process run's, and Redis
must see the publish only after the last list write (MONITOR gives the server's own command order)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fuserank import keys
from fuserank.publish import current_version, read_meta
from fuserank.redis_client import connect
from fuserank.redis_server import free_port
from tests.factories import empty_db, random_artifact

pytest.importorskip("distributed", reason="the DaskRunner tests need .[dev] (apache-beam[dask], distributed)")

N_USERS, N_ANIME = 37, 25
DB = {"in-process": 7, "multi-process": 8, "dask": 9}   # one database per runner on the tests' server
STOP = "fuserank-test-monitor-stop"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return random_artifact(tmp_path_factory.mktemp("runners") / "m", n_users=N_USERS, n_anime=N_ANIME, adult=(2,))


def wait_for(check, timeout: float, what: str, logs=()) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    tails = "".join(f"\n--- {p.name}:\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"{what} not within {timeout:.0f}s{tails}")


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """``dask scheduler`` + two single-threaded ``dask worker`` processes on loopback, stopped afterwards."""
    from distributed import Client
    work = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    dask = [sys.executable, "-m", "dask"]
    commands = {"scheduler": dask + ["scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                     "--no-dashboard", "--no-show"]}
    for name in ("worker-1", "worker-2"):
        commands[name] = dask + ["worker", address, "--name", name, "--nworkers", "1", "--nthreads", "1",
                                 "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(work / name)]
    procs, logs = [], []
    try:
        for name, cmd in commands.items():
            logs.append(work / f"{name}.log")
            with open(logs[-1], "w") as log:
                procs.append(subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT))
            if name == "scheduler":
                wait_for(lambda: b"Scheduler at" in logs[0].read_bytes(), 60, "dask scheduler", logs)
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class CommandLog:
    """Redis MONITOR in a thread: every command of database ``db`` in the order the server ran them."""

    def __init__(self, redis_url: str, db: int):
        self.client, self.db, self.commands = connect(redis_url), db, []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self):
        with self.client.monitor() as monitor:
            self.ready.set()
            for entry in monitor.listen():
                if STOP in entry["command"]:
                    return
                if entry["db"] == self.db:
                    self.commands.append(((entry["command"].split(" ", 2) + [""])[:2], entry["client_port"]))

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.client.echo(STOP)
        self.thread.join(10)
        self.client.close()


def precompute_cli(model_dir: str, url: str, beam_args: list[str]) -> dict:
    """``fuserank precompute`` as a user runs it, from the model's parent folder with a relative ``--model``
    (the dask workers run elsewhere: the job must hand them an absolute path)."""
    model = Path(model_dir)
    cmd = [sys.executable, "-m", "fuserank", "precompute", "--model", model.name, "--redis-url", url,
           "--top-n", "10", "--neighbours", "5", "--block-size", "8", "--", *beam_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=model.parent)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout)


def run(model_dir: str, redis_url: str, runner: str, beam_args: list[str]) -> dict:
    """One CLI run into the runner's own database: its lists, meta, and the Redis command order."""
    url = empty_db(redis_url, DB[runner])
    with CommandLog(redis_url, DB[runner]) as monitor:
        result = precompute_cli(model_dir, url, beam_args)
    version = result["version"]
    with connect(url) as client:
        assert current_version(client) == version
        lists = {k: client.get(k) for k in client.scan_iter(match=keys.version_pattern(version))
                 if k != keys.meta(version).encode()}
        meta = read_meta(client, version)
    return {"version": version, "lists": lists, "meta": meta, "commands": monitor.commands}


@pytest.fixture(scope="module")
def in_process(model, redis_url):
    yield run(model, redis_url, "in-process", [])
    for db in DB.values():
        empty_db(redis_url, db)


def is_list_key(key: str) -> bool:
    parsed = keys.parse_key(key)
    return parsed is not None and parsed["kind"] in ("user", "anime")


def assert_same_lists_published_after_the_writes(got: dict, reference: dict) -> None:
    assert got["version"] == reference["version"]
    assert len(reference["lists"]) == N_USERS + N_ANIME
    assert got["lists"] == reference["lists"]                       # every key, byte for byte
    for meta in (got["meta"], reference["meta"]):
        assert meta["state"] == "complete" and meta["written"] == {"users": N_USERS, "anime": N_ANIME}
    commands = [cmd for cmd, _ in got["commands"]]
    list_sets = [i for i, (name, key) in enumerate(commands) if name.upper() == "SET" and is_list_key(key)]
    assert len(list_sets) == N_USERS + N_ANIME
    (flip,) = [i for i, (name, key) in enumerate(commands) if name.upper() == "SET" and key == keys.CURRENT]
    assert max(list_sets) < flip


def test_in_process_run_publishes_after_its_writes(in_process):
    assert_same_lists_published_after_the_writes(in_process, in_process)


@pytest.mark.slow
def test_fnapi_multi_processing_stores_the_same_lists(model, redis_url, in_process):
    got = run(model, redis_url, "multi-process", ["--direct_running_mode", "multi_processing",
                                                  "--direct_num_workers", "2"])
    assert_same_lists_published_after_the_writes(got, in_process)


@pytest.mark.slow
def test_dask_runner_on_two_worker_processes_stores_the_same_lists(model, redis_url, in_process, dask_cluster):
    from distributed import Client
    got = run(model, redis_url, "dask", ["--runner", "DaskRunner", "--dask_client_address", dask_cluster,
                                         "--dask_npartitions", "4"])
    assert_same_lists_published_after_the_writes(got, in_process)
    # both worker processes scored: each loaded the model and built its list encoder
    with Client(dask_cluster, timeout=30) as client:
        loaded = client.run(lambda: __import__("fuserank.batch.pipeline", fromlist=["load_encoder"])
                            .load_encoder.cache_info().currsize)
    assert sorted(loaded.values()) == [1, 1]
