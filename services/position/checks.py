"""What a factor result must be before the position service uses it, and how rejections are told.

Pure checks on Arrow tables (no I/O) plus one small counter that logs each kind of rejection once per
peer, so a peer that repeats a bad message costs a counter increment, not a log line each time.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger("position")
MAX_TABLE_BYTES = 64 * 2**20
"""A factor table frame above this is refused unread (a worker's table is a few hundred bytes a symbol)."""


class BadResults(Exception):
    """A factor result that cannot be used; the message says what was wrong."""


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _normalised_schema(schema: pa.Schema, numeric: Sequence[str]) -> pa.Schema:
    """The schema a table is normalised to, or BadResults naming the first problem with its columns."""
    names = schema.names
    if len(set(names)) != len(names):
        raise BadResults(f"duplicate column names {sorted({n for n in names if names.count(n) > 1})[:5]}")
    missing = [c for c in ("symbol", "close", *numeric) if c not in names]
    if missing:
        raise BadResults(f"missing column(s) {', '.join(missing)}")
    kind = schema.field("symbol").type
    if not _is_text(kind):
        raise BadResults(f"column symbol is {kind}, not text")
    for column in ("close", *numeric):
        kind = schema.field(column).type
        if not _is_number(kind):
            raise BadResults(f"column {column} is {kind}, not a number")
    fields = []
    for f in schema:
        if _is_text(f.type):
            f = f.with_type(pa.large_string())
        elif f.name in ("close", *numeric):
            f = f.with_type(pa.float64())
        fields.append(f.remove_metadata())
    return pa.schema(fields)


class TableCheck:
    """What a factor table must be, and the form the round uses, with the column checks done once per schema.

    Required: one row per symbol, in order, in a text ``symbol`` column; ``close`` and every
    ``numeric`` column present and numeric; ``close`` finite and positive (it sizes positions).
    Normalised: every text column is ``large_string`` (which string type a sender used must not
    matter), the required numbers are ``float64``, and schema metadata (pandas' own) is dropped.

    A live round brings one single-row table per symbol, all of one schema: checking the columns of
    each again was a third of the position service's time. The values (symbols, close) are checked
    in every table; the schemas remembered are bounded, so a peer varying them costs only time.
    """

    REMEMBERED = 64
    MAX_METADATA_BYTES = 4096
    """A schema carrying more metadata than this is checked every time, never held."""

    def __init__(self, numeric: Sequence[str]):
        self.numeric = tuple(numeric)
        self._schemas: list[tuple[pa.Schema, pa.Schema | BadResults]] = []

    def normalised_schema(self, schema: pa.Schema) -> pa.Schema:
        found = next((i for i, (seen, _) in enumerate(self._schemas) if seen.equals(schema, check_metadata=True)),
                     None)  # newest first; a dict would hash every field of each schema, costing more than this
        if found is not None:
            self._schemas.insert(0, self._schemas.pop(found))
            known = self._schemas[0][1]
        else:
            try:
                known = _normalised_schema(schema, self.numeric)
            except BadResults as e:
                known = e
            if sum(len(k) + len(v) for k, v in (schema.metadata or {}).items()) <= self.MAX_METADATA_BYTES:
                self._schemas.insert(0, (schema, known))
                del self._schemas[self.REMEMBERED:]
        if isinstance(known, BadResults):
            raise BadResults(str(known))
        return known

    def __call__(self, table: pa.Table, symbols: Sequence[str]) -> pa.Table:
        """The table as the round uses it, or BadResults naming the first problem."""
        target = self.normalised_schema(table.schema)
        if table.num_rows != len(symbols):
            raise BadResults(f"{table.num_rows} row(s) for {len(symbols)} symbol(s)")
        if not table.schema.equals(target, check_metadata=True):
            try:
                table = pa.Table.from_arrays([array if array.type == f.type else array.cast(f.type)
                                              for f, array in zip(target, table.columns, strict=True)], schema=target)
            except (pa.ArrowException, ValueError) as e:  # an integer too large for a float, say
                raise BadResults(f"columns that cannot be read as the round's types ({str(e)[:200]})") from None
        got = table["symbol"].to_pylist()
        if got != list(symbols):
            wrong = next(i for i, (a, b) in enumerate(zip(got, symbols, strict=True)) if a != b)
            raise BadResults(f"row {wrong} is {got[wrong]!r}, the message says {symbols[wrong]!r}")
        close = table["close"]
        if close.null_count or not _finite_positive(close):
            raise BadResults("close is missing, not finite or not positive in some row")
        return table


def _finite_positive(column: pa.ChunkedArray) -> bool:
    if len(column) <= 8:  # a live round's one-row tables: plain Python is cheaper than three kernels
        return all(math.isfinite(v) and v > 0 for v in column.to_pylist())
    return bool(pc.all(pc.and_(pc.is_finite(column), pc.greater(column, 0))).as_py())


def normalise_table(table: pa.Table, symbols: Sequence[str], numeric: Sequence[str]) -> pa.Table:
    """``TableCheck`` for one table."""
    return TableCheck(numeric)(table, symbols)


def fits(schema: pa.Schema | None, table: pa.Table) -> str | None:
    """Why ``table`` cannot join the round's tables (None: it can); the round's concat must never fail."""
    if schema is None or schema.equals(table.schema):
        return None
    try:
        pa.unify_schemas([schema, table.schema], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        return f"columns conflict with the round's other tables ({e})"
    return None


class Rejects:
    """Counts rejections by reason; logs the first of each reason from each peer (a bounded set)."""

    MAX_LOGGED = 1024

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()

    def __call__(self, reason: str, peer: str, detail: str) -> None:
        self.counts[reason] += 1
        key = (peer, reason)
        if key in self._logged:
            return
        if len(self._logged) >= self.MAX_LOGGED:
            if self.counts[reason] == 1 or math.log2(self.counts[reason]).is_integer():
                log.warning("dropped %s from %s (%d so far; more peers than are logged one by one): %s",
                            reason, peer, self.counts[reason], detail)
            return
        self._logged.add(key)
        log.warning("dropped %s from %s: %s (said once per peer; counted)", reason, peer, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
