"""The Redis key layout and value encoding: the one module the writer, the API and the inspector share.

Lists live under their list version (model version + hash of the precompute settings), so a new
precompute never overwrites what is being served; one pointer names the version the API serves.

    fuserank:current                 -> list version being served
    fuserank:previous                -> the version it replaced (rollback target)
    fuserank:versions                -> sorted set: version -> publish time (unix seconds)
    fuserank:suppressed              -> set of user ids that were forgotten (never personalised again)
    fuserank:ratelimit:{s}:{w}:{c}   -> POST count of client hash c in window number w of s seconds (expires)
    fuserank:v:{version}:meta        -> hash: model_version, settings, counts, written_at, state
    fuserank:v:{version}:u:{user_id} -> user's hybrid top-N
    fuserank:v:{version}:a:{anime_id} -> anime's nearest neighbours
    fuserank:feedback:events         -> stream: every acknowledged feedback write (fuserank.feedback)
    fuserank:feedback:u:{user_id}    -> hash: anime_id -> the user's latest feedback entry
    fuserank:feedback:trimmed        -> hash: stream (every id below it was trimmed), index (entries <= it removed)
    fuserank:online:daily            -> hash: "{list_version}|{day}" -> online evaluation figures (JSON)
    fuserank:online:lock             -> held (SET NX EX) by the API worker refreshing the online figures
    fuserank:feedback:mark:{user_id} -> the newest feedback entry id of the user (read with their stored list)
    fuserank:feedback:fresh:{user_id} -> hash: the user's fresh list and the feedback it was built from
    fuserank:web:secret              -> the web page's CSRF signing secret, shared by every API pod

Those are the single-node names (the module's constants and ``meta`` / ``user`` / ``anime``). A Redis
Cluster uses ``Layout(cluster=True)``: what the publish changes or checks atomically (current, previous,
versions, every version's meta) and the suppression set read with them carry the hash tag ``{fuserank}``
and so share one slot, while user and anime lists keep their names and spread over every slot:

    {fuserank}:current  {fuserank}:previous  {fuserank}:versions  {fuserank}:suppressed
    {fuserank}:v:{version}:meta

The feedback and online-evaluation keys keep their names in both layouts: nothing changes or reads them
atomically together or with a pointer (single-key commands, one-key Lua scripts called directly, pipelines
without a transaction), so the per-user ones spread over every slot.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import accumulate


PREFIX = "fuserank"
CURRENT = f"{PREFIX}:current"
PREVIOUS = f"{PREFIX}:previous"
VERSIONS = f"{PREFIX}:versions"
SUPPRESSED = f"{PREFIX}:suppressed"   # set of user ids that asked to be forgotten
RATE_LIMIT = f"{PREFIX}:ratelimit"    # the API's fixed-window POST counters
FEEDBACK_EVENTS = f"{PREFIX}:feedback:events"
FEEDBACK_TRIMMED = f"{PREFIX}:feedback:trimmed"
ONLINE_DAILY = f"{PREFIX}:online:daily"
ONLINE_LOCK = f"{PREFIX}:online:lock"
WEB_SECRET = f"{PREFIX}:web:secret"
_VERSION_HEAD = f"{PREFIX}:v:"
_SEGMENTS = {"u": "user", "a": "anime"}


def list_version(model_version: str, settings_digest: str) -> str:
    return f"{model_version}-{settings_digest}"


def meta(version: str) -> str:
    return f"{PREFIX}:v:{version}:meta"


def user(version: str, user_id: int) -> str:
    return f"{PREFIX}:v:{version}:u:{int(user_id)}"


def anime(version: str, anime_id: int) -> str:
    return f"{PREFIX}:v:{version}:a:{int(anime_id)}"


def feedback_user(user_id: int) -> str:
    return f"{PREFIX}:feedback:u:{int(user_id)}"


def feedback_mark(user_id: int) -> str:
    return f"{PREFIX}:feedback:mark:{int(user_id)}"


def feedback_fresh(user_id: int) -> str:
    return f"{PREFIX}:feedback:fresh:{int(user_id)}"


def version_pattern(version: str) -> str:
    """MATCH pattern for an offline SCAN of one version's keys (inspection and clean-up, never requests)."""
    return f"{PREFIX}:v:{version}:*"


