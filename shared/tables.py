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


def ipc_to_frame(data: bytes | memoryview | pa.Buffer) -> pd.DataFrame:
    """Inverse of frame_to_ipc."""
    return ipc_to_table(data).to_pandas()
