"""The publisher: decides, per hierarchy in scope, which rows are served as new versions.

Rules, in order, for every row (plain or wildcard) of a hierarchy (measure, start date,
createdBy) in scope:
1. closed period: the hierarchy is in scope only once its period ended, plus the
   definition's publishDelayHours;
2. primary suppression: a row holds at least k contributions;
3. versions change by k: a served row gets a new version only with k or more new
   contributions since its served one (else the served version stays);
4. modelled exactly: the row's count is the sum of the plain cells under it as the
   ledger knows them (a rebuilt cell that lost purged contributions is frozen, a
   windowed wildcard row covering part of its cells is never served);
5. the cumulative audit (dacc.publication.audit): the new version, with everything ever
   served in the hierarchy, must not let a reader compute the total of 1..k-1
   contributions. Rows are tried in a fixed order (fewer stars first, served rows before
   new ones, then by groups), so the secondary suppression this implies is deterministic;
6. the magnitude rules (shape_of) decide which fields a served row shows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict

import numpy as np
import sqlalchemy as sa

from dacc.publication import sql
from dacc.publication.audit import Audit

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PublicationResult:
    measure_name: str
    hierarchies: int = 0
    """Hierarchies (start date, createdBy) decided again."""
    published: int = 0
    """Rows served as a new version (first versions included)."""
    withheld: int = 0
    """Rows that reached k contributions but were withheld (rules 3 to 5)."""
    epoch: int = 0
    skipped: bool = False
    """Another run held the measure: it publishes when it commits."""
    seconds: float = 0.0


@dataclasses.dataclass
class Hierarchy:
    """What the ledger and the aggregates hold of one (start date, createdBy)."""

    leaves: list = dataclasses.field(default_factory=list)
    pieces: list = dataclasses.field(default_factory=list)
    versions: list = dataclasses.field(default_factory=list)
    rows: list = dataclasses.field(default_factory=list)


def publish_measure(conn, name: str, *, full: bool = False) -> PublicationResult:
    """Publish what is pending for measure `name`, on `conn`, inside the caller's
    transaction (the caller commits; a failure leaves nothing). `full` decides every
    closed hierarchy again, not only those changed or closed since the last time."""
    definition = conn.execute(sa.text(sql.DEFINITION), {"name": name}).one()
    state = conn.execute(sa.text(sql.LOCK_STATE), {"name": name}).one_or_none()
    if state is None:  # created by this statement's CTE: read it now
        state = conn.execute(sa.text(sql.LOCK_STATE_AGAIN), {"name": name}).one()
    params = {
        "name": name,
        "step": sql.STEPS[definition.period],
        "delay": definition.delay,
        "since": state.published_at,
        "epoch": state.epoch + 1,
    }
    everything = full or state.published_at is None
    scope = conn.execute(sa.text(sql.SCOPE_FULL if everything else sql.SCOPE_CHANGED), params).all()
    result = PublicationResult(name, hierarchies=len(scope), epoch=params["epoch"])
    if scope:
        params["starts"] = [s.start_date for s in scope]
        params["apps"] = [s.created_by for s in scope]
        conn.execute(sa.text(sql.HASH_JOINS))
        conn.execute(sa.text(sql.UPDATE_LEAVES), params)
        chosen = []
        params["values"] = definition.p_percent is not None
        for hierarchy in load_hierarchies(conn, params).values():
            accepted, withheld = decide(hierarchy, definition, params["epoch"])
            chosen += accepted
            result.withheld += withheld
        if chosen:
            ids, shapes = zip(*chosen)
            # Array literals as one text each: thousands of ids bound as ARRAY[...] cost
            # the planner more than the statement's execution.
            arrays = {"ids": _array_literal(ids), "shapes": _array_literal(shapes)}
            conn.execute(sa.text(sql.PUBLISH), {**params, **arrays})
        conn.execute(sa.text(sql.PLAN_AS_USUAL))
        result.published = len(chosen)
    conn.execute(sa.text(sql.SAVE_STATE), params)
    log.debug(
        "publication %s: %d hierarchies, %d published, %d withheld",
        name,
        result.hierarchies,
        result.published,
        result.withheld,
    )
    return result


def _array_literal(values) -> str:
    """PostgreSQL's text form of an array of integers or plain words (shape names)."""
    return "{" + ",".join(map(str, values)) + "}"


