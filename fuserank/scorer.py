"""The two-stage hybrid scorer: the one place that turns embeddings and lists into a ranking.

Used by the Beam precompute (blocks of users) and by the API's live path (one user, or a new user
folded in), so both always produce the same list for the same user and settings.

Stage 1: the user's most similar users by embedding cosine vote for what they rated highly.
Stage 2: anime similar (cosine over anime embeddings, via the precomputed neighbour graph) to stage 1's
best picks and, optionally, to the user's own liked anime, along each anime's few nearest neighbours, each
link divided by its target's in-degree (``stage2_graph``), so hubs of the graph do not win for everyone.
Each term is min-max normalised per user over the candidates, then merged with one set of weights
(optionally with the model's own u.v cosine as a third term). Everything on the user's list is excluded.

How a block of users is computed (what the cost is, at 310k users x 17.5k anime x 128-d):

* similar users: exact (one ``block x users`` matmul + top-k) below ``ANN_MIN_USERS`` users; above it an
  IVF index (``fuserank.similarity.IVFIndex``: k-means cells, a few probed cells per query), because
  exact search is ~2.5e13 FLOP plus a top-k over 310k x 310k scores there;
* stage 1 is a sparse product (votes of the similar users @ liked matrix), stage 2 another one through
  the anime-neighbour graph (``stage2_neighbours`` links per anime, computed once): no all-anime
  rescoring per user.
  Their min-max normalisation is computed on the sparse entries (every value is >= 0, so a candidate
  without an entry is the row's 0), giving exactly the values the dense formula gives;
* the model's u.v over all anime is the one dense ``block x anime`` term (one BLAS matmul, 7e11 FLOP for
  everyone); only its per-row min/max are taken over all of it. Off the stage entries the final score is
  a non-decreasing function of raw u.v, so one partition finds the best ``n + TOP_MARGIN`` by u.v, and
  only those plus the stage entries whose u.v could reach them are scored exactly (``_top_n``); rows
  where a tie at that cut could matter are scored densely;
* candidate tests (not on the list, not adult) and the explanations' lookups use bitmaps of the block
  (1.1 MB for 512 x 17.5k), not dense tables.

Every float operation is the one the dense formulation performs, in the same order, so scores and lists
are identical to scoring with dense ``block x anime`` matrices (tests/test_scorer.py keeps that
reference); only the similar-user search above ``ANN_MIN_USERS`` is approximate.

``explain=True`` adds each returned item's reasons (``Ranked.because`` / ``Ranked.similar_users``, written
as JSON by ``keys.ListEncoder``): up to ``MAX_BECAUSE`` of the user's own liked anime with the
strongest neighbour-graph link to the item (stage 2), and how many of the user's stage-1 similar users
(those with positive similarity, i.e. the ones whose vote counts) rated the item highly.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from fuserank.artifacts import ModelArtifact
from fuserank.config import HybridSettings
from fuserank.similarity import IVFIndex, top_k_cosine, top_k_rows

SCORE_DECIMALS = 6  # rounding before ranking makes the order independent of BLAS blocking noise
ANN_MIN_USERS = 50_000  # from this many users the similar-user search is approximate (IVF), exact below
MAX_BECAUSE = 2         # liked anime named per recommended item
COUNT_IN_PRODUCT_ROWS = 64  # explained blocks this large count similar users inside the stage-1 product
TOP_MARGIN = 16         # extra best-u.v anime scored exactly per row before the final top-n


@dataclass
class Ranked:
    """Top-N per query row: encoded anime indices (-1 = padding) and their scores, best first.

    With ``explain``: ``because`` (rows x N x MAX_BECAUSE encoded liked anime, -1 = none, strongest link
    first) and ``similar_users`` (rows x N counts).
    """

    items: np.ndarray
    scores: np.ndarray
    because: np.ndarray | None = None
    similar_users: np.ndarray | None = None

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        keep = self.items[i] >= 0
        return self.items[i][keep], self.scores[i][keep]


def _rows_csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape) -> sp.csr_matrix:
    return sp.csr_matrix((vals.ravel(), (np.repeat(rows, cols.shape[1]), cols.ravel())), shape=shape)


def _minmax(x: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    lo = np.where(candidates, x, np.inf).min(axis=1, keepdims=True)
    hi = np.where(candidates, x, -np.inf).max(axis=1, keepdims=True)
    span = hi - lo
    out = (x - lo) / np.where(span > 0, span, 1.0)
    return np.where(candidates & (span > 0), out, 0.0).astype(np.float32)


def _segments(rows: np.ndarray) -> np.ndarray:
    """Start of each run of equal values in a sorted ``rows``."""
    return np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.empty(0, np.int64)


def _row_ids(x: sp.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(x.shape[0], dtype=np.int32), np.diff(x.indptr))


class _Bits:
    """A set of (row, anime) pairs of a block as a bitmap (rows padded to 64 bits): 1.1 MB for 512 x 17.5k,
    so lookups of millions of random pairs stay in cache, unlike a dense block x anime table."""

    def __init__(self, b: int, a: int):
        self.b, self.a, self.width = b, a, (a + 63) // 64 * 64
        self.bits = np.zeros(b * self.width // 8, np.uint8)

    def key(self, rows, cols) -> np.ndarray:
        return np.asarray(rows, np.int64) * self.width + cols

    def add(self, keys: np.ndarray) -> None:
        np.bitwise_or.at(self.bits, keys >> 3, np.left_shift(1, keys & 7).astype(np.uint8))

    def has(self, keys: np.ndarray) -> np.ndarray:
        return (self.bits[keys >> 3] >> (keys & 7).astype(np.uint8)) & 1 == 1

    def per_row(self) -> np.ndarray:
        return np.bitwise_count(self.bits.reshape(self.b, -1)).sum(axis=1, dtype=np.int64)

    def dense(self, rows) -> np.ndarray:
        return np.unpackbits(self.bits.reshape(self.b, -1)[rows], axis=1, bitorder="little")[:, :self.a] == 1


class _Candidates:
    """The anime each row of a block may be recommended: not on the user's list, not adult unless asked."""

    def __init__(self, on_list: sp.csr_matrix, adult: np.ndarray):
        coo = on_list.tocoo()
        b, a = on_list.shape
        self.excluded = _Bits(b, a)
        self.excluded.add(self.excluded.key(coo.row, coo.col))
        if len(adult):
            self.excluded.add(self.excluded.key(np.repeat(np.arange(b), len(adult)), np.tile(adult, b)))
        self.shape = (b, a)
        self.count = a - self.excluded.per_row()

    def has(self, rows, cols) -> np.ndarray:
        return ~self.excluded.has(self.excluded.key(rows, cols))

    def dense(self, rows) -> np.ndarray:
        return ~self.excluded.dense(rows)


