"""`fuserank precompute`: the Apache Beam job that fills Redis with every user's and anime's lists.

One composite PTransform per stage: ScoreUsers (the hybrid, in blocks of users, each item with its
reasons), AnimeNeighbours (the scorer's anime-neighbour lists), WriteToRedis (pipelined, idempotent),
and Publish (flips the current-version pointer only once every write is confirmed and counted against
the model). A block is the unit of work end to end: scored into one list of ``(key, value)`` pairs,
written, counted; nothing is emitted from ``finish_bundle`` and no side input is read, so the same job
runs on the in-process FnApiRunner, its multi-process mode, the DaskRunner and Dataflow.

Blocks of users follow ``HybridScorer.user_order()``: with the similar-user IVF index (large models)
the users of one index cell are scored together, so a block shares one candidate set. A block is an
explicit array of encoded users, so any worker scores exactly the users it is given. Values are encoded
by ``keys.ListEncoder`` (byte-identical to ``keys.encode_list``, built once per worker).
"""
from __future__ import annotations

import json
import logging
import os
import time
from functools import lru_cache

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

import redis

from fuserank import keys, logs
from fuserank.privacy import suppressed
from fuserank.publish import PublishError, current_version
from fuserank.redis_client import connect, layout
from fuserank.artifacts import ModelArtifact
from fuserank.config import HybridSettings
from fuserank.batch.redis_io import PublishFn, WriteListsFn
from fuserank.scorer import HybridScorer

log = logging.getLogger("fuserank.precompute")


@lru_cache(maxsize=2)
def load_scorer(model_dir: str, settings: HybridSettings) -> HybridScorer:
    """One artifact + neighbour graph (+ user index) per worker process, shared by every DoFn instance
    in it (and, on the in-process runner, with ``precompute`` itself)."""
    return HybridScorer(ModelArtifact.load(model_dir), settings)


@lru_cache(maxsize=2)
def load_encoder(model_dir: str, settings: HybridSettings) -> keys.ListEncoder:
    model = load_scorer(model_dir, settings).model
    return keys.ListEncoder(model.anime_ids, model.anime["name"].fillna("").to_numpy(object))


def blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def ordered_blocks(order, size: int) -> list:
    """Consecutive slices of an encoded-user order (int32 arrays): the ScoreUsers input."""
    import numpy as np
    order = np.asarray(order, dtype=np.int32)
    return [order[start:start + size] for start in range(0, len(order), size)]


class ScoreUserBlockFn(beam.DoFn):
    def __init__(self, model_dir: str, settings: HybridSettings, version: str, skip: frozenset = frozenset()):
        self.model_dir, self.settings, self.version, self.skip = model_dir, settings, version, skip

    def setup(self):
        self.scorer = load_scorer(self.model_dir, self.settings)
        self.encoder = load_encoder(self.model_dir, self.settings)

    def process(self, block):
        """``block``: encoded users (an array), or a ``(start, stop)`` range of them; yields the block's
        ``(key, value)`` pairs as one list."""
        import numpy as np
        model = self.scorer.model
        users = np.arange(*block) if isinstance(block, tuple) else np.asarray(block, dtype=np.int64)
        ranked = self.scorer.score_users(users, explain=True)
        pairs = []
        for i, uid in enumerate(model.user_ids[users].tolist()):
            if uid in self.skip:
                continue
            keep = ranked.items[i] >= 0
            pairs.append((keys.user(self.version, uid),
                          self.encoder.encode(ranked.items[i][keep], ranked.scores[i][keep],
                                              ranked.because[i][keep], ranked.similar_users[i][keep])))
        yield pairs


class AnimeNeighboursFn(beam.DoFn):
    def __init__(self, model_dir: str, settings: HybridSettings, version: str):
        self.model_dir, self.settings, self.version = model_dir, settings, version

    def setup(self):
        self.scorer = load_scorer(self.model_dir, self.settings)
        self.encoder = load_encoder(self.model_dir, self.settings)

    def process(self, block):
        s, model = self.scorer, self.scorer.model
        pairs = []
        for a in range(*block):
            idx = s.neighbour_idx[a]
            keep = ~model.adult_mask[idx]
            pairs.append((keys.anime(self.version, model.anime_ids[a]),
                          self.encoder.encode(idx[keep], s.neighbour_sim[a][keep])))
        yield pairs


class ScoreUsers(beam.PTransform):
    """Blocks of encoded users -> per block, a list of (redis key, hybrid top-N with reasons), one per user."""

    def __init__(self, model_dir, settings, version, skip=frozenset()):
        super().__init__()
        self.fn = ScoreUserBlockFn(model_dir, settings, version, skip)

    def expand(self, user_blocks):
        return user_blocks | beam.ParDo(self.fn)


class AnimeNeighbours(beam.PTransform):
    """Blocks of encoded anime -> per block, a list of (redis key, nearest neighbours), one per anime."""

    def __init__(self, model_dir, settings, version):
        super().__init__()
        self.fn = AnimeNeighboursFn(model_dir, settings, version)

    def expand(self, anime_blocks):
        return anime_blocks | beam.ParDo(self.fn)


class WriteToRedis(beam.PTransform):
    """Lists of (key, value) -> Redis; outputs ``(kind, n)`` counts of confirmed writes."""

    def __init__(self, redis_url: str, kind: str, batch_size: int = 500):
        super().__init__()
        self.fn = WriteListsFn(redis_url, kind, batch_size)

    def expand(self, pairs):
        return pairs | beam.ParDo(self.fn)