def load_hierarchies(conn, params: dict, *, with_rows: bool = True) -> dict[tuple, Hierarchy]:
    """The ledger's leaves, pieces and versions, and the aggregate rows, per hierarchy."""
    found: dict[tuple, Hierarchy] = defaultdict(Hierarchy)
    parts = [("leaves", sql.LEAVES), ("pieces", sql.PIECES), ("versions", sql.VERSIONS)]
    if with_rows:
        parts.append(("rows", sql.CANDIDATES))
    keys = list(zip(params["starts"], params["apps"]))
    for attribute, statement in parts:
        for row in conn.execute(sa.text(statement), params).all():
            getattr(found[keys[row.h - 1]], attribute).append(row)
    return found


class Coverage:
    """Which plain cells (leaves) each row covers, from the groups' JSON texts."""

    def __init__(self, leaves):
        self.codes: list[dict[str | None, int]] = []
        self.leaf_codes = np.zeros((len(leaves), 3), dtype=np.int64)
        for i, texts in enumerate(zip(*[(leaf.g1, leaf.g2, leaf.g3) for leaf in leaves]) if leaves else ()):
            codes = {text: n for n, text in enumerate(dict.fromkeys(texts))}
            self.codes.append(codes)
            self.leaf_codes[:, i] = [codes[text] for text in texts]
        self.codes += [{}] * (3 - len(self.codes))
        self.index = {(leaf.g1, leaf.g2, leaf.g3): n for n, leaf in enumerate(leaves)}

    def of(self, groups, stars) -> np.ndarray:
        """Boolean vector over leaves: those under the row with these groups and stars."""
        covered = np.ones(len(self.leaf_codes), dtype=bool)
        for i in range(3):
            if not stars[i]:
                code = self.codes[i].get(groups[i], -2)
                covered &= self.leaf_codes[:, i] == code
        return covered


def stars_of(groups) -> tuple[bool, bool, bool]:
    return tuple(_is_star(text) for text in groups)


def _is_star(text: str | None) -> bool:
    # jsonb's text of a one-key group is '{"key": "value"}'; "*" is refused as a value
    # at ingestion, so only a wildcard ends this way.
    return text is not None and text.endswith(': "*"}')