def _normalise_csr(x: sp.csr_matrix, candidates: "_Candidates") -> sp.csr_matrix:
    """``_minmax(x.toarray(), candidates)`` on x's own entries (the same float32 values; 0 at entries that
    are not candidates): every other position of the dense result is 0, because x >= 0 and a candidate
    without an entry is then the row's minimum. Falls back to the dense formula if x has negative values."""
    b, a = x.shape
    r, c, v = _row_ids(x), x.indices, x.data
    keep = candidates.has(r, c)
    lo = np.full(b, np.inf, np.float32)
    hi = np.full(b, -np.inf, np.float32)
    count = np.zeros(b, np.int64)
    filled = np.flatnonzero(np.diff(x.indptr) > 0)
    if len(filled):
        starts = x.indptr[filled]
        hi[filled] = np.maximum.reduceat(np.where(keep, v, -np.inf), starts)
        lo[filled] = np.minimum.reduceat(np.where(keep, v, np.inf), starts)
        count[filled] = np.add.reduceat(keep, starts, dtype=np.int64)
    implicit = count < candidates.count      # some candidate of the row has no entry: it holds a 0
    if (implicit & (lo < 0)).any():
        return sp.csr_matrix(_minmax(x.toarray(), candidates.dense(np.arange(b))))
    lo = np.where(implicit, np.minimum(lo, 0), lo)
    hi = np.where(implicit, np.maximum(hi, 0), hi)
    span = hi - lo
    good = span > 0
    out = (v - lo[r]) / np.where(good, span, 1.0)[r]
    return sp.csr_matrix((np.where(keep & good[r], out, 0.0).astype(np.float32), x.indices, x.indptr), shape=x.shape)


def _row_max(x: sp.csr_matrix) -> np.ndarray:
    """Per-row max of a CSR with non-negative values (0 for an empty row)."""
    out = np.zeros(x.shape[0], np.float64)
    filled = np.flatnonzero(np.diff(x.indptr) > 0)
    if len(filled):
        out[filled] = np.maximum.reduceat(x.data, x.indptr[filled])
    return out


