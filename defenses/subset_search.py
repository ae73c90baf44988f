"""Exact subset searches of MDA and SMEA: the n − f rows to average, without enumerating C(n, f) subsets.

Both take the [n, n] squared distances (+inf for a non-finite row) and return the chosen row indices,
sorted. Ties go to the lexicographically smallest index tuple, the first subset in
itertools.combinations(range(n), n − f) order (ByzFL's enumeration) among the optimal ones.

MDA (minimum diameter): the optimal diameter t* is one of the distances, and "some n − f rows have all
pairwise distances <= t" says "the graph of the pairs farther than t has a vertex cover of at most f
rows". Vertex cover with budget f is decided by the classic bounded search tree: a row with more than
k far neighbours must go (Buss), a row with one far neighbour lets that neighbour go, otherwise branch
on the row of largest degree δ >= 2 (remove it, or remove its δ neighbours): O(1.62^f · n) per test,
bitmasks for the rows. A binary search over the sorted distances finds t*, then a greedy pass keeps
each row in index order whenever a cover still exists (the lexicographically smallest subset).
Worst case O(1.62^f · n · (n + log n²)), polynomial in n for fixed f; measured 1.5-33 ms at n = 32, f = 6.

SMEA (smallest maximum eigenvalue): branch and bound over the removed rows, in the combination tree
(removals r_1 < r_2 < … in an order of the rows, every row skipped before r_j kept), all on the n × n
centred Gram matrix (defenses.spectral). Two lower bounds on λ_max of the scatter of every completion S:
- interlacing: removing a row is a rank-one downdate of the scatter, so after the g − 1 removals still
  to go from a child's rows T, λ_max(S) >= λ_g(T). Whether λ_g(T) exceeds the threshold θ is decided for
  all children of a node at once from the node's one eigendecomposition (Haynsworth's inertia formula:
  an O(|T|) sum per child instead of an eigensolve) — the bound that prunes most subtrees;
- monotonicity: the scatter of a subset of S is ⪯ that of S, so λ_max(rows kept so far) <= λ_max(S); the
  kept rows grow with the child's position, so a binary search of Cholesky tests (θI − Gram ≻ 0) cuts
  the children from the first whose kept rows already spread beyond θ.
The incumbent starts from greedy removals; rows weighing most on the top g eigendirections come first.
Rounding: distances correct to a relative eps (float32's for float32 rows) give a centred Gram off by
noise ~ 2·n·eps·max d² — eigenvalues of that size, of both signs, are rounding, not spread, and are set to
0; a secular count that rounding could flip is settled by the child's own eigensolve. Every leaf within
tol = max(TIE_RTOL·λ_max(all rows), 8·noise) of the best is kept and a subtree is cut only when its bound
exceeds best + 2·tol, so the answer is the lexicographically first subset within tol of the optimum,
whatever rounding does to near-ties.
Worst case: exponential, O(C(n, f)) eigendecompositions of n × n matrices, when no bound prunes. The
hard inputs are rows that are all alike, e.g. i.i.d. Gaussian rows (no attack), where every subset is
about as spread as every other: measured at n = 32, f = 6 (2-core CPU container shared with other jobs,
load average 5-7, 2026-11-30) 245-2,862 nodes and 0.2-1.9 s for the search over ten i.i.d. inputs
(d = 2 … 10^5); with f rows shifted away it visits ~180 nodes (0.1-0.5 s). The brute force is 906,192 subsets.
"""
from __future__ import annotations

import numpy as np
import torch

from byzbn._threads import one_cpu_thread
from byzbn.defenses.spectral import centred_gram, subset_spectra

TIE_RTOL = 1e-9