class PieceSpace:
    """The pieces of a hierarchy, and each version's 0/1 vector over them."""

    def __init__(self, hierarchy: Hierarchy):
        self.coverage = Coverage(hierarchy.leaves)
        self.leaf_counts = np.array([leaf.count for leaf in hierarchy.leaves], dtype=np.int64)
        self.frozen = np.array([leaf.frozen for leaf in hierarchy.leaves], dtype=bool)
        self.piece_leaf = np.array(
            [self.coverage.index[(p.g1, p.g2, p.g3)] for p in hierarchy.pieces], dtype=np.int64
        )
        self.piece_epoch = np.array([p.epoch for p in hierarchy.pieces], dtype=np.int64)
        self.piece_counts = np.array([p.count for p in hierarchy.pieces], dtype=np.int64)
        self._covered: dict[tuple, np.ndarray] = {}
        self.prepare(
            [(v.g1, v.g2, v.g3) for v in hierarchy.versions] + [(r.g1, r.g2, r.g3) for r in hierarchy.rows]
        )

    def prepare(self, many) -> None:
        """Compute the leaves covered by each of these groups at once (one comparison of
        codes over all leaves, instead of one pass per row)."""
        todo = [groups for groups in dict.fromkeys(many) if groups not in self._covered]
        if not todo:
            return
        codes = self.coverage.codes
        wanted = np.array(
            [[-1 if _is_star(g[i]) else codes[i].get(g[i], -2) for i in range(3)] for g in todo],
            dtype=np.int64,
        )
        leaf_codes = self.coverage.leaf_codes
        covered = np.ones((len(todo), len(leaf_codes)), dtype=bool)
        for i in range(3):
            covered &= (wanted[:, i, None] == -1) | (wanted[:, i, None] == leaf_codes[None, :, i])
        self._covered.update(zip(todo, covered))

    def covered(self, groups) -> np.ndarray:
        found = self._covered.get(groups)
        if found is None:
            found = self._covered[groups] = self.coverage.of(groups, stars_of(groups))
        return found

    def vector(self, groups, epoch: int) -> np.ndarray:
        """The pieces a version of the row `groups` published at `epoch` covers."""
        covered = self.covered(groups)
        if len(self.piece_leaf) == 0:
            return np.zeros(0, dtype=bool)
        return covered[self.piece_leaf] & (self.piece_epoch <= epoch)

    def covered_rows(self, many) -> np.ndarray:
        """Boolean matrix over leaves: row i is covered(many[i])."""
        covered = np.array([self.covered(groups) for groups in many], dtype=bool)
        return covered.reshape(len(many), len(self.leaf_counts))

    def vectors(self, many, epochs, *, covered=None) -> np.ndarray:
        """Boolean matrix: row i is vector(many[i], epochs[i]), all at once."""
        covered = self.covered_rows(many) if covered is None else covered
        return covered[:, self.piece_leaf] & (self.piece_epoch[None, :] <= np.asarray(epochs)[:, None])

    def consistent_rows(self, covered: np.ndarray, counts) -> np.ndarray:
        """consistent() of many rows at once, from their covered_rows()."""
        return (covered @ self.leaf_counts == np.asarray(counts)) & ~(covered & self.frozen).any(axis=1)

    def consistent(self, groups, count: int) -> bool:
        """Rule 4: the row is the sum of its leaves as the ledger knows them."""
        covered = self.covered(groups)
        return int(self.leaf_counts @ covered) == count and not (self.frozen & covered).any()


def served_audits(space: PieceSpace, hierarchy: Hierarchy, k: int, *, dominated=None) -> AuditPair:
    """Audits holding every version ever served in the hierarchy: one for counts (every
    served row), one for sums (rows that served their sum). In the sums' audit, the
    pieces of a dominated cell (boolean mask over leaves) weigh 1, as if it were a cell
    of one contribution: no combination may give its sum away."""
    versions = hierarchy.versions
    matrix = space.vectors([(v.g1, v.g2, v.g3) for v in versions], [v.epoch for v in versions])
    sizes = matrix @ space.piece_counts
    # A served set of fewer than k contributions (served before k was raised) is no
    # finding: it was already public.
    exempt = [np.flatnonzero(matrix[i]) for i in np.flatnonzero((sizes > 0) & (sizes < k))]
    counts = Audit(space.piece_counts, k, exempt=exempt)
    weights = space.piece_counts.copy()
    if dominated is not None and len(space.piece_leaf):
        weights[dominated[space.piece_leaf]] = 1
    with_sum = np.array([version.with_sum for version in versions], dtype=bool)
    # While the two audits hold the same versions with the same weights, they are one
    # object (half the work). Versions are only recorded here, whatever they disclose:
    # what an audit holds is the span of its versions, whatever their order.
    same = bool(with_sum.all()) and np.array_equal(weights, space.piece_counts)
    sums = None if same else Audit(weights, k, exempt=exempt)
    # A version that is one big piece (a plain cell's first version, mostly) only makes
    # that piece known: all such at once, before the others (big by each audit's own
    # weights: a dominated cell's piece is small in the sums' one).
    alone = matrix.sum(axis=1) == 1
    pieces = matrix.argmax(axis=1) if matrix.shape[1] else np.zeros(len(matrix), dtype=np.int64)
    known = alone & (sizes >= k)
    counts.mark_known(pieces[known])
    known_in_sums = alone & with_sum & (weights[pieces] >= k) if len(weights) else alone & False
    if sums is not None:
        sums.mark_known(pieces[known_in_sums])
    for i in np.flatnonzero(~known):
        counts.add(matrix[i])
    if sums is not None:
        for i in np.flatnonzero(with_sum & ~known_in_sums):
            sums.add(matrix[i])
    return AuditPair(counts, sums)


