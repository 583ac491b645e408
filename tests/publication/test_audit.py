"""The cumulative audit against a brute-force oracle, on small random hierarchies.

The oracle enumerates every set of pieces holding 1..k-1 contributions and asks whether
its indicator lies in the span of the served vectors (exact rational rank): the audit
must accept a version exactly when no such set becomes computable.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dacc.publication.audit import PRIME, Audit


def _rank(rows: list[list[int]]) -> int:
    """Exact rank over the rationals (Gaussian elimination on Fractions)."""
    matrix = [[Fraction(x) for x in row] for row in rows]
    rank, columns = 0, len(matrix[0]) if matrix else 0
    for c in range(columns):
        pivot = next((r for r in range(rank, len(matrix)) if matrix[r][c] != 0), None)
        if pivot is None:
            continue
        matrix[rank], matrix[pivot] = matrix[pivot], matrix[rank]
        for r in range(len(matrix)):
            if r != rank and matrix[r][c] != 0:
                factor = matrix[r][c] / matrix[rank][c]
                matrix[r] = [a - factor * b for a, b in zip(matrix[r], matrix[rank])]
        rank += 1
    return rank


def _disclosed(served: list[list[int]], counts: list[int], k: int) -> set[frozenset[int]]:
    """Every set of 1..k-1 contributions whose indicator the served vectors span."""
    small = [i for i, c in enumerate(counts) if c < k]
    base = _rank(served) if served else 0
    found = set()
    for size in range(1, len(small) + 1):
        for subset in itertools.combinations(small, size):
            if not 1 <= sum(counts[i] for i in subset) <= k - 1:
                continue
            indicator = [1 if i in subset else 0 for i in range(len(counts))]
            if _rank(served + [indicator]) == base:
                found.add(frozenset(subset))
    return found


hierarchies = st.integers(2, 4).flatmap(
    lambda k: st.integers(3, 8).flatmap(
        lambda n: st.tuples(
            st.just(k),
            st.lists(st.integers(1, 2 * k), min_size=n, max_size=n),
            st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=1, max_size=8),
        )
    )
)


@settings(max_examples=200, deadline=None)
@given(hierarchies)
def test_the_audit_accepts_exactly_what_discloses_no_small_set(case):
    k, counts, vectors = case
    audit = Audit(counts, k)
    served: list[list[int]] = []
    # The first versions are recorded whatever they disclose (served before a rule
    # change): later ones must add no set to what those already gave away.
    forced, vectors = vectors[: len(vectors) // 3], vectors[len(vectors) // 3 :]
    for vector in forced:
        audit.add(np.array(vector, dtype=bool))
        served.append([int(v) for v in vector])
    for vector in vectors:
        vector = [int(v) for v in vector]
        if not any(vector):
            continue
        before = _disclosed(served, counts, k)
        after = _disclosed(served + [vector], counts, k)
        expected = after <= before
        assert audit.try_add(np.array(vector, dtype=bool)) == expected, (counts, k, served, vector)
        if expected:
            served.append(vector)
    assert {f.pieces for f in audit.findings()} <= _disclosed(served, counts, k)


@settings(max_examples=60, deadline=None)
@given(hierarchies)
def test_findings_list_every_set_that_forced_additions_disclose(case):
    k, counts, vectors = case
    audit = Audit(counts, k)
    served = [[int(v) for v in vector] for vector in vectors if any(vector)]
    for vector in served:
        audit.add(np.array(vector, dtype=bool))
    disclosed = _disclosed(served, counts, k)
    # A union of two disjoint disclosed sets is disclosed by them: findings list the
    # others (each such union is found through its parts).
    unions = {a | b for a in disclosed for b in disclosed if not a & b}
    found = {f.pieces for f in audit.findings()}
    assert disclosed - unions <= found <= disclosed


def test_a_refusal_by_the_second_audit_can_be_reverted_in_the_first():
    counts = [3, 3, 1]
    audit = Audit(counts, 2)
    assert audit.try_add(np.array([1, 1, 1], dtype=bool))
    assert audit.try_add(np.array([1, 1, 0], dtype=bool)) is False  # gives piece 2 (1) away
    assert audit.try_add(np.array([1, 0, 0], dtype=bool))
    audit.revert_last()
    # Without that version, (1, 1, 0) is still refused and (0, 1, 0) alone is fine.
    assert audit.try_add(np.array([0, 1, 0], dtype=bool))
    assert audit.try_add(np.array([1, 0, 0], dtype=bool)) is False


def test_a_set_given_away_before_does_not_refuse_a_version_that_adds_nothing():
    # (a, b) = 2 < k was served before k rose; (b, d) holds 3 = k contributions: serving
    # it discloses nothing new, although a search from its rows meets (a, b) again.
    audit = Audit([1, 1, 2], 3)
    audit.add(np.array([1, 1, 0], dtype=bool))
    assert audit.try_add(np.array([0, 1, 1], dtype=bool))
    assert {f.pieces for f in audit.findings()} == {frozenset({0, 1})}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_rows_added_together_hold_what_adding_them_one_by_one_holds(seed):
    rng = np.random.default_rng(seed)
    k, n = 3, 14
    counts = rng.integers(1, 2 * k, n)
    fresh = [8, 9, 10, 11]  # big pieces no version holds yet: one pivot per batch row
    counts[fresh] = k + 1
    served = rng.random((5, n)) < 0.3
    served[:, fresh] = False
    batch = rng.random((len(fresh), n)) < 0.3
    batch[:, fresh] = False
    batch[np.arange(len(fresh)), fresh] = True
    together, one_by_one = Audit(counts, k), Audit(counts, k)
    for vector in served:
        together.add(vector)
        one_by_one.add(vector)
    together.add_rows(batch, np.array(fresh))
    for vector in batch:
        one_by_one.add(vector)
    for vector in rng.random((6, n)) < 0.4:
        if vector.any():
            assert together.try_add(vector) == one_by_one.try_add(vector)
    assert {f.pieces for f in together.findings()} == {f.pieces for f in one_by_one.findings()}


def test_a_set_that_keeps_the_rarest_piece_of_a_large_sum_is_found():
    # (0, 1, 4) - (0, 3, 4) + (2, 3, 4) = (1, 2, 4): 4 contributions < k. The search
    # grows from a sum of five contributions that must lose some of its pieces, and the
    # set it finds keeps the piece fewest rows hold (1): the rows tried must be those
    # holding any of several pieces, not only the rarest.
    audit = Audit([2, 1, 1, 2, 2], 5)
    audit.add(np.array([1, 1, 0, 0, 1], dtype=bool))
    audit.add(np.array([1, 0, 0, 1, 1], dtype=bool))
    assert audit.try_add(np.array([0, 0, 1, 1, 1], dtype=bool)) is False
    assert _disclosed([[1, 1, 0, 0, 1], [1, 0, 0, 1, 1], [0, 0, 1, 1, 1]], [2, 1, 1, 2, 2], 5) == {
        frozenset({1, 2, 4})
    }


def _findings_by_enumeration(audit: Audit) -> set[frozenset[int]]:
    """Every small set a sum of W rows gives away, trying every set of rows: the search's
    own ground truth (a 0/1 vector of W is the sum of the rows at its pivots)."""
    w_rows = [i for i, p in enumerate(audit.pivots) if p >= audit.n_big]
    limit = audit.k - 1
    pivot_counts = audit.counts[audit.pivots[w_rows]] if w_rows else np.zeros(0, dtype=np.int64)
    found = set()
    for size in range(1, min(limit, len(w_rows)) + 1):
        chosen = np.array(list(itertools.combinations(range(len(w_rows)), size)), dtype=np.int64)
        chosen = chosen[pivot_counts[chosen].sum(axis=1) <= limit]
        totals = audit.basis[np.array(w_rows)[chosen]].sum(axis=1) % PRIME
        contributions = totals @ audit.counts
        for total in totals[~(totals > 1).any(axis=1) & (contributions >= 1) & (contributions <= limit)]:
            found.add(frozenset(int(audit.original[c]) for c in np.flatnonzero(total)))
    return found


def _trickling_grid(seed: int):
    """Wildcard rows (every row, column and the total) of a 4 x 5 grid of cells, served
    at each of 3 epochs, with each cell's contributions split over the epochs (most
    pieces small, a few big) and a few cells served alone: the versions of the first two
    epochs recorded whatever they give away, those of the last one tried, each checked
    against every set of rows of the audit with and without it."""
    rng = np.random.default_rng(seed)
    rows_a, rows_b, epochs = 4, 5, 3
    cells = rows_a * rows_b
    counts = rng.integers(0, 4, (epochs, cells)) + (rng.random((epochs, cells)) < 0.15) * 6
    audit = Audit(np.maximum(counts, 1).ravel(), 5)
    grid = np.arange(cells).reshape(rows_a, rows_b)
    lines = [grid[a] for a in range(rows_a)] + [grid[:, b] for b in range(rows_b)] + [grid.ravel()]
    for epoch in range(epochs):
        for members in lines + [[c] for c in rng.choice(cells, 3)]:
            vector = np.zeros((epochs, cells), dtype=bool)
            vector[: epoch + 1, members] = True
            if epoch < epochs - 1:
                audit.add(vector.ravel())
                continue
            before = _findings_by_enumeration(audit)
            probe = audit.copy()
            probe.add(vector.ravel())
            assert audit.try_add(vector.ravel()) == (_findings_by_enumeration(probe) <= before)
    return audit


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_the_search_finds_every_set_on_grids_of_trickling_cells(seed):
    """The search against every set of rows, on hierarchies too large for the rational
    oracle: each decision, then the findings of what was served."""
    audit = _trickling_grid(seed)
    found = {f.pieces for f in audit.findings()}
    disclosed = _findings_by_enumeration(audit)
    unions = {a | b for a in disclosed for b in disclosed if not a & b}
    assert disclosed - unions <= found <= disclosed
    assert not audit.undecided()


@settings(max_examples=150, deadline=None)
@given(hierarchies)
def test_versions_decided_together_are_accepted_exactly_when_each_would_be_in_turn(case):
    k, counts, vectors = case
    forced, tried = vectors[: len(vectors) // 3], [v for v in vectors[len(vectors) // 3 :] if any(v)]
    together, one_by_one = Audit(counts, k), Audit(counts, k)
    for vector in forced:
        together.add(np.array(vector, dtype=bool))
        one_by_one.add(np.array(vector, dtype=bool))
    before = (together.rank, together.basis.copy(), together.known.copy())
    each = [one_by_one.try_add(np.array(v, dtype=bool)) for v in tried]
    assert together.try_add_all([np.array(v, dtype=bool) for v in tried]) == all(each)
    if all(each):
        assert {f.pieces for f in together.findings()} == {f.pieces for f in one_by_one.findings()}
    else:  # nothing recorded: the audit is as it was
        assert together.rank == before[0]
        assert np.array_equal(together.basis, before[1]) and np.array_equal(together.known, before[2])


def test_a_set_two_versions_give_away_only_together_refuses_them_together():
    # (1, 2) was served; (0, 1, 2, 3) and (0, 1, 3) are each fine with it, but together
    # they give piece 2 (1 contribution) away.
    audit = Audit([3, 3, 1, 1], 4)
    audit.add(np.array([0, 1, 1, 0], dtype=bool))
    first, second = np.array([1, 1, 1, 1], dtype=bool), np.array([1, 1, 0, 1], dtype=bool)
    assert audit.copy().try_add(second)
    assert audit.try_add_all([first, second]) is False
    assert audit.rank == 1
    assert audit.try_add_all([first]) and audit.try_add(second) is False


def test_a_set_given_away_by_an_early_version_of_a_batch_refuses_the_batch():
    # (1, 2, 3) - (1, 2) is piece 3 (1 contribution); (4, 5, 6, 7) after it, 4 = k
    # contributions of its own, gives nothing away and changes no row that finding uses.
    audit = Audit([3, 3, 1, 1, 1, 1, 1, 1], 4)
    audit.add(np.array([0, 1, 1, 0, 0, 0, 0, 0], dtype=bool))
    early = np.array([0, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    late = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    assert audit.copy().try_add(late)
    assert audit.try_add_all([early, late]) is False
    assert audit.try_add_all([late, early]) is False
    assert audit.try_add_all([late])