def _row_top_positive(r: np.ndarray, c: np.ndarray, v: np.ndarray, k: int) -> np.ndarray:
    """Positions of each row's k largest positive values (``r`` ascending; ties to the lower column):
    the non-zero part of what ``top_k_rows`` picks on the dense matrix (zero picks add nothing)."""
    v = v.copy()
    picked = []
    for _ in range(k):
        live = np.flatnonzero(v > 0)
        if not len(live):
            break
        rr, cc, vv = r[live], c[live], v[live]
        starts = _segments(rr)
        seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(rr)]))
        is_max = vv == np.maximum.reduceat(vv, starts)[seg]
        first_col = np.minimum.reduceat(np.where(is_max, cc, np.iinfo(cc.dtype).max), starts)
        chosen = is_max & (cc == first_col[seg])
        picked.append(live[chosen])
        v[live[chosen]] = 0
    return np.concatenate(picked) if picked else np.empty(0, np.int64)


@dataclass
class _Block:
    """A block's terms before the final ranking (see HybridScorer._prepare)."""

    x: np.ndarray | None        # raw u.v (block x anime), -inf where not a candidate; None if weight_model == 0
    lo: np.ndarray | None       # per-row min / span of u.v over the candidates
    span: np.ndarray | None
    stages: np.ndarray          # w1 * stage1 + w2 * stage2 (block x anime; 0 off their sparse entries)
    candidates: _Candidates
    nbr: np.ndarray             # stage 1's similar users and their cosine
    nbr_sim: np.ndarray
    voted: sp.csr_matrix | None = None   # per stage-1 entry, how many voters liked it (explained blocks)
    stage_max: np.ndarray | None = None  # per row, an upper bound of ``stages``


