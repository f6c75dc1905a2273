"""Classical top-N baselines for the offline comparison.

Every method follows the same small interface so the harness (and the lead's TensorFlow methods)
can be plugged in interchangeably::

    model = Method(...).fit(train_csr)          # users x items CSR of raw 1-10 ratings
    scores = model.score(users)                 # (len(users), n_items) float32, higher = better

Scores are computed for a block of users at once with sparse / dense matrix products; the
harness masks the user's train items itself (:func:`fuserank.evaluation.metrics.top_k`).

Methods (all on the implicit "rated" signal unless stated):

* :class:`Popularity` - number of train ratings per item.
* :class:`ItemKNN` - cosine over the binary user-item matrix; each candidate item keeps its
  ``k`` most similar items; score(u, i) = sum of sim(i, j) over the user's train items j among
  the ``k`` neighbours of i (Sarwar et al. 2001 neighbourhood of the target item).
* :class:`UserKNN` - cosine over mean-centred ratings; the ``k`` most similar other users;
  score(u, i) = sum of the similarities of the neighbours who rated i.
* :class:`ImplicitALS` - Hu, Koren & Volinsky (2008) weighted matrix factorisation with
  confidence ``c = 1 + alpha * r`` on observed pairs (``r`` = the rating by default, or 1),
  preference 1 on observed pairs and 0 elsewhere; alternating exact least-squares solves by warm-started
  conjugate gradient (as in the ``implicit`` library), fixed seed.
* :class:`EASE` - Steck (2019) closed-form item-item model on the binary matrix, ``lambda``
  chosen on a validation split carved from the train split.
"""
from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from .metrics import ndcg_at_k, top_k
from .protocol import validation_split

__all__ = [
    "Recommender",
    "Popularity",
    "ItemKNN",
    "UserKNN",
    "ImplicitALS",
    "EASE",
    "EASE_LAMBDA_GRID",
    "binarize",
    "evaluate_ndcg",
]

log = logging.getLogger("fuserank.evaluate")

#: EASE regularisation grid searched on the validation split.
EASE_LAMBDA_GRID: tuple[float, ...] = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)

# target size of one dense (rows x items) float block, in elements (~256 MB of float32)
_BLOCK_ELEMENTS = 64_000_000


def binarize(train_csr: sp.spmatrix, dtype=np.float32) -> sp.csr_matrix:
    """The implicit "rated" matrix: 1 wherever ``train_csr`` has a stored positive rating."""
    m = sp.csr_matrix(train_csr, dtype=np.float64, copy=True)
    m.sum_duplicates()
    m.data = (m.data > 0).astype(np.float64)
    m.eliminate_zeros()
    m.sort_indices()
    return m.astype(dtype)


