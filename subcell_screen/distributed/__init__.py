"""Scale-out: the segment and embed stages on a Ray cluster (``subcell-screen run CONFIG --engine ray``).

Optional: needs the ``ray`` extra (``pip install 'subcell_screen[ray]'``). Importing this package does not
import Ray; :func:`run_sites_ray` does, and says how to install it when it is missing.

The driver (the process running :func:`subcell_screen.pipeline.run`) indexes and checks the sites, computes the
illumination functions (one Ray task per plate), then streams a site manifest (paths, not pixels) through a
Ray Data pipeline::

    from_items(manifest)
      -> load + illumination correction + site QC           CPU tasks       [ray].load_batch_size sites/task
      -> segment (classical or Cellpose, model per actor)   actor pool      [ray].segment_actors, gpus_per_actor
      -> crop at source resolution (GPU SubCell only)       CPU tasks
      -> SubCell embed (model per actor) | classical        actor pool      [ray].embed_actors, embed_batch_size
         features (CPU tasks)
      -> write per-site Parquet to the output folder        CPU tasks       [ray].output
    driver: read each finished site's files and store it    single DuckDB writer

The per-site compute is the local engine's (:class:`subcell_screen.engine.SiteProcessor`) and the driver
stores sites with the local engine's writer, so both engines give the same tables and per-cell features.
Worker deaths are absorbed by Ray's task retries and actor restarts; file names depend only on the site and
the driver stores each site once, with replace semantics, so retries never lose or duplicate cells.
See docs/scale-out.md.
"""

from __future__ import annotations

from ._cluster import (
                       RAY_INSTALL_HINT,
                       RayEngineError,
                       RaySessionInfo,
                       check_resources,
                       default_object_store_bytes,
                       import_ray,
                       ray_session,
)
from ._engine import output_dir, run_sites_ray
from ._stages import CRASH_ENV

__all__ = [
    "run_sites_ray",
    "ray_session",
    "check_resources",
    "output_dir",
    "import_ray",
    "default_object_store_bytes",
    "RaySessionInfo",
    "RayEngineError",
    "RAY_INSTALL_HINT",
    "CRASH_ENV",
]
