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

from dacc.publication.audit import Audit


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