def _row_blocks(n_rows: int, n_cols: int, max_elements: int = _BLOCK_ELEMENTS) -> Iterable[slice]:
    size = max(1, int(max_elements // max(1, n_cols)))
    for start in range(0, n_rows, size):
        yield slice(start, min(n_rows, start + size))


def _as_users(users) -> np.ndarray:
    return np.asarray(users, dtype=np.int64).reshape(-1)


class Recommender:
    """Interface: ``fit(train_csr) -> self`` and ``score(users) -> (len(users), n_items) float32``."""

    name = "recommender"

    def fit(self, train_csr: sp.spmatrix) -> "Recommender":  # pragma: no cover - interface
        raise NotImplementedError

    def score(self, users: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params})"

    def params(self) -> dict:
        """Hyper-parameters (after fitting: including tuned ones), for logs and reports."""
        return {}


def evaluate_ndcg(model: Recommender, train_csr: sp.spmatrix, heldout_csr: sp.spmatrix,
                  k: int = 10) -> float:
    """Mean NDCG@k of a fitted model on ``heldout_csr`` (candidates exclude ``train_csr`` items),
    over users with at least one held-out rating. Used for validation tuning."""
    train_csr = sp.csr_matrix(train_csr)
    heldout_csr = sp.csr_matrix(heldout_csr)
    users = np.flatnonzero(np.diff(heldout_csr.indptr))
    tops = []
    for blk in _row_blocks(len(users), train_csr.shape[1]):
        u = users[blk]
        tops.append(top_k(model.score(u), train_csr[u], k))
    if not tops:
        return float("nan")
    return ndcg_at_k(np.concatenate(tops), heldout_csr[users], k).mean


# --------------------------------------------------------------------------------------------
class Popularity(Recommender):
    """Number of train ratings per item (the same list for every user)."""

    name = "popularity"

    def fit(self, train_csr):
        self.counts_ = np.diff(binarize(train_csr).tocsc().indptr).astype(np.float32)
        return self

    def score(self, users):
        users = _as_users(users)
        return np.tile(self.counts_, (len(users), 1))


# --------------------------------------------------------------------------------------------
class ItemKNN(Recommender):
    """Item-based top-N with binary cosine similarity and ``k`` neighbours per item.

    ``sim(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|)``; every item keeps its ``k`` most similar
    other items ``N_k`` (ties: lower index; only positive similarities).

    * ``neighbourhood="target"`` (default, Sarwar et al. 2001): the score of candidate ``i`` for
      user ``u`` is ``sum_{j in I_u & N_k(i)} sim(i, j)``, i.e. the similarities of the
      candidate's ``k`` nearest items that the user rated;
    * ``neighbourhood="source"`` (Deshpande & Karypis 2004 / the ``implicit`` library): the
      score is ``sum_{j in I_u, i in N_k(j)} sim(j, i)``, i.e. each of the user's items votes for
      its own ``k`` nearest items.
    """

    name = "item-KNN"

    def __init__(self, k: int = 50, neighbourhood: str = "target"):
        if neighbourhood not in ("target", "source"):
            raise ValueError("neighbourhood must be 'target' or 'source'")
        self.k = int(k)
        self.neighbourhood = neighbourhood

    def params(self):
        return {"k": self.k, "neighbourhood": self.neighbourhood}

    def fit(self, train_csr):
        X = binarize(train_csr)
        self.X_ = X
        n_items = X.shape[1]
        XT = X.T.tocsr()
        norms = np.sqrt(np.asarray(X.sum(axis=0)).ravel()).astype(np.float32)
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        rows, cols, vals = [], [], []
        for blk in _row_blocks(n_items, n_items, max_elements=_BLOCK_ELEMENTS // 4):
            co = (XT[blk] @ X).toarray()  # co-occurrence counts, (block, n_items)
            sim = co * inv[blk, None] * inv[None, :]
            idx = np.arange(blk.start, blk.stop)
            sim[idx - blk.start, idx] = -np.inf  # an item is not its own neighbour
            sim[sim <= 0] = -np.inf
            nb = top_k(sim, None, self.k)
            r = np.repeat(idx, nb.shape[1])
            c = nb.ravel()
            ok = c >= 0
            rows.append(r[ok])
            cols.append(c[ok])
            vals.append(sim[r[ok] - blk.start, c[ok]])
        # W[j, i] = weight of the user's item j for candidate i
        W = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n_items, n_items), dtype=np.float32)  # row = item, cols = N_k
        self.W_ = W.T.tocsr() if self.neighbourhood == "target" else W
        return self

    def score(self, users):
        users = _as_users(users)
        return (self.X_[users] @ self.W_).toarray().astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
class UserKNN(Recommender):
    """User-based top-N with cosine over mean-centred ratings.

    Each user's ratings are centred by the user's mean rating; ``sim(u, v)`` is the cosine of the
    centred rating vectors (zero for a user whose ratings are all equal). The ``k`` most similar
    other users (ties: lower index) are the neighbours; the score of item ``i`` is the sum of the
    similarities of the neighbours who rated ``i`` (in train).
    """

    name = "user-KNN"

    def __init__(self, k: int = 50, positive_only: bool = False):
        self.k = int(k)
        self.positive_only = bool(positive_only)

    def params(self):
        return {"k": self.k, "positive_only": self.positive_only}

    def fit(self, train_csr):
        R = sp.csr_matrix(train_csr, dtype=np.float64, copy=True)
        R.sum_duplicates()
        R.sort_indices()
        counts = np.diff(R.indptr)
        sums = np.asarray(R.sum(axis=1)).ravel()
        means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        C = R.copy()
        C.data = C.data - np.repeat(means, counts)
        norms = np.sqrt(np.asarray(C.multiply(C).sum(axis=1)).ravel())
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 1e-12)
        C = sp.csr_matrix(sp.diags(scale) @ C)
        C.eliminate_zeros()
        self.C_ = C.astype(np.float32)
        self.CT_ = self.C_.T.tocsr()
        self.X_ = binarize(R)
        self.means_ = means
        return self

    def neighbours(self, users):
        """``(idx, sim)``: the ``k`` nearest other users of each user (``idx`` -1 = none)."""
        users = _as_users(users)
        sim = (self.C_[users] @ self.CT_).toarray()
        sim[np.arange(len(users)), users] = -np.inf
        if self.positive_only:
            sim[sim <= 0] = -np.inf
        idx = top_k(sim, None, self.k)
        vals = np.take_along_axis(sim, np.maximum(idx, 0), axis=1)
        vals[idx < 0] = 0.0
        return idx, vals.astype(np.float32)

    def score(self, users):
        users = _as_users(users)
        idx, vals = self.neighbours(users)
        rows = np.repeat(np.arange(len(users)), idx.shape[1])
        ok = idx.ravel() >= 0
        W = sp.csr_matrix((vals.ravel()[ok], (rows[ok], idx.ravel()[ok])),
                          shape=(len(users), self.X_.shape[0]))
        return (W @ self.X_).toarray().astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
