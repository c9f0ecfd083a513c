"""Errors of the embedding stage (all subclasses of :class:`~subcell_screen.SubcellScreenError`)."""

from __future__ import annotations

from .._errors import SubcellScreenError

__all__ = ["ModelError", "UnknownModelError", "WeightsError", "WeightsNotFoundError", "ChecksumError",
           "DownloadError", "CheckpointError"]


class ModelError(SubcellScreenError, RuntimeError):
    """A SubCell model cannot be built, loaded or run."""


class UnknownModelError(ModelError, KeyError):
    """A model name is not in the registry; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class WeightsError(ModelError):
    """Model weight files are missing, corrupt or cannot be fetched."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weight file is not in the cache and may not be downloaded (offline)."""


class ChecksumError(WeightsError):
    """A weight file's SHA-256 differs from the expected or recorded one."""


class DownloadError(WeightsError):
    """A download failed (HTTP error, connection lost after retries, size mismatch)."""


class CheckpointError(ModelError, ValueError):
    """A checkpoint's keys or shapes do not match the SubCell layout (names the file and the keys)."""