CLUSTER_TAG = "{" + PREFIX + "}"   # the hash tag of the keys that change together in a Redis Cluster


@dataclass(frozen=True)
class Layout:
    """The key names of one deployment: a single node (``cluster=False``: the names above) or a Redis Cluster.

    Callers get theirs from the client they talk to (``fuserank.redis_client.layout``), never from a
    process-wide switch.
    """

    cluster: bool = False

    @property
    def _head(self) -> str:
        return CLUSTER_TAG if self.cluster else PREFIX

    @property
    def current(self) -> str:
        return f"{self._head}:current"

    @property
    def previous(self) -> str:
        return f"{self._head}:previous"

    @property
    def versions(self) -> str:
        return f"{self._head}:versions"

    @property
    def suppressed(self) -> str:
        return f"{self._head}:suppressed"

    def meta(self, version: str) -> str:
        return f"{self._head}:v:{version}:meta"

    user = staticmethod(user)
    anime = staticmethod(anime)

    def version_pattern(self, version: str) -> str:
        """MATCH pattern of one version's list keys (on a single node its meta matches too)."""
        return version_pattern(version)

    def meta_pattern(self) -> str:
        """MATCH pattern of every version's meta (an offline SCAN for versions)."""
        return self.meta("*")


SINGLE, CLUSTER = Layout(cluster=False), Layout(cluster=True)


def parse_key(key: bytes | str) -> dict | None:
    """``{"version", "kind": "meta"|"user"|"anime", "id": int|None}`` for a list-version key, else None.

    The inverse of meta / user / anime, for offline inspection (of either Layout's names).
    """
    if isinstance(key, bytes):
        try:
            key = key.decode()
        except UnicodeDecodeError:
            return None
    if key.startswith(CLUSTER_TAG):
        key = PREFIX + key[len(CLUSTER_TAG):]
    if not key.startswith(_VERSION_HEAD):
        return None
    rest = key[len(_VERSION_HEAD):]
    if rest.endswith(":meta"):
        version = rest[:-len(":meta")]
        return {"version": version, "kind": "meta", "id": None} if version else None
    parts = rest.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or parts[1] not in _SEGMENTS:
        return None
    try:
        ident = int(parts[2])
    except ValueError:
        return None
    return {"version": parts[0], "kind": _SEGMENTS[parts[1]], "id": ident}


def compact_json(value) -> str:
    """JSON without spaces: the form stored lists are written in, and the API's live answers match it."""
    return json.dumps(value, separators=(",", ":"))


def item_head(anime_id, name) -> str:
    """``{"anime_id":ID,"name":"NAME"`` (unclosed): the start of a list item, and a whole reason once closed."""
    return f'{{"anime_id":{int(anime_id)},"name":{json.dumps(str(name))}'


def item_json(anime_id, name, score, reasons=None) -> str:
    """One list item, the JSON object the API returns: ``anime_id``, ``name``, ``score`` to 4 decimals and
    ``reasons`` (``{"because": [{"anime_id", "name"}, ...], "similar_users": n}``) when given. ASCII only."""
    tail = "" if reasons is None else f',"reasons":{compact_json(reasons)}'
    return f"{item_head(anime_id, name)},\"score\":{float(score):.4f}{tail}}}"


def encode_list(anime_ids, scores, names, reasons=None) -> bytes:
    """A stored list: ``OFFSETS\n[ITEM,...]`` of ``item_json`` items, best first, ready to be spliced into an
    API response. OFFSETS are the comma-separated byte offsets where each item ends in the array text, so
    the first ``n`` items are a slice (``slice_list``), not a parse and a re-encode."""
    reasons = reasons if reasons is not None else [None] * len(anime_ids)
    return _assemble([item_json(*item) for item in zip(anime_ids, names, scores, reasons)])


