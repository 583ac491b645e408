"""The cumulative audit: can served rows be combined into the total of a small set?

Within one hierarchy (measure, start date, createdBy) every served version of every row
is a sum over *pieces*: the contributions one plain cell gained in one publication epoch.
A version is thus a 0/1 vector over pieces, and whatever a reader can compute from all
the versions ever served is a linear combination of those vectors. The audit holds when
no combination equals the indicator of a set of pieces holding 1 to k-1 contributions
(a set that was not itself served).

A piece of k or more contributions can never be in such a set, so only the combinations
that cancel every "big" piece matter. With the big pieces ordered first, the rows of the
reduced row echelon form (RREF) whose pivot is a small piece span exactly those
combinations (W). A 0/1 vector of W is fixed by its values at the pivots, which are its
coefficients, so it is a sum of at most k-1 rows of W whose pivots hold fewer than k
contributions together, and (being 0/1) a connected set of rows, sharing columns. The
search enumerates those sets, within a budget; past the budget a candidate is refused,
so the audit errs on the side of withholding.

Arithmetic is exact modulo a prime below 2**25 (int64 products cannot overflow for
ranks up to 4096); a rational RREF and its image modulo the prime agree unless the prime
divides one of a few minors, which for such a prime is a chance of the order of 1e-7.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PRIME = 33_554_393
SEARCH_BUDGET = 20_000
"""Sets of rows examined per question before the audit gives up (and withholds)."""
MAX_RANK = 4096


@dataclasses.dataclass(frozen=True)
class _Undo:
    """What one insertion changed: its pivot column and row, the rows it eliminated that
    column from (their values before, and the factor each took of the new row). A known
    column (row None): the rows that held it and their values there."""

    pivot: int
    row: int | None
    changed: np.ndarray
    before: np.ndarray
    factors: np.ndarray


@dataclasses.dataclass(frozen=True)
class Finding:
    """A set of pieces whose total the served rows give away."""

    pieces: frozenset[int]
    contributions: int


class Audit:
    """What the served versions of one hierarchy let a reader compute, kept incrementally."""

    def __init__(self, counts, k: int, *, exempt=()):
        counts = np.asarray(counts, dtype=np.int64)
        self.k = k
        n = len(counts)
        # Big pieces first: an RREF row with a pivot among the small ones is zero on
        # every big piece.
        order = np.argsort(counts < k, kind="stable")
        self.position = np.empty(n, dtype=np.int64)
        self.position[order] = np.arange(n)
        self.counts = counts[order]
        self.n_big = int(np.sum(counts >= k))
        self.known = np.zeros(n, dtype=bool)
        """Big pieces served alone (or reduced to one): their totals are public."""
        self._rows = np.zeros((16, n), dtype=np.int64)
        """The RREF rows (the first `rank` of them), in a buffer that grows by doubling."""
        self._pivots = np.zeros(16, dtype=np.int64)
        self.rank = 0
        self._last: _Undo | None = None
        self.exempt = {frozenset(int(self.position[p]) for p in s) for s in exempt}
        self.original = order

    @property
    def basis(self) -> np.ndarray:
        return self._rows[: self.rank]

    @property
    def pivots(self) -> np.ndarray:
        return self._pivots[: self.rank]

    def copy(self) -> Audit:
        """An independent audit in the same state (the sums' audit forks from the counts'
        one when a row first hides its sum)."""
        twin = object.__new__(Audit)
        twin.__dict__.update(self.__dict__)
        twin.known = self.known.copy()
        twin._rows = self._rows.copy()
        twin._pivots = self._pivots.copy()
        return twin

    # --- building ---------------------------------------------------------------------

    def add(self, vector) -> None:
        """Record a served version (0/1 over pieces), whatever it discloses."""
        self._record(vector)

    def known_pieces(self) -> np.ndarray:
        """Boolean mask over pieces (original order): those whose total is known."""
        return self.known[self.position]

    def unheld_big(self, pieces: np.ndarray) -> np.ndarray:
        """Boolean mask: which of these pieces are big and held by no row of the basis."""
        columns = self.position[pieces]
        free = ~self.basis[:, columns].any(axis=0) if self.rank else np.ones(len(columns), dtype=bool)
        return (columns < self.n_big) & free

    def mark_known(self, pieces: np.ndarray) -> None:
        """Record versions that are each one big piece held by no row (pieces in the
        original order): their totals are known."""
        columns = self.position[np.asarray(pieces, dtype=np.int64)]
        assert (columns < self.n_big).all() and not (self.rank and self.basis[:, columns].any())
        self.known[columns] = True

    def add_rows(self, vectors: np.ndarray, pivots: np.ndarray) -> None:
        """Record versions (0/1 rows over pieces) each holding its pivot piece: a big
        piece that no row of the basis holds nor any other of these versions. Reduced
        together (no row holds another's pivot) and appended with those pivots."""
        columns = self.position[np.asarray(pivots, dtype=np.int64)]
        assert (columns < self.n_big).all() and not (self.rank and self.basis[:, columns].any())
        rows = np.zeros((len(vectors), len(self.counts)), dtype=np.int64)
        rows[:, self.position] = vectors
        rows[:, self.known] = 0
        if self.rank:
            # Each coefficient is 1 (the versions are 0/1): subtract, per version, the
            # sum of the basis rows whose pivot it holds (pairs come sorted by version).
            which, basis_rows = np.nonzero(rows[:, self.pivots])
            if len(which):
                starts = np.flatnonzero(np.r_[True, which[1:] != which[:-1]])
                rows[which[starts]] -= np.add.reduceat(self.basis[basis_rows], starts, axis=0)
                rows %= PRIME
        assert (rows[np.arange(len(rows)), columns] == 1).all()
        if self.rank + len(rows) > MAX_RANK:
            raise OverflowError("audit: hierarchy too large for exact arithmetic")
        if self.rank + len(rows) > len(self._rows):
            self._grow(self.rank + len(rows))
        self._rows[self.rank : self.rank + len(rows)] = rows
        self._pivots[self.rank : self.rank + len(rows)] = columns
        self.rank += len(rows)

    def _grow(self, needed: int) -> None:
        """Room for at least `needed` rows (at least double: one copy per doubling)."""
        capacity = max(needed, 2 * len(self._rows))
        rows = np.zeros((capacity, len(self.counts)), dtype=np.int64)
        rows[: self.rank] = self.basis
        pivots = np.zeros(capacity, dtype=np.int64)
        pivots[: self.rank] = self.pivots
        self._rows, self._pivots = rows, pivots

    def _known_at_once(self, columns: np.ndarray) -> _Undo | None:
        """The common case, without arithmetic: a vector that is one big piece that no
        row holds (a plain cell's new piece, its older ones known) makes it known; what
        undoes that, or None for any other vector."""
        nonzero = np.flatnonzero(columns)
        if len(nonzero) != 1 or nonzero[0] >= self.n_big:
            return None
        j = int(nonzero[0])
        if self.rank and self.basis[:, j].any():
            return None
        self.known[j] = True
        return _Undo(j, None, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), None)

    def _record(self, vector) -> tuple[_Undo | None, bool]:
        """Insert a version: (what undoes it, None if it added nothing; whether it changed
        W, the span of the combinations that cancel every big piece). A new big pivot or
        a known big piece leaves W as it was."""
        columns = self._columns(vector)
        undo = self._known_at_once(columns)
        if undo is not None:
            return undo, False
        reduced = self._reduce(columns)
        nonzero = np.flatnonzero(reduced)
        if len(nonzero) == 0:
            return None, False  # nothing new: already computable from what was served
        return self._insert(reduced), bool(nonzero[0] >= self.n_big)

    def try_add(self, vector) -> bool:
        """Record the version only if no new small set becomes computable; say which."""
        undo, changed_w = self._record(vector)
        if changed_w and self._violation(undo) is not None:
            self._rollback(undo)
            self._last = None
            return False
        self._last = undo
        return True

    def try_add_all(self, vectors) -> bool:
        """Record all these versions if together they make no small set computable that
        was not before; else record none. Then one by one each would have been accepted
        too: what any first few of them make computable, all of them do. One search for
        the lot, from every row they added or changed."""
        recorded = [self._record(vector) for vector in vectors]
        self._last = None
        steps = [undo for undo, changed_w in recorded if changed_w]
        if steps and self._violation(*steps) is not None:
            for undo, _ in reversed(recorded):
                if undo is not None:
                    self._rollback(undo)
            return False
        return True

    def revert_last(self) -> None:
        """Undo the version the last try_add accepted (the sums' audit refused it)."""
        if self._last is not None:
            self._rollback(self._last)
            self._last = None

    def _columns(self, vector) -> np.ndarray:
        v = np.zeros(len(self.counts), dtype=np.int64)
        v[self.position[np.flatnonzero(np.asarray(vector))]] = 1
        v[self.known] = 0
        return v

    def _reduce(self, v: np.ndarray) -> np.ndarray:
        """v minus its combination of the basis rows (the basis is reduced: each row is
        zero at the others' pivots, so the coefficients are v's values there). Only the
        rows with a non-zero coefficient take part: vectors are sparse."""
        if self.rank:
            coefficients = v[self.pivots]
            used = np.flatnonzero(coefficients)
            if len(used):
                v = (v - (coefficients[used] @ self.basis[used]) % PRIME) % PRIME
        return v

    def _insert(self, reduced: np.ndarray) -> _Undo | None:
        """Add a reduced vector to the basis, eliminating its pivot column from the rows
        that hold it (only those are touched); what the rollback needs to undo it."""
        nonzero = np.flatnonzero(reduced)
        if len(nonzero) == 0:
            return None
        j = int(nonzero[0])
        if len(nonzero) == 1 and j < self.n_big:
            # A big piece alone: its total is known; drop its column from every row.
            column = self.basis[:, j].copy()
            self.known[j] = True
            self.basis[:, j] = 0
            return _Undo(j, None, np.flatnonzero(column), column[column != 0], None)
        if self.rank >= MAX_RANK:
            raise OverflowError("audit: hierarchy too large for exact arithmetic")
        row = reduced * pow(int(reduced[j]), PRIME - 2, PRIME) % PRIME
        changed = np.flatnonzero(self.basis[:, j]) if self.rank else np.zeros(0, dtype=np.int64)
        before = self.basis[changed]
        factors = before[:, j].copy()
        if len(changed):
            self._rows[changed] = (before - np.outer(factors, row) % PRIME) % PRIME
        if self.rank == len(self._rows):
            self._grow(self.rank + 1)
        self._rows[self.rank] = row
        self._pivots[self.rank] = j
        self.rank += 1
        return _Undo(j, self.rank - 1, changed, before, factors)

    def _rollback(self, undo: _Undo) -> None:
        if undo.row is None:  # a known column: give it back
            self.known[undo.pivot] = False
            self._rows[undo.changed, undo.pivot] = undo.before
            return
        self.rank -= 1
        self._rows[self.rank] = 0
        self._rows[undo.changed] = undo.before

    # --- searching ----------------------------------------------------------------------

    def findings(self) -> list[Finding]:
        """Every small set the served rows give away (within the search budget)."""
        found: dict[frozenset, Finding] = {}
        for finding in self._search(self._w_rows(), canonical=True, stop_at_first=False):
            found.setdefault(finding.pieces, finding)
        return sorted(found.values(), key=lambda f: sorted(f.pieces))

    def undecided(self) -> bool:
        return getattr(self, "_exhausted", False)

    def _w_rows(self) -> list[int]:
        return [i for i, p in enumerate(self.pivots) if p >= self.n_big]

    def _violation(self, *steps: _Undo) -> Finding | None:
        """A small set computable now but not before the insertions `steps` record.

        A new vector of W is a sum of rows of which at least one is new or was changed
        by an insertion (the others span only what was there before). A total t of the
        basis after an insertion is sum(t[p_i] row_i); the rows it changed are their old
        selves minus factor_i times the new row r, so t was already spanned before it
        exactly when its coefficient on r, t[j] - sum(t[p_i] factor_i) over the changed
        rows, is zero. Over several insertions, t was spanned before them all when that
        holds for each (read from t's values alone, whatever the order).
        """
        tests = [(undo.pivot, self.pivots[undo.changed], undo.factors) for undo in steps]

        def new(total: np.ndarray) -> bool:
            return any(
                (int(total[pivot]) - int(total[pivots] @ factors % PRIME)) % PRIME != 0
                for pivot, pivots, factors in tests
            )

        roots = list(dict.fromkeys(int(r) for undo in steps for r in (*undo.changed, undo.row)))
        found = self._search(roots, canonical=False, stop_at_first=True, accept=new)
        if found:
            return found[0]
        if self._exhausted:
            return Finding(frozenset(), 0)  # undecided: treated as a violation
        return None

    def _search(self, roots, *, canonical: bool, stop_at_first: bool, accept=None) -> list[Finding]:
        """Sets of W rows holding one of `roots` whose sum is a small 0/1 vector.

        Depth first, within SEARCH_BUDGET sets examined; the sets one set grows into
        are summed and judged together (one array operation, not one per set), and only
        those that can still grow are searched further. While the partial sum has an entry
        outside {0, 1}, only a row that is non-zero there can mend it, so only those
        extend the set; a 0/1 partial sum extends by any row sharing a column (the set
        stays connected). `canonical`: a set is reached only from its smallest row.
        """
        self._exhausted = False
        w_rows = self._w_rows()
        index = {r: i for i, r in enumerate(w_rows)}
        roots = [index[r] for r in roots if r in index]
        if not roots:
            return []
        rows = self.basis[w_rows][:, self.n_big :]
        pivot_counts = self.counts[[self.pivots[r] for r in w_rows]]
        # Only the small pieces some row of W holds can be in a found set: every array
        # of the search is that wide, not as wide as the hierarchy.
        held = np.flatnonzero((rows != 0).any(axis=0))
        rows = rows[:, held]
        support = rows != 0
        columns: dict[int, np.ndarray] = {}
        degree = support.sum(axis=0)

        def by_column(c: int) -> np.ndarray:
            found = columns.get(c)
            if found is None:
                found = columns[c] = np.flatnonzero(support[:, c])
            return found

        small_counts = self.counts[self.n_big :][held]
        is_pivot = np.zeros(rows.shape[1], dtype=bool)
        is_pivot[np.searchsorted(held, [self.pivots[r] - self.n_big for r in w_rows])] = True
        limit = self.k - 1
        results: list[Finding] = []
        seen: set[int] = set()  # sets of rows as bit masks
        examined = 0

        def finds(totals: np.ndarray) -> list[int]:
            """Which of these sums (one per row) are findings: 0/1, 1..k-1 contributions,
            not exempt, accepted."""
            binary = np.flatnonzero((totals <= 1).all(axis=1))
            if not len(binary):
                return []
            contributions = np.zeros(len(totals), dtype=np.int64)
            contributions[binary] = totals[binary] @ small_counts
            small = binary[(contributions[binary] >= 1) & (contributions[binary] <= limit)]
            hits = []
            for i in small:
                pieces = frozenset(int(held[c]) + self.n_big for c in np.flatnonzero(totals[i]))
                if pieces in self.exempt:
                    continue
                if accept is not None:
                    full = np.zeros(len(self.counts), dtype=np.int64)
                    full[self.n_big + held] = totals[i]
                    if not accept(full):
                        continue
                results.append(Finding(self._original(pieces), int(contributions[i])))
                hits.append(int(i))
                if stop_at_first:
                    break
            return hits

        for start in roots:
            floor = start if canonical else -1
            total = rows[start] % PRIME
            seen.add(1 << start)
            if finds(total[None, :]) and stop_at_first:
                return results
            stack = [((start,), 1 << start, total, int(pivot_counts[start]))]
            while stack:
                members, mask, total, used = stack.pop()
                if len(members) >= limit or used >= limit:
                    continue
                bad = np.flatnonzero(total > 1)  # entries are residues: neither 0 nor 1
                if len(bad):
                    # Only a row non-zero there can mend an entry: the rarest column.
                    extensions = by_column(int(bad[np.argmin(degree[bad])]))
                elif int(small_counts @ total) > limit:
                    # Too many: non-pivot 1s must be cancelled (a pivot cannot be). At most
                    # `room` - 1 of them can stay (each holds a contribution, and a joining
                    # row takes one by its pivot), so one of any `room` of them is hit by
                    # a joining row: the rows holding one of the `room` rarest.
                    ones = np.flatnonzero(total & ~is_pivot)
                    rarest = ones[np.argsort(degree[ones], kind="stable")[: limit - used]]
                    extensions = np.flatnonzero(support[:, rarest].any(axis=1))
                else:
                    extensions = np.flatnonzero(support[list(members)].any(axis=0) @ support.T)
                costs = used + pivot_counts[extensions]
                keep = (costs <= limit) & (extensions >= floor)
                grown, spent = [], []
                for other, cost in zip(extensions[keep].tolist(), costs[keep].tolist()):
                    key = mask | (1 << other)
                    if key != mask and key not in seen:
                        seen.add(key)
                        grown.append(other)
                        spent.append(cost)
                if not grown:
                    continue
                examined += len(grown)
                if examined > SEARCH_BUDGET:
                    self._exhausted = True
                    return results
                # The sets this one grows into, summed together; each is a finding or
                # not at once, and only those with room left are searched further.
                totals = (total + rows[grown]) % PRIME
                if finds(totals) and stop_at_first:
                    return results
                if len(members) + 1 >= limit:
                    continue
                # A set that can take one more row at most and has an entry outside {0, 1}
                # is finished here: the row must bring that entry (its rarest) to 0 or 1,
                # which few rows do exactly; only those are tried, all at once.
                last = [i for i, cost in enumerate(spent) if cost < limit]
                mending = []
                if len(members) + 3 > limit or min(spent) + 2 > limit:
                    one_more = [i for i in last if len(members) + 3 > limit or spent[i] + 2 > limit]
                    broken = totals[one_more] > 1
                    mending = [i for i, b in zip(one_more, broken.any(axis=1)) if b]
                    if mending:
                        worst = np.where(broken[broken.any(axis=1)], degree, np.iinfo(np.int64).max).argmin(
                            axis=1
                        )
                        needed = totals[mending, worst]
                        values = rows[:, worst]
                        fits = (values == (PRIME - needed) % PRIME) | (values == (PRIME + 1 - needed) % PRIME)
                        children, closing = [], []
                        for n, i in enumerate(mending):
                            child_mask = mask | (1 << grown[i])
                            for other in np.flatnonzero(fits[:, n]).tolist():
                                key = child_mask | (1 << other)
                                if (
                                    key != child_mask
                                    and other >= floor
                                    and spent[i] + pivot_counts[other] <= limit
                                    and key not in seen
                                ):
                                    seen.add(key)
                                    children.append(i)
                                    closing.append(other)
                        if closing:
                            examined += len(closing)
                            if finds((totals[children] + rows[closing]) % PRIME) and stop_at_first:
                                return results
                done = set(mending)
                for i in last:
                    if i not in done:
                        stack.append((members + (grown[i],), mask | (1 << grown[i]), totals[i], spent[i]))
        return results

    def _original(self, pieces: frozenset[int]) -> frozenset[int]:
        return frozenset(int(self.original[p]) for p in pieces)