# ----------------------------------------------------------------------------------------------- MDA
def _cover_exists(adj: list[int], alive: int, budget: int) -> bool:
    """Whether the graph (adjacency bitmasks) induced on the rows of `alive` has a vertex cover of <= budget rows."""
    while True:
        if budget < 0:
            return False
        best, best_deg, changed = -1, 0, False
        rows = alive
        while rows:
            low = rows & -rows
            v = low.bit_length() - 1
            rows ^= low
            deg = (adj[v] & alive).bit_count()
            if deg == 0:
                alive &= ~low
            elif deg > budget:                 # Buss: v must be in every small cover
                alive &= ~low
                budget -= 1
                changed = True
                break
            elif deg == 1:                     # taking the single neighbour is never worse
                alive &= ~(low | (adj[v] & alive))
                budget -= 1
                changed = True
                break
            elif deg > best_deg:
                best, best_deg = v, deg
        if changed:
            continue
        if best < 0:
            return True                        # no edges left
        if budget == 0:
            return False
        neighbours = adj[best] & alive
        without = alive & ~(1 << best)
        return (_cover_exists(adj, without, budget - 1)
                or _cover_exists(adj, without & ~neighbours, budget - best_deg))


def _far_graph(d2: np.ndarray, t: float) -> list[int]:
    far = d2 > t
    np.fill_diagonal(far, False)
    weights = 1 << np.arange(d2.shape[0], dtype=object)
    return [int((weights * row).sum()) for row in far.astype(object)]


def _feasible(adj: list[int], n: int, f: int, kept: int, removed: int) -> bool:
    """Whether some n − f rows containing `kept` and avoiding `removed` (bitmasks) are pairwise near."""
    forced = 0
    rows = kept
    while rows:
        low = rows & -rows
        forced |= adj[low.bit_length() - 1]
        rows ^= low
    if forced & kept:
        return False
    removed |= forced
    budget = f - removed.bit_count()
    alive = ((1 << n) - 1) & ~kept & ~removed
    return budget >= 0 and _cover_exists(adj, alive, budget)


def min_diameter_subset(d2: np.ndarray, f: int) -> np.ndarray:
    """Sorted indices of the lexicographically first n − f rows of smallest diameter (max pairwise distance)."""
    d2 = np.nan_to_num(np.asarray(d2, dtype=np.float64), nan=np.inf, posinf=np.inf)
    n = d2.shape[0]
    if f == 0:
        return np.arange(n)
    values = np.unique(d2[np.triu_indices(n, 1)])
    lo, hi = 0, len(values) - 1                # values[-1] is always feasible: no pair is farther
    while lo < hi:
        mid = (lo + hi) // 2
        if _feasible(_far_graph(d2, values[mid]), n, f, 0, 0):
            hi = mid
        else:
            lo = mid + 1
    adj = _far_graph(d2, values[lo])
    kept = removed = 0
    for i in range(n):
        if kept.bit_count() == n - f:
            break
        bit = 1 << i
        if removed.bit_count() < f and not _feasible(adj, n, f, kept | bit, removed):
            removed |= bit
        else:
            kept |= bit
    return np.array([i for i in range(n) if kept >> i & 1])


# ---------------------------------------------------------------------------------------------- SMEA
def _more_than(lam: np.ndarray, vec: np.ndarray, rows: np.ndarray, theta: float,
               noise: float) -> tuple[np.ndarray, np.ndarray]:
    """([len(rows)] counts, [len(rows)] unsure): how many eigenvalues above θ the scatter keeps when row
    `rows[c]` leaves the set, and whether rounding could have changed that count.

    lam, vec: eigenpairs of the set's centred Gram G = Y Yᵀ (t rows), with the eigenvalues within `noise`
    of 0 (what the distances' rounding can produce: a Gram built from inexact distances is not exactly
    positive semidefinite) set to 0. Removing row q is the rank-one downdate M − ρ y_q y_qᵀ (ρ = t/(t − 1))
    of the scatter M = Yᵀ Y, with y_q = Σ_i √λ_i U_qi v_i in M's eigenbasis; by Haynsworth's inertia formula
    the downdated matrix has #{λ_i > θ} − 1 + [1 − ρ s > 0] eigenvalues above θ, s = Σ_i λ_i U_qi² / (λ_i − θ):
    an O(t) sum per row instead of an eigensolve. A count is unsure when an eigenvalue lies within 2·noise
    of θ or 1 − ρ s is within four times its first-order error (noise · θ / (λ_i − θ)² per term) of 0.
    """
    t = len(lam)
    live = lam > 0
    gap = lam[live] - theta
    u2 = vec[rows][:, live] ** 2
    if np.any(np.abs(gap) <= 2 * noise):
        return np.zeros(len(rows), dtype=np.int64), np.ones(len(rows), dtype=bool)
    rho = t / (t - 1)
    terms = u2 * (lam[live] / gap)
    h = 1.0 - rho * terms.sum(axis=1)
    first_order = (u2 * (noise * theta / gap ** 2)).sum(axis=1)
    error = rho * (first_order + 64 * np.finfo(np.float64).eps * np.abs(terms).sum(axis=1))
    return int((gap > 0).sum()) - 1 + (h > 0), np.abs(h) <= 4 * error


