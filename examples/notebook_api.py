# %% [markdown]
# # Exploring a screen store from Python (notebook-style script)
#
# Each `# %%` block is a notebook cell (Jupyter, VS Code, or `jupytext --to notebook`). Run as a script:
#
# ```bash
# subcell-screen demo --out demo_out                  # or any screen folder written by `subcell-screen run`
# python examples/notebook_api.py demo_out --out nb_out
# ```
#
# In a notebook, query results (Polars frames) render as tables and plot functions return matplotlib
# Figures that render inline; as a script, the figures are saved into `--out`.

# %%
import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

from subcell_screen import ScreenStore
from subcell_screen.report import build_reports, list_queries, load_query, plots, run_query

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("screen", nargs="?", default="demo_out", help="screen folder (holds screen.duckdb)")
parser.add_argument("--out", default="nb_out", help="folder for figures and reports")
parser.add_argument("--no-reports", action="store_true", help="skip writing the HTML reports")
args, _ = parser.parse_known_args(sys.argv[1:] if "ipykernel" not in sys.modules else [])
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

store = ScreenStore.open(args.screen, read_only=True)
print(store, "tables:", ", ".join(store.tables()))

# %% [markdown]
# ## Plain SQL and the report's named queries

# %%
print(store.sql("SELECT plate, count(*) AS n_cells FROM cells GROUP BY plate ORDER BY plate")
      if store.has_table("cells") else "no cells yet")
print("report queries:", ", ".join(list_queries()))
print(load_query("zprime").description)

# %% [markdown]
# ## Cell counts in plate layout

# %%
counts = run_query(store, "cells_per_well")
formats = dict(run_query(store, "plate_summary").select("plate", "plate_format").iter_rows())
fig = plots.plate_heatmap(counts, value="n_cells", plate_format=formats, label="cells per well")
fig.savefig(out / "cell_count_heatmap.png", dpi=80)
fig  # noqa: B018 - displays inline in a notebook

# %% [markdown]
# ## Top hits

# %%
hits = run_query(store, "ranked_hits", top=10)
with pl.Config(tbl_cols=8, tbl_width_chars=140):
    print("Top hits:")
    print(hits.select("rank", "perturbation_id", "mean_average_precision", "corrected_p_value", "is_hit"))
everything = run_query(store, "ranked_hits", top=None)
fig = plots.hit_ranking(everything)
fig.savefig(out / "hit_ranking.png", dpi=80)

# %% [markdown]
# ## PCA of normalised well profiles, coloured by control type

# %%
feature_set = run_query(store, "profile_feature_sets")["feature_set"][0]
profiles = run_query(store, "well_profile_vectors", feature_set=feature_set)
x = np.asarray(profiles["features"].to_list(), dtype=float)
x = np.nan_to_num(x - np.nanmean(x, axis=0))
u, s, _ = np.linalg.svd(x, full_matrices=False)
fig = plots.embedding_scatter(u[:, :2] * s[:2], groups=profiles["control_type"].to_list(),
                              title=f"{feature_set}: {profiles.height} wells")
fig.savefig(out / "pca.png", dpi=80)

# %% [markdown]
# ## The full HTML reports

# %%
if not args.no_reports:
    for path in build_reports(store, out):
        print("report:", path)
store.close()
