"""`DocumentBatch`: documents as a pyarrow Table or a pandas DataFrame."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from gristmill.tasks.base import Task

__all__ = ["DocumentBatch"]


@dataclass(kw_only=True)
class DocumentBatch(Task[pa.Table | pd.DataFrame]):
    """A batch of documents, one per row. Convert with `to_pyarrow()` / `to_pandas()`."""

    @property
    def num_items(self) -> int:
        """The number of documents (rows)."""
        return 0 if self.data is None else len(self.data)

    @property
    def columns(self) -> list[str]:
        """The names of the batch's columns."""
        if isinstance(self.data, pa.Table):
            return list(self.data.column_names)
        return [str(c) for c in self.data.columns]

    def validate(self) -> bool:
        """False when there is no data or no document."""
        return self.data is not None and self.num_items > 0

    def to_pyarrow(self) -> pa.Table:
        """The documents as a pyarrow Table (no copy when they already are one)."""
        if isinstance(self.data, pa.Table):
            return self.data
        return pa.Table.from_pandas(self.data, preserve_index=False)

    def to_pandas(self) -> pd.DataFrame:
        """The documents as a pandas DataFrame (no conversion when they already are one)."""
        if isinstance(self.data, pd.DataFrame):
            return self.data
        frame: pd.DataFrame = self.data.to_pandas()
        return frame