def _assemble(parts: list[str]) -> bytes:
    """The stored value from its ASCII item texts: offsets header, then the array."""
    ends = accumulate([len(p) + 1 for p in parts])   # each item and the "[" or "," before it
    return (",".join(map(str, ends)) + "\n[" + ",".join(parts) + "]").encode()


class ListEncoder:
    """``item_json`` items for one catalogue, byte for byte, at batch speed (the precompute encodes ~15M
    items; the API's live answers use the same encoder).

    Each anime's JSON fragments are built once; ``encode`` / ``array`` take encoded indices into
    ``anime_ids`` / ``names`` and, for explained lists, ``because`` (per item, up to a few encoded liked
    anime, -1 = none) and ``similar_users`` (per item). Everything is ASCII (``json.dumps`` escapes), so
    lengths in characters are the byte offsets.
    """

    def __init__(self, anime_ids, names):
        named = [item_head(a, n) for a, n in zip(anime_ids, names)]
        self.head = [f'{s},"score":' for s in named]
        self.ref = [s + "}" for s in named] + [""]               # index -1: no anime
        self.ref_next = ["," + s + "}" for s in named] + [""]    # a later one, after a comma

    def _parts(self, items, scores, because=None, similar_users=None) -> list[str]:
        head = self.head
        items = items.tolist() if hasattr(items, "tolist") else list(items)
        scores = scores.tolist() if hasattr(scores, "tolist") else list(scores)
        if because is None:
            return [f"{head[a]}{s:.4f}}}" for a, s in zip(items, scores)]
        ref, ref_next = self.ref, self.ref_next
        because = because.tolist() if hasattr(because, "tolist") else [list(b) for b in because]
        counts = similar_users.tolist() if hasattr(similar_users, "tolist") else list(similar_users)
        return [f'{head[a]}{s:.4f},"reasons":{{"because":[{ref[why[0]] if why else ""}'
                f'{"".join([ref_next[x] for x in why[1:]])}],"similar_users":{c}}}}}'
                for a, s, why, c in zip(items, scores, because, counts)]

    def encode(self, items, scores, because=None, similar_users=None) -> bytes:
        """The stored list (offsets header + array)."""
        return _assemble(self._parts(items, scores, because, similar_users))

    def array(self, items, scores, because=None, similar_users=None) -> bytes:
        """The JSON array alone: a live answer's items."""
        return ("[" + ",".join(self._parts(items, scores, because, similar_users)) + "]").encode()


def _split(value: bytes) -> tuple[list[int], bytes]:
    head, _, body = value.partition(b"\n")
    return ([int(x) for x in head.split(b",")] if head else []), body


def list_length(value: bytes) -> int:
    head = value[:value.index(b"\n")]
    return head.count(b",") + 1 if head else 0


def slice_list(value: bytes, n: int) -> bytes:
    """JSON array text of the first ``n`` items of a stored list (all of them when it holds fewer)."""
    if n <= 0:
        return b"[]"
    cut = value.index(b"\n")
    ends = value[:cut].split(b",", n)       # only the offsets up to the n-th are parsed
    if len(ends) <= n:
        return value[cut + 1:]
    return value[cut + 1:cut + 1 + int(ends[n - 1])] + b"]"


def decode_list(value: bytes | str) -> list[dict]:
    """The stored items as dicts (``anime_id``, ``name``, ``score``, optional ``reasons``)."""
    if isinstance(value, str):
        value = value.encode()
    return json.loads(_split(value)[1])


def decode_items(value: bytes | str) -> list[tuple[int, float]]:
    """``[(anime_id, score), ...]`` of a stored list, for inspection and comparisons."""
    return [(int(item["anime_id"]), float(item["score"])) for item in decode_list(value)]
