"""`fuserank inspect`: look at what precompute left in a live Redis (offline: SCAN is fine here, KEYS never).

Importable functions return plain dicts/lists; ``format_*`` turn them into aligned plain-text tables;
``inspect_parser`` / ``run_inspect`` are the command (human tables by default, ``--json`` for scripts).

    inspect_user(r, user_id, version=None, names=None)   one user's stored top-N, with each item's reasons
    inspect_anime(r, anime_id, version=None, names=None) one anime's stored neighbours
    list_versions(r)                                     every list version: state, key counts, memory
    diff_user(r, user_id, against, version=None, names=None)  how a user's list changed between versions
    sample_keys(r, n, version=None, names=None)          n random list keys of a version, decoded
    online_report(r, version=None)                       online evaluation per list version and day, and the
                                                         feedback backlog (fuserank.evaluation.online)

Every key comes from fuserank.keys; ``parse_key`` reads one back (version, kind, id).
"""
from __future__ import annotations

import json
import random
import sys
from datetime import datetime, timezone

import redis

from fuserank import keys
from fuserank.errors import FuseRankError
from fuserank.failures import Tried, explain
from fuserank.publish import SCAN_COUNT, current_version, read_meta, scan_version
from fuserank.redis_client import connect, get_many, layout, target
from fuserank.settings_parser import SettingsParser, int_in, redis_url_flag

PIPELINE_BATCH = 500    # MEMORY USAGE / GET commands per pipeline


class InspectError(FuseRankError):
    """Nothing to show (unknown user/anime/version, nothing published): the CLI prints it and exits 2."""


