"""Scrape-time gauges of the feedback loop (registered by fuserank.api.metrics)::

    fuserank_feedback_backlog_events                  events the served version does not hold yet
    fuserank_feedback_backlog_oldest_age_seconds      age of the oldest of them (absent: no backlog)
    fuserank_online_served_lists{list_version}        served lists (fuserank.evaluation.online's definition)
    fuserank_online_click_share{list_version}         share of them that led to a click
    fuserank_online_hit_rate_at_10{list_version}      share with an anime of the top 10 rated >= 8 within 7 days

The backlog is three cheap commands per scrape (fuserank.feedback.backlog). The online figures are read from
their stored hash (one HGETALL); recomputing them reads the stream, so it runs at most every
``ONLINE_REFRESH_S`` in one API worker (a Redis lock), in a background thread, never in the scrape.
"""
from __future__ import annotations

import logging
import time

import redis
from prometheus_client.core import GaugeMetricFamily

from fuserank import feedback, keys
from fuserank.api.background import start_native_thread
from fuserank.evaluation import online

ONLINE_REFRESH_S = 300

log = logging.getLogger("fuserank.api.metrics")


_refreshing = {"running": False}     # this process's refresh (a plain flag: the thread is an OS thread under gevent)


def refresh_online_soon(client, refresh_s: float = ONLINE_REFRESH_S) -> None:
    """Recompute the online figures in a background thread unless one runs in this process or another worker
    took the lock in the last ``refresh_s`` seconds (the lock expires by itself)."""
    if _refreshing["running"]:
        return
    if not client.set(keys.ONLINE_LOCK, str(time.time()), nx=True, ex=max(1, int(refresh_s))):
        return

    def run():
        try:
            online.refresh(client)
        except redis.RedisError as exc:
            log.warning("online evaluation not refreshed: %s", exc)
        finally:
            _refreshing["running"] = False

    _refreshing["running"] = True
    start_native_thread(run, name="online-evaluation")


class FeedbackCollector:
    def __init__(self, service, refresh_s: float = ONLINE_REFRESH_S):
        self.service = service
        self.refresh_s = refresh_s

    def describe(self):
        return []

    def collect(self):
        client = self.service.redis
        if self.service.breaker.is_open():
            return
        try:
            refresh_online_soon(client, self.refresh_s)
            backlog = feedback.backlog(client)
            daily = online.stored(client)
        except redis.RedisError as exc:
            self.service.breaker.failed(exc)
            return
        yield GaugeMetricFamily("fuserank_feedback_backlog_events", "Feedback events not yet in the served list "
                                "version", value=backlog["events"])
        if backlog["oldest_age_s"] is not None:
            yield GaugeMetricFamily("fuserank_feedback_backlog_oldest_age_seconds", "Age of the oldest feedback "
                                    "event not yet in the served list version", value=backlog["oldest_age_s"])
        totals = online.by_version(daily)
        gauges = {"served_lists": ("Served lists (user, list version) seen in impressions", "lists"),
                  "click_share": ("Share of served lists that led to a click", "click_share"),
                  f"hit_rate_at_{online.TOP_K}": (f"Share of served lists with an anime of the top {online.TOP_K} "
                                                  f"rated >= {online.LIKED} within 7 days", "hit_rate_at_10")}
        for name, (text, field) in gauges.items():
            family = GaugeMetricFamily(f"fuserank_online_{name}", text, labels=["list_version"])
            for version, entry in totals.items():
                value = entry["total"][field]
                if value is not None:
                    family.add_metric([version], value)
            yield family
