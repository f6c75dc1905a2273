"""Beam DoFns that talk to Redis: connections open in ``setup``, writes go out in pipelined batches."""
from __future__ import annotations

import logging
import time

import apache_beam as beam

from fuserank.publish import publish, write_meta
from fuserank.redis_client import connect

log = logging.getLogger("fuserank.precompute")


class WriteListsFn(beam.DoFn):
    """Writes one block's ``(key, value)`` pairs with pipelined SETs; emits ``(kind, n)`` per confirmed batch.

    Rewriting a key with the same value is harmless, so a bundle retried by the runner is idempotent;
    the counts come from Beam's committed outputs, so retries are not double counted. Every count is
    emitted from ``process``: the DaskRunner drops what ``finish_bundle`` emits.
    """

    def __init__(self, redis_url: str, kind: str, batch_size: int = 500):
        self.redis_url, self.kind, self.batch_size = redis_url, kind, batch_size

    def setup(self):
        self.client = connect(self.redis_url, "batch")
        self.written = 0
        self.t0 = time.time()

    def process(self, pairs):
        for start in range(0, len(pairs), self.batch_size):
            self.batch = pairs[start:start + self.batch_size]
            yield from self._flush()

    def _flush(self):
        if not self.batch:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for key, value in self.batch:
                pipe.set(key, value)
            pipe.execute()
        n, self.batch = len(self.batch), []
        self.written += n
        log.info("%s lists written: %d (%.0f/s)", self.kind, self.written, self.written / max(time.time() - self.t0, 1e-9))
        yield (self.kind, n)

    def teardown(self):
        client = getattr(self, "client", None)
        if client is not None:
            client.close()


class PublishFn(beam.DoFn):
    """The final step: receives the summed write counts and publishes only if they match the model."""

    def __init__(self, redis_url: str, version: str, expected: dict, meta: dict):
        self.redis_url, self.version, self.expected, self.meta = redis_url, version, expected, meta

    def process(self, written: dict):
        client = connect(self.redis_url, "batch")
        try:
            write_meta(client, self.version, {**self.meta, "written_at": time.time()})
            previous = publish(client, self.version, dict(written), self.expected)
            log.info("published list version %s (previous: %s)", self.version, previous)
            yield {"version": self.version, "previous": previous, "written": dict(written)}
        finally:
            client.close()

