"""Training past one machine, tried on loopback: TensorFlow's ParameterServerStrategy with the embedding tables
sharded over two parameter servers, one worker and a coordinator, each its own process found through
``TF_CONFIG`` (as on Vertex AI / GKE, where each replica gets its own ``TF_CONFIG``).

    python -u benchmarks/tf_ps_loopback.py                   # 2 ps + 1 worker + chief, ~1 min
    python -u benchmarks/tf_ps_loopback.py --workers 2 --steps 100

The chief (coordinator) builds a matrix-factorisation model: a user and an anime embedding table, each a
``ShardedVariable`` split row-wise by ``FixedShardsPartitioner`` over the ps tasks, and schedules SGD steps
on the workers with ``ClusterCoordinator`` over synthetic ratings from a known low-rank truth. Printed (JSON):
where each shard lives and its shape, the loss of the first and last steps, steps/s. It shows the engine,
not a speed: every process shares this machine's cores.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

USERS, ANIME, DIM, BATCH, LR = 20_000, 2_000, 16, 1024, 0.05


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def serve() -> None:
    """A ps or worker task: a gRPC server for the cluster in TF_CONFIG, until killed."""
    import tensorflow as tf
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id, protocol="grpc", start=True)
    server.join()


def chief(steps: int) -> dict:
    import numpy as np
    import tensorflow as tf
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    n_ps = len(resolver.cluster_spec().as_dict()["ps"])
    strategy = tf.distribute.ParameterServerStrategy(
        resolver, variable_partitioner=tf.distribute.experimental.partitioners.FixedShardsPartitioner(n_ps))
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        init = tf.random_normal_initializer(stddev=0.1, seed=0)
        user_emb = tf.Variable(init([USERS, DIM]), name="user_embedding")
        anime_emb = tf.Variable(init([ANIME, DIM]), name="anime_embedding")
    shards = {name: [(s.device, s.shape.as_list()) for s in v.variables]
              for name, v in (("user_embedding", user_emb), ("anime_embedding", anime_emb))}

    rng = np.random.default_rng(0)
    true_u = rng.normal(0, 1, (USERS, 4)).astype(np.float32)
    true_a = rng.normal(0, 1, (ANIME, 4)).astype(np.float32)

    def dataset_fn():
        users = tf.random.uniform([BATCH * 64], 0, USERS, dtype=tf.int64, seed=1)
        anime = tf.random.uniform([BATCH * 64], 0, ANIME, dtype=tf.int64, seed=2)
        ratings = tf.reduce_sum(tf.gather(true_u, users) * tf.gather(true_a, anime), axis=1) / 2.0
        return tf.data.Dataset.from_tensor_slices((users, anime, ratings)).repeat().batch(BATCH)

    iterator = iter(coordinator.create_per_worker_dataset(dataset_fn))
    tables = user_emb.variables + anime_emb.variables

    @tf.function
    def step(it):
        def replica(batch):
            users, anime, ratings = batch
            with tf.GradientTape() as tape:
                pred = tf.reduce_sum(tf.nn.embedding_lookup(user_emb, users) *
                                     tf.nn.embedding_lookup(anime_emb, anime), axis=1)
                loss = tf.reduce_mean(tf.square(pred - ratings))
            for table, grad in zip(tables, tape.gradient(loss, tables)):
                if grad is None:
                    continue
                if isinstance(grad, tf.IndexedSlices):     # only the looked-up rows travel to their ps
                    table.scatter_sub(tf.IndexedSlices(grad.values * (LR * BATCH), grad.indices))
                else:
                    table.assign_sub(grad * LR)
            return loss
        return strategy.run(replica, args=(next(it),))

    first = coordinator.schedule(step, args=(iterator,))
    coordinator.join()
    t0 = time.perf_counter()
    losses = [coordinator.schedule(step, args=(iterator,)) for _ in range(steps)]
    coordinator.join()
    seconds = time.perf_counter() - t0
    return {"shards": shards, "loss_first_step": round(float(first.fetch()), 4),
            "loss_last_step": round(float(losses[-1].fetch()), 4), "steps": steps,
            "steps_per_s": round(steps / seconds, 1), "batch": BATCH, "users": USERS, "anime": ANIME, "dim": DIM}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ps", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--role", choices=["serve", "chief"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.role == "serve":
        serve()
        return 0
    if a.role == "chief":
        print(json.dumps(chief(a.steps)), flush=True)
        return 0
    ports = iter(free_ports(1 + a.ps + a.workers))
    cluster = {"chief": [f"127.0.0.1:{next(ports)}"], "ps": [f"127.0.0.1:{next(ports)}" for _ in range(a.ps)],
               "worker": [f"127.0.0.1:{next(ports)}" for _ in range(a.workers)]}

    def start(task_type: str, index: int, role: str, **kw) -> subprocess.Popen:
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}}),
               "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        return subprocess.Popen([sys.executable, "-u", __file__, "--role", role], env=env, **kw)

    servers = [start(t, i, "serve", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for t in ("ps", "worker") for i in range(len(cluster[t]))]
    t0 = time.perf_counter()
    try:
        proc = start("chief", 0, "chief", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=240)
    finally:
        for s in servers:
            s.kill()
            s.wait()
    if proc.returncode != 0:
        print(err[-4000:], file=sys.stderr)
        return 1
    result = {**json.loads(out.strip().splitlines()[-1]), "cluster": cluster,
              "wall_s_with_start": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