class AuditPair:
    """The counts' audit (every served row) and the sums' audit (rows serving their sum),
    shared while they are equal."""

    def __init__(self, counts: Audit, sums: Audit | None):
        self.counts = counts
        self._sums = sums

    @property
    def sums(self) -> Audit:
        return self.counts if self._sums is None else self._sums

    @property
    def forked(self) -> bool:
        return self._sums is not None

    def try_add(self, vector, *, with_sum: bool) -> bool:
        """Both audits accept the version (the sums' one only if it serves its sum)."""
        if self._sums is None:
            if with_sum:
                return self.counts.try_add(vector)
            self._sums = self.counts.copy()
        if not self.counts.try_add(vector):
            return False
        if with_sum and not self._sums.try_add(vector):
            self.counts.revert_last()
            return False
        return True


def shape_of(row, k: int, extremes: str, p_percent) -> str:
    """What a row that passes the threshold may show (dacc.publication.sql.SHAPES):
    - dominance (pPercent): the values other than the two largest must reach p % of the
      largest (non-negative values), else count only;
    - few non-zero values: 0 < countNotZero < k shows count and countNotZero only (the
      sum would be those few values);
    - extremes: min, max, median, quartiles and std need 2k contributors (k2), never
      (hide) or always (show)."""
    if dominated(row, p_percent):
        return "count"
    if 0 < row.count_not_zero < k:
        return "counts"
    if extremes == "hide" or (extremes == "k2" and row.contributors < 2 * k):
        return "no_extremes"
    return "full"


def dominated(row, p_percent) -> bool:
    """The p% rule: the values other than the two largest sum to less than p % of the
    largest (a cell with a negative value counts as dominated: the rule needs
    non-negative values)."""
    if p_percent is None:
        return False
    largest = row.largest_value or 0
    rest = row.sum - largest - (row.second_largest_value or 0)
    return row.min < 0 or rest * 100 < p_percent * largest


def decide(hierarchy: Hierarchy, definition, epoch: int) -> tuple[list[tuple[int, str]], int]:
    """([(aggregate id, shape)] to serve as new versions, rows withheld) for one hierarchy."""
    k = definition.k
    space = PieceSpace(hierarchy)
    mask = np.zeros(len(space.leaf_counts), dtype=bool)
    for row in hierarchy.rows if definition.p_percent is not None else ():
        groups = (row.g1, row.g2, row.g3)
        if not any(stars_of(groups)) and dominated(row, definition.p_percent):
            mask |= space.coverage.of(groups, (False, False, False))
    audits = served_audits(space, hierarchy, k, dominated=mask)
    candidates = []
    for row in hierarchy.rows:
        # k counts distinct contributors (a measure without one is its own).
        if row.count < k or row.contributors < k:
            continue
        if row.served is not None and row.count < row.served + k:
            continue  # rule 3 (also keeps a row that lost contributions as served)
        groups = (row.g1, row.g2, row.g3)
        stars = sum(stars_of(groups))
        candidates.append((stars, row.served is None, [g or "" for g in groups], row.id, groups, row))
    candidates.sort(key=lambda c: c[:4])
    settled = _new_pieces_of_plain_cells(space, audits, candidates, definition, epoch)
    accepted, withheld = [], 0
    run = []  # consecutive versions the audits decide together
    for _, _, _, aggregate_id, groups, row in candidates:
        if aggregate_id in settled:
            accepted.append((aggregate_id, settled[aggregate_id]))
            continue
        if not space.consistent(groups, row.count):
            withheld += 1
            continue
        shape = shape_of(row, k, definition.extremes, definition.p_percent)
        vector = space.vector(groups, epoch)
        # A row that hides its sum counts as withheld for the sums' audit: a total
        # above it must not give that sum away.
        with_sum = shape not in ("counts", "count")
        if with_sum and not audits.forked:
            run.append((aggregate_id, shape, vector))
            continue
        withheld += _decide_together(audits, run, accepted)
        run = []
        if audits.try_add(vector, with_sum=with_sum):
            accepted.append((aggregate_id, shape))
        else:
            withheld += 1
    withheld += _decide_together(audits, run, accepted)
    return accepted, withheld