def anime_neighbours(model: ModelArtifact, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each anime's k nearest anime by cosine (itself excluded): the lists stage 2 and /similar use."""
    return top_k_cosine(model.anime_emb, model.anime_emb, k, exclude_self=True)


def stage2_graph(idx: np.ndarray, sim: np.ndarray, by_indegree: bool) -> sp.csr_matrix:
    """Stage 2's anime x anime link weights: each anime's listed neighbours (``idx``, best first) with
    their non-negative cosine, divided by the target's in-degree (how many lists hold it) when ``by_indegree``.

    Cosine neighbour lists have hubs: a few anime sit in hundreds of lists, and summing links from a
    user's liked anime ranks them first for everyone. Short lists (an anime's one or two nearest, often
    its sequel or its closest kin) divided by in-degree keep what is specific to each liked anime. On the
    2020 validation carves (mean of seeds 0-2): raw 50-long lists at weights 0.05 / 0.05 (the setting
    before) 0.2309, 2-long lists per in-degree at 0.05 / 0.15 (served) 0.2557, the model's own score
    0.2319 (README, "Reading it").
    """
    a = len(idx)
    graph = _rows_csr(np.arange(a), idx, np.clip(sim, 0, None), (a, a))
    if by_indegree:
        indegree = np.bincount(graph.indices[graph.data > 0], minlength=a)
        graph.data = (graph.data / np.maximum(indegree, 1)[graph.indices]).astype(np.float32)
    return graph


class HybridScorer:
    """``user_search``: ``"auto"`` (IVF from ``ANN_MIN_USERS`` users, exact below), ``"exact"`` or ``"ivf"``."""

    def __init__(self, model: ModelArtifact, settings: HybridSettings, neighbours=None, user_search: str = "auto"):
        if user_search not in ("auto", "exact", "ivf"):
            raise ValueError(f"user_search must be auto, exact or ivf, got {user_search!r}")
        self.model = model
        self.settings = settings
        self.neighbour_idx, self.neighbour_sim = neighbours or anime_neighbours(model, settings.neighbours)
        k = settings.stage2_neighbours or self.neighbour_idx.shape[1]
        self.graph = stage2_graph(self.neighbour_idx[:, :k], self.neighbour_sim[:, :k], settings.stage2_by_indegree)
        self.liked = model.liked_matrix(settings.like_threshold)
        use_ivf = user_search == "ivf" or (user_search == "auto" and model.n_users >= ANN_MIN_USERS)
        self.user_index = IVFIndex(model.user_emb) if use_ivf else None

    # -- public ---------------------------------------------------------------------------------------
    def user_order(self) -> np.ndarray:
        """Encoded users in the order a batch job should score them: cell by cell with the IVF index (one
        candidate set and one matmul per cell), else 0..n-1."""
        if self.user_index is not None:
            return self.user_index.order
        return np.arange(self.model.n_users, dtype=np.int64)

    def score_users(self, users: np.ndarray, n: int | None = None, include_adult: bool = False,
                    exclude: sp.csr_matrix | None = None, explain: bool = False) -> Ranked:
        """Hybrid top-n for encoded users (a block); ``exclude`` adds per-row anime to leave out."""
        users = np.asarray(users, dtype=np.int64)
        lists = self.model.lists[users]
        if exclude is not None:
            lists = lists + exclude
        return self.score_vectors(self.model.user_emb[users], self.liked[users], lists, users, n, include_adult,
                                  explain)

    def score_vectors(self, queries: np.ndarray, liked: sp.csr_matrix, on_list: sp.csr_matrix,
                      self_index: np.ndarray | None = None, n: int | None = None,
                      include_adult: bool = False, explain: bool = False) -> Ranked:
        """The hybrid top-n for arbitrary user vectors: model users, or new users folded into the space."""
        block = self._prepare(queries, liked, on_list, self_index, include_adult, explain)
        items, scores = self._top_n(block, n or self.settings.top_n)
        items[~np.isfinite(scores)] = -1
        ranked = Ranked(items, np.where(np.isfinite(scores), scores, 0.0).astype(np.float32))
        if explain:
            ranked.because, ranked.similar_users = self._explain(items, liked, block)
        return ranked

    def combined_scores(self, queries: np.ndarray, liked: sp.csr_matrix, on_list: sp.csr_matrix,
                        self_index: np.ndarray | None = None, include_adult: bool = False) -> np.ndarray:
        """Dense (users x anime) hybrid scores in [0, 1]; -inf where an anime is not a candidate."""
        block = self._prepare(queries, liked, on_list, self_index, include_adult)
        return self._dense(block, np.arange(queries.shape[0]))

    def similar_users(self, queries: np.ndarray, self_index: np.ndarray | None = None):
        """Stage 1's similar users per query: (indices, cosine), best first; -1 / -inf for none."""
        s, m = self.settings, self.model
        if self.user_index is not None:
            return self.user_index.search(queries, s.similar_users, self_index)
        user_sims = queries @ m.user_emb.T
        if self_index is not None:
            known = self_index >= 0
            user_sims[np.flatnonzero(known), self_index[known]] = -np.inf
        return top_k_rows(user_sims, s.similar_users)

    # -- the hybrid ----------------------------------------------------------------------------------

    @cached_property
    def _liked_complex(self) -> sp.csr_matrix:
        return self.liked.astype(np.complex64)

    def _prepare(self, queries, liked, on_list, self_index, include_adult, explain=False) -> _Block:
        """Stage 1 and 2 (sparse, normalised, weighted and summed) and the raw model term of a block."""
        s, m = self.settings, self.model
        b = queries.shape[0]
        rows = np.arange(b)
        adult = np.flatnonzero(m.adult_mask) if not include_adult else np.empty(0, np.int64)
        candidates = _Candidates(on_list, adult)

        nbr, nbr_sim = self.similar_users(queries, self_index)
        voters = nbr >= 0
        weight = np.clip(nbr_sim[voters], 0, None)
        where = (np.repeat(rows, nbr.shape[1])[voters.ravel()], nbr[voters])
        voted = None
        if explain and b >= COUNT_IN_PRODUCT_ROWS:
            # one complex product gives stage 1 (real part: bit for bit the float32 product, as x*1 - 0*0 = x)
            # and, per entry, how many voters with positive similarity liked it (imaginary part)
            votes = sp.csr_matrix(((weight + 1j * (weight > 0)).astype(np.complex64), where), shape=(b, m.n_users))
            both = votes @ self._liked_complex
            raw1 = sp.csr_matrix((both.data.real.astype(np.float32), both.indices, both.indptr), shape=both.shape)
            voted = sp.csr_matrix((np.rint(both.data.imag).astype(np.int32), both.indices, both.indptr),
                                  shape=both.shape)
        else:
            raw1 = sp.csr_matrix((weight, where), shape=(b, m.n_users)) @ self.liked
        stage1 = _normalise_csr(raw1, candidates)

        r1 = _row_ids(stage1)
        pick = _row_top_positive(r1, stage1.indices, stage1.data, s.stage1_seeds)
        seeds = sp.csr_matrix((stage1.data[pick], (r1[pick], stage1.indices[pick])), shape=(b, m.n_anime))
        if s.expand_own_likes:
            seeds = seeds + liked
        stage2 = _normalise_csr((seeds @ self.graph).tocsr(), candidates)
        stages = np.zeros((b, m.n_anime), np.float32)
        flat = stages.reshape(-1)
        flat[r1.astype(np.int64) * m.n_anime + stage1.indices] = s.weight_stage1 * stage1.data
        flat[_row_ids(stage2).astype(np.int64) * m.n_anime + stage2.indices] += s.weight_stage2 * stage2.data

        x = lo = span = None
        if s.weight_model > 0:
            x = queries @ m.anime_emb.T
            coo = on_list.tocoo()
            x[coo.row, coo.col] = np.inf
            x[:, adult] = np.inf
            lo = x.min(axis=1)
            x[coo.row, coo.col] = -np.inf
            x[:, adult] = -np.inf
            span = x.max(axis=1) - lo
        stage_max = (s.weight_stage1 * _row_max(stage1) + s.weight_stage2 * _row_max(stage2)).astype(np.float64)
        return _Block(x, lo, span, stages, candidates, nbr, nbr_sim, voted, stage_max * (1 + 1e-6))

    def _final(self, block: _Block, rows: np.ndarray, x: np.ndarray | None, t: np.ndarray) -> np.ndarray:
        """The hybrid score from raw u.v ``x`` and the summed stage terms ``t`` at positions of ``rows``:
        the dense formula's float32 operations in its order (min-max, weights, sum, / total, rounding)."""
        s = self.settings
        if x is not None:
            lo, span = block.lo[rows], block.span[rows]
            z = (x - lo) / np.where(span > 0, span, 1.0)
            if s.weight_model != 1.0:
                z = s.weight_model * z
            z = t + z
        else:
            z = t.astype(np.float32)
        total = s.weight_stage1 + s.weight_stage2 + s.weight_model
        return np.round(z / (total or 1.0), SCORE_DECIMALS)

    def _dense(self, block: _Block, rows: np.ndarray) -> np.ndarray:
        """Dense hybrid scores of some rows of the block; -inf where not a candidate."""
        t = block.stages[rows]
        if block.x is None:
            out = self._final(block, rows, None, t)
            out[~block.candidates.dense(rows)] = -np.inf
            return out
        return self._final(block, rows[:, None], block.x[rows], t)

    def _top_n(self, block: _Block, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-n per row of the hybrid, exactly as ``top_k_rows`` on the dense scores, from a superset.

        Where the stage terms are 0 the score is a non-decreasing function of raw u.v, so the best
        ``n + TOP_MARGIN`` anime by u.v, plus the stage entries whose u.v is high enough to reach the n-th
        score of those (a bound with a 1e-4 margin), hold the top n; only they are scored. A row is
        certain when the score its u.v cut-off would get is below its n-th score (nothing left out can
        tie it); other rows (ties there, or fewer than n candidates) are scored densely.
        """
        s = self.settings
        b, a = block.candidates.shape
        n = min(n, a)
        if block.x is None or b == 0:
            return top_k_rows(self._dense(block, np.arange(b)), n)
        m = min(n + TOP_MARGIN, a)
        rows = np.arange(b)
        sup, sup_x = top_k_rows(block.x, m)                      # (b, m): best raw u.v, best first
        sup_y = self._final(block, rows[:, None], sup_x, np.take_along_axis(block.stages, sup, axis=1))
        nth = -np.sort(-sup_y, axis=1)[:, n - 1]
        # stage entries that could reach the n-th score of the superset: u.v above a per-row bound
        total = s.weight_stage1 + s.weight_stage2 + s.weight_model
        need = ((nth.astype(np.float64) - 1e-4) * total - block.stage_max) / s.weight_model
        bound = np.where(block.span > 0, block.lo + block.span * np.minimum(need, 1.0), -np.inf).astype(np.float32)
        er, ec = np.nonzero(block.x >= bound[:, None])
        staged = block.stages[er, ec] > 0
        er, ec = er[staged], ec[staged]
        in_sup = np.isin(er.astype(np.int64) * a + ec, (rows[:, None].astype(np.int64) * a + sup).ravel())
        er, ec = er[~in_sup], ec[~in_sup]
        ey = self._final(block, er, block.x[er, ec], block.stages[er, ec])
        extra = ey >= nth[er]
        cand_row = np.concatenate([np.repeat(rows, m), er[extra]])
        cand_col = np.concatenate([sup.ravel(), ec[extra]]).astype(np.int64)
        cand_y = np.concatenate([sup_y.ravel(), ey[extra]])
        order = np.lexsort((cand_col, -cand_y, cand_row))
        first = np.r_[0, np.cumsum(np.bincount(cand_row, minlength=b))[:-1]]
        take = order[(first[:, None] + np.arange(n)).ravel()]
        items = cand_col[take].reshape(b, n).astype(np.int32)
        scores = cand_y[take].reshape(b, n).astype(np.float32)
        if m < a:
            cut = self._final(block, rows, sup_x[:, -1], np.zeros(b, np.float32))
            unsure = np.flatnonzero(~(cut < scores[:, -1]))
            if len(unsure):
                items[unsure], scores[unsure] = top_k_rows(self._dense(block, unsure), n)
        return items, scores

    # -- explanations (the returned top-n only) -------------------------------------------------------
    def _explain(self, items: np.ndarray, liked: sp.csr_matrix, block: _Block):
        """(because, similar_users) for each returned item; see the module docstring.

        Both walk only what the user's lists already touch, the liked anime's neighbour lists (stage 2)
        and the similar users' liked anime (stage 1), testing each pair against a bitmap of the returned
        (user, anime) pairs; nothing is scored again.
        """
        b, n = items.shape
        because = np.full((b, n, MAX_BECAUSE), -1, np.int32)
        shown = _Bits(b, self.model.n_anime)
        vr, vp = np.nonzero(items >= 0)
        shown_keys = shown.key(vr, items[vr, vp])
        shown.add(shown_keys)
        by_key = np.argsort(shown_keys)
        sorted_keys, sorted_pos = shown_keys[by_key], vp[by_key]

        def position(keys):
            return sorted_pos[np.searchsorted(sorted_keys, keys)]

        # stage 2: the user's liked anime whose neighbour list holds the item, strongest link first
        liked = liked.tocsr()
        lu, ll = _row_ids(liked), liked.indices
        keys = shown.key(lu[:, None], self.neighbour_idx[ll])
        hr, hk = np.nonzero(shown.has(keys))
        weight = self.neighbour_sim[ll[hr], hk]
        good = weight > 0
        hr, hk, weight = hr[good], hk[good], weight[good]
        if len(hr):
            u, p, src = lu[hr], position(keys[hr, hk]), ll[hr]
            order = np.lexsort((src, -weight, p, u))
            u, p, src = u[order], p[order], src[order]
            starts = _segments(u.astype(np.int64) * n + p)
            within = np.arange(len(u)) - np.repeat(starts, np.diff(np.r_[starts, len(u)]))
            keep = within < MAX_BECAUSE
            because[u[keep], p[keep], within[keep]] = src[keep]

        # stage 1: the similar users (positive similarity: the ones that vote) who rated the item highly
        if block.voted is not None:          # counted by the stage-1 product itself
            vr = _row_ids(block.voted)
            keys = shown.key(vr, block.voted.indices)
            hit = np.flatnonzero(shown.has(keys))
            counts = np.zeros(b * n, np.int32)
            counts[vr[hit].astype(np.int64) * n + position(keys[hit])] = block.voted.data[hit]
            return because, counts.reshape(b, n)
        nbr, nbr_sim = block.nbr, block.nbr_sim
        vu, vj = np.nonzero((nbr >= 0) & (nbr_sim > 0))
        who = nbr[vu, vj]
        first = self.liked.indptr[who]
        lens = self.liked.indptr[who + 1] - first
        owner = np.repeat(vu.astype(np.int64), lens)
        at = np.repeat(first - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
        keys = shown.key(owner, self.liked.indices[at])
        hit = np.flatnonzero(shown.has(keys))
        counts = np.bincount(owner[hit] * n + position(keys[hit]), minlength=b * n).reshape(b, n).astype(np.int32)
        return because, counts
