"""Validation of the phenotypic map on real and simulated data (the figures quoted in the README).

Real data: the LINCS A549 plate SQ00015054 (``tests/data/lincs``; 59 compounds x 6 doses, normalised and
feature-selected CellProfiler profiles). Items are the wells at >= 1 µM (190 wells, 58 compounds with 1-6
wells each). Reported:

* compounds whose identity (``Metadata_InChIKey14``) is enriched in some cluster at q < 0.05 (BH across
  every test of the map: 3 annotations x 5 resolutions), per resolution and in total;
* the same count for the baseline, average linkage on cosine distances cut into as many clusters as the map
  has at each resolution (enrichment computed the same way, one cut at a time);
* MoA terms enriched at q < 0.05;
* nearest-neighbour MoA agreement: share of wells whose most similar well of *another* compound shares an
  MoA term (and including the same compound's other doses), with the chance level.

Simulated data (:func:`subcell_screen.simulate.simulate_well_profiles`, 2 plates x 384 wells, 32 features,
per-plate MAD-robustised on the DMSO wells; items = perturbations): per effect size, MoA groups whose four
members share a cluster holding no active of another MoA at some resolution (of 6), and enriched terms of
inactive compounds (must be 0).

Usage::

    python benchmarks/phenomap_validation.py [--seeds 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
LINCS = REPO / "tests" / "data" / "lincs" / "SQ00015054_normalized_feature_select.csv.gz"


def lincs() -> None:
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    from subcell_screen.phenomap import cluster_enrichment, neighbour_agreement, phenotypic_map, split_terms

    df = pl.read_csv(LINCS, infer_schema_length=10000)
    wells = df.filter(pl.col("Metadata_mmoles_per_liter") >= 1.0)
    ann = ["Metadata_InChIKey14", "Metadata_moa", "Metadata_target"]
    t0 = time.perf_counter()
    m = phenotypic_map(wells, by=["Metadata_Plate", "Metadata_Well"], annotations=ann, seed=0)
    seconds = time.perf_counter() - t0
    sig = m.enrichment.filter(pl.col("q_value") < 0.05)
    cpd = sig.filter(pl.col("annotation") == "Metadata_InChIKey14")
    n_cpd = m.items["Metadata_InChIKey14"].n_unique()
    print(f"LINCS SQ00015054, wells >= 1 uM: {m.n_items} items, {n_cpd} compounds, {len(m.features)} features; "
          f"map in {seconds:.1f} s")
    print(f"  compound identity enriched (q < 0.05, any resolution): {cpd['term'].n_unique()} of {n_cpd}")
    moa_terms = {t for v in m.items["Metadata_moa"].to_list() for t in split_terms(v)}
    print(f"  MoA terms enriched: {sig.filter(pl.col('annotation') == 'Metadata_moa')['term'].n_unique()} of "
          f"{len(moa_terms)}")
    # MoAs shared by several compounds: enriched in a cluster that holds two or more of those compounds?
    cpd_of_moa: dict[str, set] = {}
    for c, v in m.items.select("Metadata_InChIKey14", "Metadata_moa").iter_rows():
        for t in split_terms(v):
            cpd_of_moa.setdefault(t, set()).add(c)
    shared = {t for t, c in cpd_of_moa.items() if len(c) >= 2}
    n_res = len(m.resolutions)
    cl = m.clusters.with_columns(pl.Series("cpd", m.items["Metadata_InChIKey14"].to_list() * n_res),
                                 pl.Series("moa", m.items["Metadata_moa"].to_list() * n_res))
    cross = set()
    for r, c, t in sig.filter(pl.col("annotation") == "Metadata_moa").select("resolution", "cluster", "term").iter_rows():
        if t in shared:
            sub = cl.filter((pl.col("resolution") == r) & (pl.col("cluster") == c))
            if len({cp for cp, mo in sub.select("cpd", "moa").iter_rows() if t in split_terms(mo)}) >= 2:
                cross.add(t)
    print(f"  MoAs of two or more compounds: {len(shared)}; enriched in a cluster holding >= 2 of their compounds: "
          f"{len(cross)} ({', '.join(sorted(cross))})")
    # baseline: average linkage on cosine distances, cut into the map's cluster counts
    x = m.consensus
    z = linkage(pdist(x, "cosine"), "average")
    terms = {"Metadata_InChIKey14": [split_terms(v) for v in m.items["Metadata_InChIKey14"].to_list()]}
    print("  resolution  clusters  map: compounds enriched  average linkage (same #clusters)")
    for r in m.resolutions:
        k = m.cluster_summary.filter((pl.col("resolution") == r) & ~pl.col("inactive")).height
        ours = cluster_enrichment(m.labels(r)[None, :], [r], terms)
        base = cluster_enrichment(fcluster(z, k, "maxclust")[None, :] - 1, [r], terms)
        n_ours = ours.filter(pl.col("q_value") < 0.05)["term"].n_unique()
        n_base = base.filter(pl.col("q_value") < 0.05)["term"].n_unique()
        print(f"  {r:>10g}  {k:>8d}  {n_ours:>23d}  {n_base:>33d}")
    other = neighbour_agreement(m, "Metadata_moa", exclude_same=["Metadata_InChIKey14"])
    any_ = neighbour_agreement(m, "Metadata_moa")
    print(f"  nearest-neighbour MoA agreement, other compounds: {other.agreement:.3f} (chance {other.chance:.3f}, "
          f"{other.n_items} wells); any well: {any_.agreement:.3f} (chance {any_.chance:.3f})")


def simulated(seeds: int) -> None:
    from subcell_screen.phenomap import phenotypic_map
    from subcell_screen.profiles import NEGCON, normalize
    from subcell_screen.simulate import simulate_well_profiles

    print("simulated screens (2 plates x 384, 32 features, 24 actives in 6 MoAs, 24 inactive, 4 dose series):")
    print("  effect size  MoA groups recovered per seed (of 6)  inactive-term enrichments  actives called")
    for effect in (4.0, 6.0, 8.0):
        recovered, null_hits, called = [], 0, []
        for seed in range(seeds):
            sim = simulate_well_profiles(n_plates=2, n_features=32, effect_size=effect, seed=seed)
            prof = normalize(sim.profiles, method="mad_robustize", controls=NEGCON)
            m = phenotypic_map(prof, by=["Metadata_perturbation_id"], annotations=["Metadata_moa"], seed=0)
            key = sim.answer_key.select(pl.col("perturbation_id").alias("Metadata_perturbation_id"), "moa", "kind")
            lab = m.clusters.join(key, on="Metadata_perturbation_id")
            act = lab.filter(pl.col("kind") == "active")
            n_ok = 0
            for moa in sorted(set(act["moa"].to_list())):
                for r in m.resolutions:
                    grp = act.filter((pl.col("moa") == moa) & (pl.col("resolution") == r))
                    if grp["cluster"].n_unique() != 1:
                        continue
                    same = act.filter((pl.col("resolution") == r) & (pl.col("cluster") == grp["cluster"][0]))
                    if (same["moa"] == moa).all():
                        n_ok += 1
                        break
            recovered.append(n_ok)
            sig = m.enrichment.filter(pl.col("q_value") < 0.05)
            null_hits += sig.filter(pl.col("term").str.starts_with("moa_null")).height
            called.append(int(m.items.join(key, on="Metadata_perturbation_id")
                              .filter(pl.col("kind") == "active")["active"].sum()))
        print(f"  {effect:>11g}  {str(recovered):>36}  {null_hits:>25d}  {str(called)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    lincs()
    simulated(args.seeds)


if __name__ == "__main__":
    main()
