"""Exception types shared across the package.

Every error raised on bad user input names *where* the problem is (file, line or row, column, well) so that
a user can fix it without reading our code.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "SubcellScreenError",
    "LayoutError",
    "ConfigError",
    "ChannelMapError",
    "StoreError",
    "StoreVersionError",
    "PipelineError",
]


class SubcellScreenError(Exception):
    """Base class of all errors raised by subcell_screen."""


class LayoutError(SubcellScreenError, ValueError):
    """A plate layout or plates table is invalid.

    Attributes
    ----------
    path : Path or None
        File that holds the problem.
    line : int or None
        1-based line number in that file (the header is line 1).
    column : str or None
        Column name.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        self.column = column
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(SubcellScreenError, ValueError):
    """A run configuration file is invalid; the message names the key."""


class ChannelMapError(SubcellScreenError, ValueError):
    """A channel map does not fit the acquired channels or the model."""


class StoreError(SubcellScreenError, RuntimeError):
    """The screen store is missing, locked or inconsistent."""


class StoreVersionError(StoreError):
    """The screen store was written by an incompatible schema version."""


class PipelineError(SubcellScreenError):
    """A stage cannot run (missing inputs, no readable site on a plate, a plate without a pixel size, ...)."""