class ImplicitALS(Recommender):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008).

    Minimises ``sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + reg (|X|^2 + |Y|^2)`` with ``p_ui = 1`` on
    observed pairs and 0 elsewhere, ``c_ui = 1 + alpha * r_ui`` on observed pairs and 1 elsewhere;
    ``r_ui`` is 1 (``confidence="binary"``) or the raw rating (``confidence="rating"``).
    Each half-step solves every row's regularised normal equations
    ``(Y'Y + Y' (C_u - I) Y + reg I) x_u = Y' C_u p_u`` with ``cg_steps`` warm-started
    conjugate-gradient iterations, vectorised over all rows (``cg_steps=None``: exact batched
    dense solves). Factors start at ``N(0, 0.01^2)`` from ``numpy.random.default_rng(seed)``.

    Defaults: 64 factors, 15 sweeps, ``reg=0.1``, ``c = 1 + rating`` (``confidence="rating"``,
    ``alpha=1``), i.e. HKV's linear confidence with the explicit rating as the observed strength
    and no tuned constant; the result is sensitive to ``confidence`` and ``alpha``, much less to ``reg``
    (figures: docs/evaluation/experiments.md).
    """

    name = "implicit ALS"

    def __init__(self, factors: int = 64, reg: float = 0.1, alpha: float = 1.0,
                 iterations: int = 15, confidence: str = "rating", cg_steps: int | None = 3,
                 seed: int = 0):
        if confidence not in ("binary", "rating"):
            raise ValueError("confidence must be 'binary' or 'rating'")
        self.factors = int(factors)
        self.reg = float(reg)
        self.alpha = float(alpha)
        self.iterations = int(iterations)
        self.confidence = confidence
        self.cg_steps = cg_steps
        self.seed = int(seed)

    def params(self):
        return {"factors": self.factors, "reg": self.reg, "alpha": self.alpha,
                "iterations": self.iterations, "confidence": self.confidence,
                "cg_steps": self.cg_steps, "seed": self.seed}

    def _weights(self, train_csr) -> sp.csr_matrix:
        R = sp.csr_matrix(train_csr, dtype=np.float32, copy=True)
        R.sum_duplicates()
        R.data[R.data < 0] = 0
        R.eliminate_zeros()
        R.sort_indices()
        if self.confidence == "binary":
            R.data[:] = 1.0
        R.data = (self.alpha * R.data).astype(np.float32)  # c_ui - 1
        return R

    def _solve(self, Cm1: sp.csr_matrix, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
        """New row factors given the fixed column factors ``Y`` (``Cm1`` = c - 1, rows x cols)."""
        f = Y.shape[1]
        YtY = (Y.T @ Y).astype(np.float64) + self.reg * np.eye(f)
        # right-hand side: b_u = sum_i c_ui y_i
        Cfull = Cm1.copy()
        Cfull.data = Cfull.data + 1.0
        B = np.asarray(Cfull @ Y, dtype=np.float64)
        cols = Cm1.indices
        w = Cm1.data
        if self.cg_steps is None:
            # A_u = Y'Y + reg I + sum_i (c_ui - 1) y_i y_i'  ==  YtY + (Cm1 @ O)_u  with the
            # row-wise outer products O_i = vec(y_i y_i') (a sparse x dense product)
            Yd = Y.astype(np.float64)
            O = (Yd[:, :, None] * Yd[:, None, :]).reshape(Y.shape[0], f * f)
            A = np.empty((Cm1.shape[0], f, f))
            for blk in _row_blocks(Cm1.shape[0], f * f, max_elements=_BLOCK_ELEMENTS // 4):
                A[blk] = YtY + np.asarray(Cm1[blk].astype(np.float64) @ O).reshape(-1, f, f)
            return np.linalg.solve(A, B[..., None])[..., 0].astype(np.float32)

        # CG in float32 (as the ``implicit`` library); Y[cols] is fixed during the half-step
        Yf = np.ascontiguousarray(Y, dtype=np.float32)
        Yg = Yf[cols]
        counts = np.diff(Cm1.indptr)
        wf = w.astype(np.float32)
        YtYf = YtY.astype(np.float32)
        Mt = sp.csr_matrix((wf.copy(), cols, Cm1.indptr), shape=Cm1.shape)

        def matvec(P):
            Mt.data = np.einsum("nf,nf->n", Yg, np.repeat(P, counts, axis=0)) * wf
            return P @ YtYf + Mt @ Yf

        Xd = np.array(X, dtype=np.float32)
        r = B.astype(np.float32) - matvec(Xd)
        p = r.copy()
        rs_old = np.einsum("nf,nf->n", r, r)
        for _ in range(int(self.cg_steps)):
            Ap = matvec(p)
            denom = np.einsum("nf,nf->n", p, Ap)
            step = np.divide(rs_old, denom, out=np.zeros_like(rs_old), where=denom > 1e-30)
            Xd += step[:, None] * p
            r -= step[:, None] * Ap
            rs_new = np.einsum("nf,nf->n", r, r)
            if np.all(rs_new < 1e-20):
                break
            beta = np.divide(rs_new, rs_old, out=np.zeros_like(rs_new), where=rs_old > 1e-30)
            p = r + beta[:, None] * p
            rs_old = rs_new
        return Xd.astype(np.float32)

    def fit(self, train_csr):
        Cm1 = self._weights(train_csr)
        CT = Cm1.T.tocsr()
        CT.sort_indices()
        n_users, n_items = Cm1.shape
        rng = np.random.default_rng(self.seed)
        X = (rng.standard_normal((n_users, self.factors)) * 0.01).astype(np.float32)
        Y = (rng.standard_normal((n_items, self.factors)) * 0.01).astype(np.float32)
        for _ in range(self.iterations):
            X = self._solve(Cm1, Y, X)
            Y = self._solve(CT, X, Y)
        # rows without data solve to exactly 0; make that exact under CG too
        X[np.diff(Cm1.indptr) == 0] = 0.0
        Y[np.diff(CT.indptr) == 0] = 0.0
        self.user_factors_, self.item_factors_ = X, Y
        return self

    def score(self, users):
        users = _as_users(users)
        return (self.user_factors_[users] @ self.item_factors_.T).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
class EASE(Recommender):
    """EASE^R (Steck 2019): ``B = argmin |X - X B|^2 + lam |B|^2`` s.t. ``diag(B) = 0`` on the
    binary matrix ``X``; closed form ``B = I - P diag(1/diag(P))`` with ``P = (X'X + lam I)^-1``.

    ``lam=None`` picks ``lam`` from ``lambda_grid`` by NDCG@10 on
    :func:`~fuserank.evaluation.protocol.validation_split` ``(train, seed)`` (ties: smaller
    ``lam``) and refits on the whole train matrix. When there are fewer users than items, ``P`` is
    applied through the Woodbury identity ``P = (I - X' (X X' + lam I)^-1 X) / lam``, which gives
    the same ``B`` (up to round-off) at ``O(users^2 items)`` instead of ``O(items^3)``.
    """

    name = "EASE"

    def __init__(self, lam: float | None = None, lambda_grid: Sequence[float] = EASE_LAMBDA_GRID,
                 seed: int = 0, method: str = "auto"):
        if method not in ("auto", "primal", "dual"):
            raise ValueError("method must be 'auto', 'primal' or 'dual'")
        self.lam = lam
        self.lambda_grid = tuple(float(x) for x in lambda_grid)
        self.seed = int(seed)
        self.method = method
        self.validation_ = {}

    def params(self):
        return {"lam": getattr(self, "lam_", self.lam), "seed": self.seed}

    def fit(self, train_csr):
        train_csr = sp.csr_matrix(train_csr)
        if self.lam is None:
            sub, val = validation_split(train_csr, self.seed)
            Xs = binarize(sub, dtype=np.float64)
            n_active = int(np.count_nonzero(np.diff(Xs.tocsc().indptr)))
            if self.method == "dual" or (self.method == "auto" and Xs.shape[0] < n_active):
                self.validation_ = self._tune_dual(sub, val)
            else:
                for lam in self.lambda_grid:
                    probe = EASE(lam=lam, method=self.method)._fit_fixed(sub, lam)
                    self.validation_[lam] = evaluate_ndcg(probe, sub, val, k=10)
            best = max(self.lambda_grid, key=lambda l: (self.validation_[l], -l))
            log.debug("EASE validation NDCG@10 %s -> lambda %g", self.validation_, best)
            return self._fit_fixed(train_csr, best)
        return self._fit_fixed(train_csr, float(self.lam))

    def _tune_dual(self, sub, val) -> dict:
        """Validation NDCG@10 of every grid ``lam`` from one eigendecomposition of ``X X'``.

        With ``X X' = V diag(e) V'`` and ``Z = V' X``: ``diag(P) = (1 - (1/(e+lam)) . Z^2) / lam``
        and ``X P = (X - V diag(e/(e+lam)) Z) / lam``, so each ``lam`` costs one
        ``users x users x items`` product (same scores as :meth:`_fit_fixed` + :meth:`score`).
        """
        X = binarize(sub, dtype=np.float64)
        active = np.flatnonzero(np.diff(X.tocsc().indptr))
        Xa = X[:, active].tocsr()
        users = np.flatnonzero(np.diff(sp.csr_matrix(val).indptr))
        e, V = np.linalg.eigh((Xa @ Xa.T).toarray())
        e = np.maximum(e, 0.0)
        Z = V.T @ Xa.toarray()
        Z2 = Z * Z
        Xq = Xa[users].toarray()
        Vq = V[users]
        exclude = sub[users]
        heldout = sp.csr_matrix(val)[users]
        scores = np.zeros((len(users), X.shape[1]), dtype=np.float32)
        out = {}
        for lam in self.lambda_grid:
            d = (1.0 - (1.0 / (e + lam)) @ Z2) / lam
            XqP = (Xq - (Vq * (e / (e + lam))[None, :]) @ Z) / lam
            scores[:, active] = Xq - XqP / d[None, :]
            out[lam] = ndcg_at_k(top_k(scores, exclude, 10), heldout, 10).mean
        return out

    def _fit_fixed(self, train_csr, lam: float):
        X = binarize(train_csr, dtype=np.float64)
        self.lam_ = float(lam)
        self.n_items_ = X.shape[1]
        self.active_ = np.flatnonzero(np.diff(X.tocsc().indptr))  # items with train data
        Xa = X[:, self.active_].tocsr()
        self.Xa_ = Xa
        n_users, n_active = Xa.shape
        use_dual = self.method == "dual" or (self.method == "auto" and n_users < n_active)
        self.dual_ = use_dual
        if use_dual:
            K = (Xa @ Xa.T).toarray() + lam * np.eye(n_users)
            cf = scipy.linalg.cho_factor(K, lower=True, check_finite=False)
            W = scipy.linalg.cho_solve(cf, Xa.toarray(), check_finite=False)  # (X X'+lam)^-1 X
            q = np.asarray(Xa.multiply(W).sum(axis=0)).ravel()
            self.W_ = W
            self.d_ = (1.0 - q) / lam  # diag(P)
        else:
            G = (Xa.T @ Xa).toarray() + lam * np.eye(n_active)
            cf = scipy.linalg.cho_factor(G, lower=True, overwrite_a=True, check_finite=False)
            P = scipy.linalg.cho_solve(cf, np.eye(n_active), overwrite_b=True, check_finite=False)
            B = -P / np.diag(P)[None, :]
            np.fill_diagonal(B, 0.0)
            self.B_ = B.astype(np.float32)
        return self

    def score(self, users):
        users = _as_users(users)
        Xq = self.Xa_[users]
        out = np.zeros((len(users), self.n_items_), dtype=np.float32)
        if self.dual_:
            Xq_d = Xq.toarray()
            XqP = (Xq_d - (Xq @ self.Xa_.T).toarray() @ self.W_) / self.lam_
            out[:, self.active_] = Xq_d - XqP / self.d_[None, :]
        else:
            out[:, self.active_] = Xq.astype(np.float32) @ self.B_
        return out