class Publish(beam.PTransform):
    """Sums the write counts from every branch and publishes the version if they match the model."""

    def __init__(self, redis_url, version, expected, meta):
        super().__init__()
        self.fn = PublishFn(redis_url, version, expected, meta)

    def expand(self, counts):
        # without_defaults: a global combine with a default reads its result back as a side input, which the
        # DaskRunner computes inside one task instead of as part of the graph
        return (counts | beam.Flatten() | "SumByKind" >> beam.CombinePerKey(sum)
                | "AsDict" >> beam.combiners.ToDict().without_defaults() | beam.ParDo(self.fn))


def build(p: beam.Pipeline, model_dir: str, redis_url: str, settings: HybridSettings, model: ModelArtifact,
          block_size: int = 512, skip: frozenset = frozenset(), order=None):
    """``skip``: forgotten users (fuserank.privacy), who get no stored list; ``order``: the encoded users in
    the order to score them (``HybridScorer.user_order()``), default 0..n-1."""
    version = keys.list_version(model.version, settings.digest())
    skip = frozenset(u for u in skip if model.user_index(u)[0] >= 0)
    user_input = blocks(model.n_users, block_size) if order is None else ordered_blocks(order, block_size)
    users_written = (p | "UserBlocks" >> beam.Create(user_input)
                     | "ScoreUsers" >> ScoreUsers(model_dir, settings, version, skip)
                     | "WriteUsers" >> WriteToRedis(redis_url, "users"))
    anime_written = (p | "AnimeBlocks" >> beam.Create(blocks(model.n_anime, block_size * 4))
                     | "AnimeNeighbours" >> AnimeNeighbours(model_dir, settings, version)
                     | "WriteAnime" >> WriteToRedis(redis_url, "anime"))
    meta = {"model_version": model.version, "settings": settings.to_dict(), "state": "writing",
            "n_users": model.n_users, "n_anime": model.n_anime,
            # where the API loads this version's model from when the pointer moves to it (fuserank.api.registry)
            "model_uri": model_dir if str(model_dir).startswith("gs://") else os.path.abspath(model_dir)}
    # the feedback the model's data holds (fuserank.feedback): the API's fresh lists start after it
    meta.update({k: model.manifest[k] for k in ("feedback_until", "feedback_added") if k in model.manifest})
    evaluation = os.path.join(model_dir, "evaluation.json")
    if os.path.exists(evaluation):
        with open(evaluation) as fh:
            meta["evaluation"] = json.load(fh)
    expected = {"users": model.n_users - len(skip), "anime": model.n_anime}
    published = (users_written, anime_written) | "Publish" >> Publish(redis_url, version, expected, meta)
    return version, published


# runners that Beam's ``--runner`` accepts only by their module path
RUNNER_PATHS = {"DaskRunner": "apache_beam.runners.dask.dask_runner.DaskRunner"}


def pipeline_options(beam_args: list[str] | None) -> tuple[PipelineOptions, object | None]:
    """Beam options from the arguments after ``--``; without ``--runner`` the in-process FnApiRunner,
    which never tries to download the Prism runner binary (as DirectRunner does in Beam 2.77);
    ``--runner DaskRunner`` names Beam's DaskRunner (``--dask_client_address`` its scheduler)."""
    options = PipelineOptions(beam_args or [])
    standard = options.view_as(StandardOptions)
    standard.runner = RUNNER_PATHS.get(standard.runner, standard.runner)
    runner = None
    if not options.view_as(StandardOptions).runner:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        runner = FnApiRunner()
    return options, runner


def check_published(client: redis.Redis, version: str) -> str | None:
    """After the pipeline: None when ``version`` is current; the newer version when another precompute
    published after this one (a race, not a failure); PublishError when ``version`` was never published."""
    served = current_version(client)
    if served == version:
        return None
    if client.zscore(layout(client).versions, version) is None:   # the flip adds it there in the same transaction
        raise PublishError(f"pipeline finished but the current list version is {served}, not {version}")
    log.warning("list version %s was published, then replaced by %s (another precompute finished after it)",
                version, served)
    return served


def precompute(model_dir: str, redis_url: str, settings: HybridSettings | None = None,
               beam_args: list[str] | None = None, block_size: int = 512) -> dict:
    if settings is None:
        from fuserank.artifacts import localise, read_manifest
        settings = HybridSettings.for_model(read_manifest(localise(model_dir)))
    t0 = time.time()
    if not str(model_dir).startswith("gs://"):
        model_dir = os.path.abspath(model_dir)  # workers in other processes, with another cwd, find it too
    scorer = load_scorer(model_dir, settings)   # shared with the DoFns on the in-process runner
    model = scorer.model
    options, runner = pipeline_options(beam_args)
    client = connect(redis_url, "batch")
    try:
        skip = suppressed(client)
    finally:
        client.close()
    p = beam.Pipeline(runner=runner, options=options)
    version, _ = build(p, model_dir, redis_url, settings, model, block_size, skip, scorer.user_order())
    logs.bind(model_version=model.version, list_version=version)
    log.info("precompute list version %s: %d users, %d anime", version, model.n_users, model.n_anime)
    p.run().wait_until_finish()
    seconds = time.time() - t0
    client = connect(redis_url, "batch")
    try:
        superseded = check_published(client, version)
    finally:
        client.close()
    log.info("precompute finished in %.1fs", seconds)
    return {"version": version, "model_version": model.version, "users": model.n_users, "forgotten": len(skip),
            "anime": model.n_anime, "seconds": round(seconds, 2), "superseded_by": superseded}