def _centred(gram: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The Gram matrix of `rows` re-centred at their own mean (gram is symmetric: one mean per row)."""
    sub = gram[rows[:, None], rows]
    row_mean = np.add.reduce(sub, axis=1) / len(rows)      # not .mean(): its Python wrapper costs more here
    return sub - row_mean[:, None] - row_mean[None, :] + np.add.reduce(row_mean) / len(rows)


def _spread_at_least(gram: np.ndarray, rows: list[int], theta: float) -> bool:
    """λ_max(scatter of rows) >= θ, by a Cholesky attempt on θI − (their centred Gram), which fails exactly then."""
    if len(rows) < 2 or theta <= 0.0:
        return theta <= 0.0
    shifted = -_centred(gram, np.asarray(rows))
    shifted.flat[::len(rows) + 1] += theta
    return int(torch.linalg.cholesky_ex(torch.from_numpy(shifted)).info) != 0


class _SpectralSearch:
    """Branch and bound for min over |S| = m − g of λ_max(scatter of S) on candidate rows 0..m−1.

    Every leaf within tol of the best value seen when it is reached is kept, and a subtree is pruned
    only when a bound exceeds θ = best + 2·tol (tol >= 8·noise: a margin rounding cannot cross), so every
    subset within tol of the optimum is reached.
    """

    def __init__(self, gram: np.ndarray, g: int, tol: float, noise: float):
        self.gram, self.m, self.g, self.tol, self.noise = gram, gram.shape[0], g, tol, noise
        self.nodes = 0
        self.leaves: list[tuple[float, tuple[int, ...]]] = []

    def greedy(self) -> float:
        """λ_max after g greedy removals (each the one that lowers λ_max most): the first incumbent."""
        kept = list(range(self.m))
        for _ in range(self.g):
            values = subset_spectra(self.gram, np.array([kept[:j] + kept[j + 1:] for j in range(len(kept))]))[:, 0]
            kept.pop(int(np.argmin(values)))
        return float(subset_spectra(self.gram, np.array([kept]))[0, 0])

    def run(self, order: list[int], best: float) -> float:
        self.best = best
        self._node(order, [], 0, [])
        return self.best

    def _interlacing_alive(self, lam, vec, rows, rest, children, candidates, theta: float, left: int) -> list[int]:
        """The children c in candidates whose rows keep fewer than `left` eigenvalues above θ (not pruned).

        From the secular count; the unsure counts are settled by the children's own spectra."""
        candidates = list(candidates)
        above, unsure = _more_than(lam, vec, rows[candidates], theta, self.noise)
        exact = [c for c, doubt in zip(candidates, unsure) if doubt]
        if exact:
            sets = np.array([[r for r in rest if r != children[c]] for c in exact])
            for c, value in zip(exact, subset_spectra(self.gram, sets)[:, left - 1]):
                above[candidates.index(c)] = left if value > theta else 0
        return [c for c, count in zip(candidates, above) if count < left]

    def _node(self, order: list[int], removed: list[int], p: int, kept: list[int]) -> None:
        self.nodes += 1
        left = self.g - len(removed)
        rest = np.array([r for r in order if r not in removed])
        lam, vec = (t.numpy() for t in torch.linalg.eigh(torch.from_numpy(_centred(self.gram, rest))))
        lam[lam <= self.noise] = 0.0
        position = np.empty(self.m, dtype=np.int64)
        position[rest] = np.arange(len(rest))
        children = order[p:self.m - left + 1]          # child c removes children[c] and keeps order[p:p + c]
        rows = position[children]
        theta = self.best + 2 * self.tol
        # Interlacing: after left − 1 more removals λ_max >= λ_left(child's rows), which exceeds θ exactly
        # when the child's rows keep >= left eigenvalues above θ.
        alive = self._interlacing_alive(lam, vec, rows, rest, children, range(len(children)), theta, left)
        # Monotonicity: child c keeps kept + children[:c], a set that only grows with c; binary search for
        # the first alive child whose kept rows already spread beyond θ (it and all later ones are cut).
        lo, hi = 0, len(alive)
        while lo < hi:
            mid = (lo + hi) // 2
            if _spread_at_least(self.gram, kept + children[:alive[mid]], theta):
                hi = mid
            else:
                lo = mid + 1
        alive = alive[:lo]
        if left == 1:
            if alive:
                sets = [[int(r) for r in rest if r != children[c]] for c in alive]
                for value, leaf in zip(subset_spectra(self.gram, np.array(sets))[:, 0], sets):
                    if value <= self.best + self.tol:
                        self.leaves.append((float(value), tuple(sorted(leaf))))
                        self.best = min(self.best, float(value))
            return
        for c in alive:
            now = self.best + 2 * self.tol
            if now < theta:                            # the incumbent has improved since: bound this child again
                if _spread_at_least(self.gram, kept + children[:c], now):
                    break
                if not self._interlacing_alive(lam, vec, rows, rest, children, [c], now, left):
                    continue
            self._node(order, removed + [children[c]], p + c + 1, kept + children[:c])


def min_eigenvalue_subset(d2: np.ndarray, f: int, stats: dict | None = None,
                          eps: float = float(np.finfo(np.float64).eps)) -> np.ndarray:
    """Sorted indices of the lexicographically first n − f rows whose scatter has the smallest λ_max, up to
    ties: within max(TIE_RTOL · λ_max(all rows), 8 · noise) of the optimum, noise = max(2·m·eps·max d²,
    −2·λ_min) where eps is the relative accuracy of the distances d2 (float32's for distances of float32
    rows) and λ_min the least eigenvalue of their centred Gram (negative only through rounding). Rows with
    an infinite distance to every row are non-finite: they are removed first; when more than f are, every
    subset is infinitely spread and the first n − f rows return."""
    d2 = np.nan_to_num(np.asarray(d2, dtype=np.float64), nan=np.inf, posinf=np.inf)
    n = d2.shape[0]
    k = n - f
    finite = np.isfinite(d2).sum(axis=1) > 1 if n > 1 else np.ones(1, dtype=bool)
    candidates = np.flatnonzero(finite)
    g = len(candidates) - k
    if g < 0:
        return np.arange(k)
    if g == 0:
        return candidates
    d2 = d2[np.ix_(candidates, candidates)]
    gram = centred_gram(d2)
    with one_cpu_thread(torch.device("cpu")):
        lam, vec = (t.numpy() for t in torch.linalg.eigh(torch.from_numpy(gram)))
        scale = float(lam[-1])
        # Each distance is off by up to eps·d², so the double-centred Gram by up to ~m·eps·max d² (spectral
        # norm); a negative eigenvalue (distances of real rows give a positive semidefinite Gram) measures it.
        noise = max(2 * len(candidates) * max(eps, np.finfo(np.float64).eps) * float(d2.max()), -2 * float(lam[0]))
        tol = max(TIE_RTOL * scale, 8 * noise)
        if not scale > 8 * noise:
            return candidates[:k]                # all candidate rows (about) equal: every subset ties
        search = _SpectralSearch(gram, g, tol, noise)
        # Rows weighing most on the top g directions first: their removals decide λ_max, and kept early they
        # make the kept-rows bound bite high in the tree (fewer nodes than by distance to the mean).
        weight = (vec[:, -g:] ** 2 * np.maximum(lam[-g:], 0.0)).sum(axis=1)
        heaviest_first = [int(i) for i in np.argsort(-weight, kind="stable")]
        best = search.run(heaviest_first, search.greedy())
    if not search.leaves:
        raise RuntimeError("smea's search kept no subset: a rounding case it does not handle; please report the "
                           f"distances: {d2.tolist()!r}")
    kept = min(leaf for value, leaf in search.leaves if value <= best + tol)
    if stats is not None:
        stats["nodes"] = search.nodes
    return candidates[np.asarray(kept)]


__all__ = ["TIE_RTOL", "min_diameter_subset", "min_eigenvalue_subset"]