# -- small helpers -----------------------------------------------------------------------------------
def iso_utc(ts) -> str | None:
    """Unix seconds -> ISO-8601 UTC (``2024-05-01T12:00:00Z``); None stays None."""
    if ts is None or ts == "":
        return None
    try:
        return datetime.fromtimestamp(float(ts), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def load_names(model_dir: str) -> tuple[dict[int, str], str]:
    """``({anime_id: name}, model_version)`` from a model directory (local or gs://)."""
    from fuserank.artifacts import ModelArtifact
    model = ModelArtifact.load(model_dir)
    names = {int(a): str(n) for a, n in zip(model.anime["anime_id"], model.anime["name"].fillna(""))}
    return names, model.version


def _published(r: redis.Redis) -> dict[str, float]:
    return {m.decode(): s for m, s in r.zrange(layout(r).versions, 0, -1, withscores=True)}


def _pointer(r: redis.Redis, key: str) -> str | None:
    v = r.get(key)
    return v.decode() if v is not None else None


def _version_known(r: redis.Redis, version: str) -> bool:
    k = layout(r)
    return bool(r.exists(k.meta(version))) or r.zscore(k.versions, version) is not None


def _known_versions(r: redis.Redis) -> list[str]:
    found = set(_published(r))
    for k in r.scan_iter(match=layout(r).meta_pattern(), count=SCAN_COUNT):
        p = keys.parse_key(k)
        if p:
            found.add(p["version"])
    return sorted(found)


def resolve_version(r: redis.Redis, version: str | None = None) -> str:
    """The version asked for (which must exist: meta, published, or at least one list key), or the current one."""
    if version is None:
        current = current_version(r)
        if current is None:
            raise InspectError(f"no published list version in Redis ({layout(r).current} is not set): "
                               "run `fuserank precompute` first, or pass --version")
        return current
    if not _version_known(r, version) and next(iter(scan_version(r, version)), None) is None:
        known = _known_versions(r)
        raise InspectError(f"list version {version!r} not found in Redis; "
                           f"known: {', '.join(known) if known else 'none'}")
    return version


def _items(pairs, names: dict | None) -> list[dict]:
    return [{"rank": i, "anime_id": a, "name": names.get(a) if names is not None else None, "score": s}
            for i, (a, s) in enumerate(pairs, 1)]


def _explained_items(stored: list[dict], names: dict | None) -> list[dict]:
    """Rows of a stored user list; items stored with ``reasons`` keep them (``because`` named from
    ``names`` when given, else by the names stored with them)."""
    rows = _items([(int(it["anime_id"]), float(it["score"])) for it in stored], names)
    for row, it in zip(rows, stored):
        why = it.get("reasons")
        if why is None:
            continue
        because = [{"anime_id": int(b["anime_id"]),
                    "name": names.get(int(b["anime_id"]), b.get("name")) if names is not None else b.get("name")}
                   for b in why.get("because", [])]
        row["reasons"] = {"because": because, "similar_users": int(why.get("similar_users", 0))}
    return rows


def _header(r: redis.Redis, version: str) -> dict:
    meta = read_meta(r, version)
    return {"version": version, "current": version == current_version(r),
            "model_version": meta.get("model_version"), "written_at": iso_utc(meta.get("written_at")),
            "state": meta.get("state")}


# -- the five looks ----------------------------------------------------------------------------------
def inspect_user(r: redis.Redis, user_id: int, version: str | None = None, names: dict | None = None) -> dict:
    """One user's stored list: items (rank, anime_id, name, score, and ``reasons`` -- ``because``: the
    user's liked anime it is similar to, ``similar_users``: how many similar users rated it highly -- when
    the list was stored with them), list/model version, when written."""
    version = resolve_version(r, version)
    raw = r.get(keys.user(version, user_id))
    if raw is None:
        raise InspectError(f"user {int(user_id)} has no stored list in list version {version} "
                           "(not in the model's users; the API answers such users live or with popular anime)")
    return {"user_id": int(user_id), **_header(r, version), "items": _explained_items(keys.decode_list(raw), names)}


def inspect_anime(r: redis.Redis, anime_id: int, version: str | None = None, names: dict | None = None) -> dict:
    """One anime's stored neighbours (rank, anime_id, name, similarity)."""
    version = resolve_version(r, version)
    raw = r.get(keys.anime(version, anime_id))
    if raw is None:
        raise InspectError(f"anime {int(anime_id)} has no stored neighbours in list version {version} "
                           "(not in the model's anime)")
    return {"anime_id": int(anime_id), "name": names.get(int(anime_id)) if names is not None else None,
            **_header(r, version), "items": _items(keys.decode_items(raw), names)}


def list_versions(r: redis.Redis, memory: bool = True) -> list[dict]:
    """Every list version present: the published ones (``keys.VERSIONS``) plus any found by one offline
    SCAN over ``keys.version_pattern("*")`` (unpublished, or half-written ones with no meta yet).

    Per version: which is current/previous, state, counts of user/anime list keys (by key segment),
    all keys, and the summed ``MEMORY USAGE`` of its keys (pipelined). Oldest first.
    """
    published = _published(r)
    current, previous = current_version(r), _pointer(r, layout(r).previous)
    stats: dict[str, dict] = {v: {"users": 0, "anime": 0, "meta": 0, "keys": 0, "memory_bytes": 0}
                              for v in published}

    def account(batch):
        sizes = [0] * len(batch)
        if memory:
            with r.pipeline(transaction=False) as pipe:
                for key, _ in batch:
                    pipe.memory_usage(key)
                sizes = pipe.execute(raise_on_error=False)
        for (_, p), size in zip(batch, sizes):
            s = stats.setdefault(p["version"], {"users": 0, "anime": 0, "meta": 0, "keys": 0, "memory_bytes": 0})
            s["keys"] += 1
            s[{"user": "users", "anime": "anime", "meta": "meta"}[p["kind"]]] += 1
            if isinstance(size, Exception):     # MEMORY USAGE refused (some managed Redis): unknown
                s["memory_bytes"] = None
            elif s["memory_bytes"] is not None:
                s["memory_bytes"] += size or 0  # None: deleted since the SCAN saw it

    batch = []
    for k in scan_version(r, "*"):
        p = keys.parse_key(k)
        if p is None:
            continue
        batch.append((k, p))
        if len(batch) >= PIPELINE_BATCH:
            account(batch)
            batch = []
    if batch:
        account(batch)

    out = []
    for version, s in stats.items():
        meta = read_meta(r, version) if s["meta"] or version in published else {}
        settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
        written = meta.get("written") if isinstance(meta.get("written"), dict) else None
        out.append({
            "version": version, "current": version == current, "previous": version == previous,
            "published": version in published, "published_at": iso_utc(published.get(version)),
            "model_version": meta.get("model_version"), "state": meta.get("state") or "no meta (unpublished)",
            "written_at": iso_utc(meta.get("written_at")),
            "expected": {"users": meta.get("n_users"), "anime": meta.get("n_anime")},
            "written": written, "settings": settings,
            "users": s["users"], "anime": s["anime"], "keys": s["keys"],
            "memory_bytes": s["memory_bytes"] if memory else None,
        })
    out.sort(key=lambda v: (published.get(v["version"], float("inf")), v["written_at"] or "", v["version"]))
    return out


def diff_user(r: redis.Redis, user_id: int, against: str, version: str | None = None,
              names: dict | None = None) -> dict:
    """How a user's list changed from list version ``against`` (old) to ``version`` (new; default current).

    ``rows`` holds every anime in either list: new items by their new rank, then dropped ones by old rank,
    each with ``change``: "added", "removed", "moved" (``delta`` > 0 = moved up) or "same".
    A user missing from one version counts as an empty list there; missing from both is an error.
    """
    new_v = resolve_version(r, version)
    old_v = resolve_version(r, against)
    raw_new, raw_old = r.get(keys.user(new_v, user_id)), r.get(keys.user(old_v, user_id))
    if raw_new is None and raw_old is None:
        raise InspectError(f"user {int(user_id)} has no stored list in list version {new_v} nor in {old_v}")
    new = keys.decode_items(raw_new) if raw_new is not None else []
    old = keys.decode_items(raw_old) if raw_old is not None else []
    old_rank = {a: (i, s) for i, (a, s) in enumerate(old, 1)}
    new_ids = {a for a, _ in new}
    name = (lambda a: names.get(a)) if names is not None else (lambda a: None)
    rows = []
    for i, (a, s) in enumerate(new, 1):
        if a in old_rank:
            j, s_old = old_rank[a]
            change = "same" if i == j else "moved"
            rows.append({"anime_id": a, "name": name(a), "change": change, "old_rank": j, "new_rank": i,
                         "delta": j - i, "old_score": s_old, "new_score": s})
        else:
            rows.append({"anime_id": a, "name": name(a), "change": "added", "old_rank": None, "new_rank": i,
                         "delta": None, "old_score": None, "new_score": s})
    for a, (j, s_old) in old_rank.items():
        if a not in new_ids:
            rows.append({"anime_id": a, "name": name(a), "change": "removed", "old_rank": j, "new_rank": None,
                         "delta": None, "old_score": s_old, "new_score": None})
    by = lambda c: [row["anime_id"] for row in rows if row["change"] == c]  # noqa: E731
    return {"user_id": int(user_id), "version": new_v, "against": old_v,
            "meta": {"version": _header(r, new_v), "against": _header(r, old_v)},
            "present": {"version": raw_new is not None, "against": raw_old is not None},
            "added": by("added"), "removed": by("removed"), "moved": by("moved"), "same": by("same"),
            "rows": rows}


def sample_keys(r: redis.Redis, n: int, version: str | None = None, names: dict | None = None,
                rng: random.Random | None = None) -> list[dict]:
    """Up to ``n`` distinct random user/anime list keys of a version (default current), decoded.

    Tries RANDOMKEY first (O(1), fine when the version is most of the database), then falls back to a
    reservoir sample over an offline SCAN of the version's keys. Fewer than ``n`` only if fewer exist.
    """
    version = resolve_version(r, version)
    rng = rng or random.Random()

    def wanted(k):
        p = keys.parse_key(k)
        return p is not None and p["version"] == version and p["kind"] != "meta"

    picked: list = []
    seen = set()
    for _ in range(max(50, 20 * n)):
        if len(picked) >= n:
            break
        k = r.randomkey()
        if k is None:
            break
        if k not in seen and wanted(k):
            seen.add(k)
            picked.append(k)
    if len(picked) < n:
        picked, i = [], 0
        for k in scan_version(r, version):
            if not wanted(k):
                continue
            if len(picked) < n:
                picked.append(k)
            else:
                j = rng.randrange(i + 1)
                if j < n:
                    picked[j] = k
            i += 1
        rng.shuffle(picked)
    out = []
    for start in range(0, len(picked), PIPELINE_BATCH):
        chunk = picked[start:start + PIPELINE_BATCH]
        for k, raw in zip(chunk, get_many(r, chunk)):
            if raw is None:      # deleted since it was seen
                continue
            p = keys.parse_key(k)
            items = keys.decode_items(raw)
            subject = names.get(p["id"]) if (names is not None and p["kind"] == "anime") else None
            out.append({"key": k.decode(), "version": version, "kind": p["kind"], "id": p["id"], "name": subject,
                        "n_items": len(items), "items": _items(items, names)})
    return out


# -- plain-text tables ------------------------------------------------------------------------------
def format_table(headers: list[str], rows: list[list], right: set[int] | None = None) -> str:
    """Aligned plain text; columns in ``right`` (default: the ones whose values are all numbers) align right."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    if right is None:
        right = {i for i in range(len(headers))
                 if rows and all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)}
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.rjust(w) if i in right else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in cells])


def _score(s):
    return "-" if s is None else f"{s:.4f}"


def _because(reasons: dict | None) -> str:
    if not reasons:
        return "-"
    named = [b.get("name") or str(b["anime_id"]) for b in reasons.get("because", [])]
    return ", ".join(named) if named else "-"


def _items_table(items: list[dict], with_names: bool, score_label: str = "score") -> str:
    headers = ["rank", "anime_id"] + (["name"] if with_names else []) + [score_label]
    explained = any("reasons" in it for it in items)
    if explained:
        headers += ["similar_users", "because"]
    rows = []
    for it in items:
        row = [it["rank"], it["anime_id"]] + ([it["name"] or "?"] if with_names else []) + [_score(it["score"])]
        if explained:
            why = it.get("reasons")
            row += [why["similar_users"] if why else "-", _because(why)]
        rows.append(row)
    right = {0, 1, len(headers) - 1 - (2 if explained else 0)} | ({len(headers) - 2} if explained else set())
    return format_table(headers, rows, right=right)


def _version_line(d: dict) -> str:
    mark = " (current)" if d.get("current") else ""
    return (f"list version: {d['version']}{mark}\nmodel version: {d.get('model_version') or '-'}\n"
            f"written at:    {d.get('written_at') or '-'}")


def format_user(d: dict, with_names: bool) -> str:
    return (f"user {d['user_id']}: {len(d['items'])} items\n{_version_line(d)}\n\n"
            + _items_table(d["items"], with_names))


def format_anime(d: dict, with_names: bool) -> str:
    title = f"anime {d['anime_id']}" + (f" ({d['name']})" if d.get("name") else "")
    return (f"{title}: {len(d['items'])} neighbours\n{_version_line(d)}\n\n"
            + _items_table(d["items"], with_names, "similarity"))


def format_versions(vs: list[dict]) -> str:
    if not vs:
        return "no list versions in Redis"
    headers = ["", "version", "model", "state", "published_at", "written_at", "top_n", "neigh",
               "users", "anime", "keys", "memory"]
    rows = []
    for v in vs:
        mark = "current" if v["current"] else "previous" if v["previous"] else ""
        s = v["settings"] or {}
        rows.append([mark, v["version"], v["model_version"] or "-", v["state"], v["published_at"] or "-",
                     v["written_at"] or "-", s.get("top_n", "-"), s.get("neighbours", "-"),
                     v["users"], v["anime"], v["keys"], human_bytes(v["memory_bytes"])])
    return format_table(headers, rows, right={6, 7, 8, 9, 10, 11})


def format_diff(d: dict, with_names: bool) -> str:
    counts = ", ".join(f"{len(d[c])} {c}" for c in ("added", "removed", "moved", "same"))
    lines = [f"user {d['user_id']}: {d['against']} -> {d['version']}: {counts}"]
    for side in ("against", "version"):
        m = d["meta"][side]
        lines.append(f"{'old' if side == 'against' else 'new'}: {m['version']}{' (current)' if m['current'] else ''}"
                     f"  model {m['model_version'] or '-'}  written {m['written_at'] or '-'}")
    for side, v in (("against", d["against"]), ("version", d["version"])):
        if not d["present"][side]:
            lines.append(f"(user has no list in {v}: counted as empty)")
    headers = ["new", "old", "change", "anime_id"] + (["name"] if with_names else []) + ["old_score", "new_score"]
    rows = []
    for row in d["rows"]:
        change = {"added": "added", "removed": "removed", "same": "="}.get(row["change"])
        if change is None:
            change = f"+{row['delta']}" if row["delta"] > 0 else str(row["delta"])
        rows.append([row["new_rank"] or "-", row["old_rank"] or "-", change, row["anime_id"]]
                    + ([row["name"] or "?"] if with_names else [])
                    + [_score(row["old_score"]) or "-", _score(row["new_score"]) or "-"])
    right = {0, 1, 3, len(headers) - 2, len(headers) - 1}
    return "\n".join(lines) + "\n\n" + format_table(headers, rows, right=right)


def format_sample(sample: list[dict], with_names: bool, preview: int = 3) -> str:
    if not sample:
        return "no list keys in this version"
    headers = ["key", "kind", "id"] + (["name"] if with_names else []) + ["items", "top"]
    rows = []
    for s in sample:
        top = ", ".join(f"{(it['name'] or it['anime_id']) if with_names else it['anime_id']}:{it['score']:.3f}"
                        for it in s["items"][:preview])
        rows.append([s["key"], s["kind"], s["id"]] + ([s["name"] or ("-" if s["kind"] == "user" else "?")]
                                                      if with_names else []) + [s["n_items"], top])
    return f"{len(sample)} random keys of list version {sample[0]['version']}\n\n" + format_table(
        headers, rows, right={2, len(headers) - 2})


def online_report(r: redis.Redis, version: str | None = None) -> dict:
    """The feedback backlog and each list version's online figures, in total and per day (stored days, with
    those not final yet recomputed from the stream; nothing is written)."""
    from fuserank import feedback
    from fuserank.evaluation import online
    versions = online.by_version(online.figures(r), version)
    if version is not None and not versions:
        raise InspectError(f"no impressions of list version {version} in the feedback store")
    return {"backlog": feedback.backlog(r), "versions": versions}


def format_online(d: dict) -> str:
    backlog = d["backlog"]
    age = backlog["oldest_age_s"]
    lines = [f"feedback backlog: {backlog['events']} events" + (f", oldest {age:.0f}s" if age is not None else ""), ""]
    rows = []
    for version, entry in d["versions"].items():
        for day, f in [("total", entry["total"]), *entry["days"].items()]:
            rows.append([version if day == "total" else "", day, f["lists"], f["clicked"], f["hits"],
                         _score(f["click_share"]), _score(f["hit_rate_at_10"]), "yes" if f["final"] else "no"])
    if not rows:
        return "\n".join(lines + ["no impressions in the feedback store"])
    return "\n".join(lines) + format_table(["list version", "day", "lists", "clicked", "hits", "click share",
                                            "hit rate@10", "final"], rows, right={2, 3, 4, 5, 6})


# -- the command ------------------------------------------------------------------------------------
def inspect_parser() -> SettingsParser:
    p = SettingsParser("fuserank inspect", description="Look at the lists precompute stored in a live Redis "
                       "(read-only). Human tables by default, --json for scripts.")

    def add(name, help, named=True, versioned=True):
        s = p.add_subcommand(name, help)
        redis_url_flag(s)
        s.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if named:
            s.add_argument("--model", help="model directory (local or gs://) to name anime; Redis stores ids only")
        if versioned:
            s.add_argument("--version", help="list version to look at (default: the current one)")
        return s

    add("user", "a user's stored list (anime, score), list/model version, when written").add_argument(
        "user_id", type=int_in(0), metavar="USER_ID")
    add("anime", "an anime's stored neighbours").add_argument("anime_id", type=int_in(0), metavar="ANIME_ID")
    add("versions", "every list version present: current/previous, state, key counts, memory", False, False)
    s = add("diff", "how a user's list changed between two list versions")
    s.add_argument("user_id", type=int_in(0), metavar="USER_ID")
    s.add_argument("--against", required=True, help="the older list version to compare with")
    add("sample", "N random list keys of a version, decoded, to eyeball").add_argument(
        "n", type=int_in(1, 10000), metavar="N")
    add("online", "online evaluation per list version and day (served lists, click share, hit rate@10) and "
        "the feedback backlog", named=False)
    return p


def run_inspect(a) -> None:
    names = None
    model_version = None
    notes = []
    if getattr(a, "model", None):
        names, model_version = load_names(a.model)
    elif a.what not in ("versions", "online"):
        notes.append("anime names are not stored in Redis: showing ids only (pass --model MODEL_DIR to name them)")
    client = connect(target(a.redis_url, a.redis_cluster))
    try:
        if a.what == "user":
            result = inspect_user(client, a.user_id, a.version, names)
            text = format_user(result, names is not None)
        elif a.what == "anime":
            result = inspect_anime(client, a.anime_id, a.version, names)
            text = format_anime(result, names is not None)
        elif a.what == "versions":
            result = list_versions(client)
            text = format_versions(result)
        elif a.what == "online":
            result = online_report(client, a.version)
            text = format_online(result)
        elif a.what == "diff":
            result = diff_user(client, a.user_id, a.against, a.version, names)
            text = format_diff(result, names is not None)
        else:
            result = sample_keys(client, a.n, a.version, names)
            text = format_sample(result, names is not None)
            if len(result) < a.n:
                notes.append(f"asked for {a.n} keys, the version has only {len(result)} list keys")
        if names is not None and a.what in ("user", "anime", "diff"):
            versions = [result["version"]] + ([result["against"]] if a.what == "diff" else [])
            stray = {read_meta(client, v).get("model_version") for v in versions} - {model_version, None}
            if stray:
                notes.append(f"names come from model {model_version}; the list was written by model "
                             f"{', '.join(sorted(stray))}")
    except redis.RedisError as exc:
        raise InspectError(explain(exc, Tried(redis_url=a.redis_url))) from exc
    finally:
        client.close()
    print(json.dumps(result, indent=2) if a.json else text)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

