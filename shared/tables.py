"""DataFrames over the wire as Arrow IPC streams: typed, zero-copy on receive, never pickled."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa


def frame_to_ipc(df: pd.DataFrame) -> pa.Buffer:
    """Serialise a frame (index dropped) as one Arrow IPC stream buffer."""
    return table_to_ipc(pa.Table.from_pandas(df, preserve_index=False))


def table_to_ipc(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def ipc_to_table(data: bytes | memoryview | pa.Buffer) -> pa.Table:
    """Raises pyarrow.ArrowInvalid on malformed bytes, including offsets that point outside the data
    (fully validated: these bytes come from a peer, and a bad offset would otherwise be read through)."""
    with pa.ipc.open_stream(pa.py_buffer(data), options=pa.ipc.IpcReadOptions(use_threads=False)) as reader:
        table = reader.read_all()
    table.validate(full=True)
    return table


class IpcTables:
    """``ipc_to_table`` for many small streams of one schema (a live round's one-row factor tables).

    The schema message of each stream is compared as bytes with those seen before; on a match the
    record batches are read against the schema already decoded, so every table shares one schema
    object. Comparing a freshly decoded schema costs Arrow a fingerprint of every field, more than
    reading the row itself. The rows are validated in full as ever; anything unusual (dictionaries,
    an unexpected message) is read the plain way.
    """

    REMEMBERED = 16
    MAX_KEY_BYTES = 64 * 1024

    def __init__(self) -> None:
        self._schemas: dict[bytes, pa.Schema] = {}

    def __call__(self, data: bytes | memoryview | pa.Buffer) -> pa.Table:
        messages = pa.ipc.MessageReader.open_stream(pa.py_buffer(data))
        try:
            first = messages.read_next_message()
        except StopIteration:  # no message at all: the plain reader says so
            return ipc_to_table(data)
        key = first.metadata.to_pybytes() if first.type == "schema" and first.metadata.size <= self.MAX_KEY_BYTES \
            else None
        schema = self._schemas.get(key) if key is not None else None
        if schema is None:
            if key is None:
                return ipc_to_table(data)
            schema = pa.ipc.read_schema(first)
            if any(pa.types.is_dictionary(t) for t in schema.types):
                return ipc_to_table(data)
            if len(self._schemas) >= self.REMEMBERED:
                del self._schemas[next(iter(self._schemas))]
            self._schemas[key] = schema
        batches = []
        for message in messages:
            if message.type != "record batch":
                return ipc_to_table(data)
            batches.append(pa.ipc.read_record_batch(message, schema))
        table = pa.Table.from_batches(batches, schema=schema)
        table.validate(full=True)
        return table


def ipc_to_frame(data: bytes | memoryview | pa.Buffer) -> pd.DataFrame:
    """Inverse of frame_to_ipc."""
    return ipc_to_table(data).to_pandas()