def _decide_together(audits: AuditPair, run: list, accepted: list) -> int:
    """Decide consecutive versions that serve their sum while the audits are one, as
    the one-by-one loop would: all at once when together they disclose nothing new
    (then so does each in turn), else each half in order; appends to `accepted` and
    returns how many were withheld. Late data trickling into many cells makes runs of
    wildcard versions that each need a search: this is one search for most runs."""
    if not run:
        return 0
    if len(run) == 1:
        aggregate_id, shape, vector = run[0]
        if audits.try_add(vector, with_sum=True):
            accepted.append((aggregate_id, shape))
            return 0
        return 1
    if audits.counts.try_add_all([vector for _, _, vector in run]):
        accepted.extend((aggregate_id, shape) for aggregate_id, shape, _ in run)
        return 0
    half = len(run) // 2
    return _decide_together(audits, run[:half], accepted) + _decide_together(audits, run[half:], accepted)


def _new_pieces_of_plain_cells(space: PieceSpace, audits: AuditPair, candidates, definition, epoch) -> dict:
    """{aggregate id: shape} of the plain cells accepted together, without a search:
    those whose new version holds a piece of this epoch that is big and in no row of
    the audit (typically: the cell gained k or more). Its reduced vector then has a big
    pivot (that piece), which leaves the small sets computable as they were: the loop
    would accept it too. Beyond pieces already known, a version that is that piece
    alone only makes it known; the others become rows with that piece as pivot.

    Plain cells come first in the order of decision and cover disjoint pieces, and
    each such piece is in no row but its own cell's: no decision before or between them
    changes another's, so taking them together gives the audit the same span as the
    one-by-one loop (only the choice of pivots may differ)."""
    if audits.forked or not len(space.piece_counts):
        return {}
    k, audit = definition.k, audits.counts
    plain = [
        (aggregate_id, groups, row) for stars, _, _, aggregate_id, groups, row in candidates if stars == 0
    ]
    covered = space.covered_rows([groups for _, groups, _ in plain])
    consistent = space.consistent_rows(covered, [row.count for _, _, row in plain])
    shapes = [shape_of(row, k, definition.extremes, definition.p_percent) for _, _, row in plain]
    keep = consistent & np.isin(shapes, ("full", "no_extremes")) if plain else np.zeros(0, dtype=bool)
    if not keep.any():
        return {}
    plain = [(c, shape) for c, shape, kept in zip(plain, shapes, keep) if kept]
    vectors = space.vectors(None, [epoch] * len(plain), covered=covered[keep])
    newest = vectors & (space.piece_epoch == epoch)[None, :]
    pieces = newest.argmax(axis=1)
    usable = newest.any(axis=1) & audit.unheld_big(pieces)
    remaining = vectors & ~audit.known_pieces()[None, :]
    alone = usable & (remaining.sum(axis=1) == 1)
    audit.mark_known(pieces[alone])
    rows = usable & ~alone
    if rows.any():
        audit.add_rows(remaining[rows], pieces[rows])
    return {aggregate_id: shape for ((aggregate_id, _, _), shape), ok in zip(plain, usable) if ok}
