"""Site profiles: one site's cells reduced where they are computed (a worker, a GPU process), so that well
profiles never need the cells again.

A site profile holds, for every feature, the median and the mean over the site's cells (the two
``[profiles].cell_to_site`` choices), and the mean class probabilities of SubCell cells. Medians are exact
(the middle value, or the float64 mean of the two middle values, as numpy and pycytominer compute them) and
NaN values are skipped, exactly as :func:`~subcell_screen.profiles.aggregate_array` does on all cells of a
plate, so ``cells -> site profiles -> wells`` equals ``cells -> wells`` computed from stored cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

__all__ = ["SiteProfile", "site_profile", "site_profiles_frame", "profiles_of", "SITE_PROFILE_SCHEMA"]

#: Columns of a site-profile frame (``median``/``mean``/``probabilities``: float64 lists of one width).
SITE_PROFILE_SCHEMA: dict[str, Any] = {"plate": pl.String, "well": pl.String, "site": pl.Int64, "n_cells": pl.Int64,
                                       "median": pl.List(pl.Float64), "mean": pl.List(pl.Float64),
                                       "probabilities": pl.List(pl.Float64)}


@dataclass(frozen=True)
class SiteProfile:
    """One site's cells, reduced.

    Attributes
    ----------
    n_cells : int
    median, mean : numpy.ndarray
        ``(D,)`` float64 over the site's cells (NaN skipped; NaN where no cell has a value).
    probabilities : numpy.ndarray or None
        ``(P,)`` float64 mean class probabilities (SubCell), None for classical features.
    """

    n_cells: int
    median: np.ndarray = field(repr=False)
    mean: np.ndarray = field(repr=False)
    probabilities: np.ndarray | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return int(self.median.nbytes + self.mean.nbytes + (0 if self.probabilities is None else
                                                            self.probabilities.nbytes))


def site_profile(x: np.ndarray, *, probabilities: np.ndarray | None = None) -> SiteProfile | None:
    """Reduce one site's ``(n_cells, D)`` features (float32/float64, full precision) to a :class:`SiteProfile`.

    Returns None for a site without cells (a well's site count covers sites with cells only).
    """
    from ._aggregate import reduce_groups

    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"site features must be (n_cells, D), got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        return None
    codes = np.zeros(n, dtype=np.int64)
    prob = None
    if probabilities is not None:
        p = np.asarray(probabilities, dtype=np.float64).reshape(n, -1)
        prob = p.sum(axis=0) / n
    return SiteProfile(n_cells=n, median=reduce_groups(x, codes, 1, "median")[0],
                       mean=reduce_groups(x, codes, 1, "mean")[0], probabilities=prob)


def site_profiles_frame(arrays: Any, *, probabilities: Any = None) -> pl.DataFrame:
    """Site profiles of many sites read back from the store (:class:`~subcell_screen.profiles.SiteArrays`).

    ``probabilities``: the sites' probability arrays in the same site order, or None.

    Returns
    -------
    polars.DataFrame
        :data:`SITE_PROFILE_SCHEMA`, one row per site with cells.
    """
    from ._aggregate import reduce_groups

    sites = arrays.sites
    n = sites.height
    if n == 0:
        return pl.DataFrame(schema=SITE_PROFILE_SCHEMA)
    codes = arrays.site_codes()
    med = reduce_groups(arrays.x, codes, n, "median")
    mean = reduce_groups(arrays.x, codes, n, "mean")
    prob = [None] * n
    if probabilities is not None and probabilities.x.shape[0] == arrays.x.shape[0]:
        p = probabilities.x.astype(np.float64)
        sums = np.zeros((n, p.shape[1]))
        np.add.at(sums, codes, p)
        prob = list(sums / sites["n_cells"].to_numpy()[:, None])
    return pl.DataFrame({"plate": sites["plate"], "well": sites["well"], "site": sites["site"].cast(pl.Int64),
                         "n_cells": sites["n_cells"], "median": list(med), "mean": list(mean),
                         "probabilities": prob}, schema=SITE_PROFILE_SCHEMA)


def profiles_of(keys: list[tuple[str, str, int]], profiles: list[SiteProfile]) -> pl.DataFrame:
    """A site-profile frame of ``(plate, well, site)`` keys and their :class:`SiteProfile` s."""
    return pl.DataFrame({"plate": [k[0] for k in keys], "well": [k[1] for k in keys],
                         "site": [int(k[2]) for k in keys], "n_cells": [p.n_cells for p in profiles],
                         "median": [p.median for p in profiles], "mean": [p.mean for p in profiles],
                         "probabilities": [p.probabilities for p in profiles]}, schema=SITE_PROFILE_SCHEMA)
