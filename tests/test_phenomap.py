"""Tests for subcell_screen.phenomap: kNN graph, Paris clustering (against a brute-force reference), nesting,
enrichment (against scipy/statsmodels arithmetic), similarity search, planted effects on simulated screens, and
the real LINCS plate (doses of a compound must co-cluster)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import subcell_screen as ss
from subcell_screen.phenomap import (
    cluster_enrichment,
    cluster_labels,
    consensus_items,
    cut_linkage,
    knn,
    knn_graph,
    neighbour_agreement,
    paris_linkage,
    phenotypic_map,
    similar,
    split_terms,
    unit_rows,
)

DATA = Path(__file__).parent / "data"
LINCS = DATA / "lincs" / "SQ00015054_normalized_feature_select.csv.gz"


# ------------------------------------------------------------------------------------------------------
# graph and clustering


def _greedy_paris(adj: np.ndarray) -> list[tuple[frozenset, float]]:
    """Reference: merge the globally closest pair of clusters, d = p(a)p(b)/p(a,b), until no edge is left."""
    a = adj / adj.sum()
    members = {i: frozenset([i]) for i in range(len(a))}
    p = {i: a[i].sum() for i in range(len(a))}
    w = {(i, j): a[i, j] for i in range(len(a)) for j in range(len(a)) if i < j and a[i, j] > 0}
    nid, out = len(a), []
    while w:
        (x, y), best = min(((k, p[k[0]] * p[k[1]] / v) for k, v in w.items()), key=lambda t: t[1])
        c, nid = nid, nid + 1
        new: dict[tuple[int, int], float] = {}
        for (i, j), v in w.items():
            i2, j2 = (c if i in (x, y) else i), (c if j in (x, y) else j)
            if i2 != j2:
                key = (min(i2, j2), max(i2, j2))
                new[key] = new.get(key, 0.0) + v
        w = new
        p[c] = p.pop(x) + p.pop(y)
        members[c] = members.pop(x) | members.pop(y)
        out.append((members[c], best))
    return out


def _merges(z: np.ndarray, n: int) -> list[tuple[frozenset, float]]:
    members = {i: frozenset([i]) for i in range(n)}
    out = []
    for r, (a, b, h, size) in enumerate(z):
        members[n + r] = members[int(a)] | members[int(b)]
        assert len(members[n + r]) == size
        out.append((members[n + r], h))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paris_equals_greedy_global_merging(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 6))
    g = knn_graph(unit_rows(x), k=4)
    z = paris_linkage(g)
    ref = _greedy_paris(g.toarray())
    got = [(m, h) for m, h in _merges(z, 40) if np.isfinite(h)]
    assert len(got) == len(ref)
    assert sorted((tuple(sorted(m)), round(h, 12)) for m, h in got) == \
        sorted((tuple(sorted(m)), round(h, 12)) for m, h in ref)
    from scipy.cluster.hierarchy import is_monotonic, is_valid_linkage

    finite = z[np.isfinite(z[:, 2])]
    assert is_valid_linkage(z) and np.all(np.diff(z[:, 2]) >= 0)
    assert is_monotonic(finite) if len(finite) == len(z) else True


def test_paris_separates_cliques_and_components():
    from scipy import sparse

    # two 5-cliques joined by one weak edge, plus a disconnected pair
    adj = np.zeros((12, 12))
    for block in (range(0, 5), range(5, 10)):
        for i in block:
            for j in block:
                if i != j:
                    adj[i, j] = 1.0
    adj[4, 5] = adj[5, 4] = 0.1
    adj[10, 11] = adj[11, 10] = 1.0
    z = paris_linkage(sparse.csr_matrix(adj))
    assert np.isinf(z[-1, 2]) and np.isfinite(z[:-1, 2]).all()  # 2 components -> 1 join at inf
    labels = cut_linkage(z, 1.0)  # modularity resolution 1
    assert len(set(labels[:5])) == 1 and len(set(labels[5:10])) == 1 and labels[0] != labels[5]
    assert labels[10] == labels[11] and labels[10] not in (labels[0], labels[5])
    assert len(set(cut_linkage(z, 1e300))) == 2  # components never merge at a finite resolution
    assert len(set(cut_linkage(z, 0.0))) == 12


def test_knn_matches_full_sort_with_ties_by_index():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5))
    x[7] = x[3]  # exact tie
    u = unit_rows(x)
    idx, sim = knn(u, 5)
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    for i in range(30):
        order = np.lexsort((np.arange(30), -s[i]))[:5]
        assert list(idx[i]) == list(order)
        np.testing.assert_allclose(sim[i], s[i, order])
    g = knn_graph(u, k=5)
    assert (g != g.T).nnz == 0 and g.diagonal().sum() == 0


def test_unit_rows_rejects_zero_rows():
    with pytest.raises(ValueError, match="row 1"):
        unit_rows(np.array([[1.0, 0.0], [0.0, 0.0]]))


# ------------------------------------------------------------------------------------------------------
# items and enrichment


def test_consensus_items_median_terms_and_exclusions():
    df = pl.DataFrame({
        "Metadata_pert": ["a", "a", "a", "b", "b", "c", "d"],
        "Metadata_moa": ["x|y", "y", None, "z", "z", "x", "w"],
        "f1": [1.0, 2.0, 10.0, -1.0, -3.0, np.nan, 0.0],
        "f2": [0.0, 4.0, 5.0, 2.0, 2.0, 1.0, 0.0],
    })
    items = consensus_items(df, by=["Metadata_pert"], features=["f1", "f2"], annotations=["Metadata_moa"])
    assert items.frame["item"].to_list() == ["a", "b"]
    np.testing.assert_allclose(items.x, [[2.0, 4.0], [-2.0, 2.0]])
    assert items.frame["n_profiles"].to_list() == [3, 2]
    assert items.frame["Metadata_moa"].to_list() == ["x|y", "z"]
    assert items.terms["Metadata_moa"] == [frozenset({"x", "y"}), frozenset({"z"})]
    ex = dict(items.excluded.select("item", "reason").iter_rows())
    assert set(ex) == {"c", "d"} and "non-finite" in ex["c"] and "zero" in ex["d"]
    assert split_terms(" a | b ||") == frozenset({"a", "b"}) and split_terms(None) == frozenset()


def test_enrichment_p_and_q_against_reference_arithmetic():
    from statsmodels.stats.multitest import multipletests

    labels = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]])
    moa = [{"A"}, {"A"}, {"A"}, {"B"}, {"B"}, {"B"}, set(), {"C"}, {"A", "C"}, {"C"}]
    terms = {"moa": [frozenset(t) for t in moa]}
    e = cluster_enrichment(labels, [1.0, 2.0], terms)
    n = 10

    def hyper_sf(k, big_k, size):  # P(X >= k), X ~ Hypergeometric(N = n, K, size)
        return sum(math.comb(big_k, i) * math.comb(n - big_k, size - i)
                   for i in range(k, min(big_k, size) + 1)) / math.comb(n, size)

    rows = e.sort(["resolution", "cluster", "term"]).iter_rows(named=True)
    got = [(r["resolution"], r["cluster"], r["term"], r["n_in_cluster"], r["cluster_size"], r["n_term"]) for r in rows]
    # only clusters >= 2 items, terms on >= 2 items, overlap >= 2
    assert got == [(1.0, 0, "A", 3, 4, 4), (1.0, 1, "B", 2, 4, 3), (1.0, 2, "C", 2, 2, 3),
                   (2.0, 0, "A", 2, 2, 4), (2.0, 2, "B", 2, 2, 3), (2.0, 4, "C", 2, 2, 3)]
    expected_p = [hyper_sf(k, big_k, size) for *_, k, size, big_k in got]
    e = e.sort(["resolution", "cluster", "term"])
    np.testing.assert_allclose(e["p_value"].to_numpy(), expected_p, rtol=1e-12)
    np.testing.assert_allclose(e["q_value"].to_numpy(), multipletests(expected_p, method="fdr_bh")[1], rtol=1e-12)
    assert set(e["n_items"].to_list()) == {10}
    lab = cluster_labels(e, q_threshold=1.0)
    # the most specific term (fewest carriers) labels a cluster: C (3 items) before A (4)
    assert lab.filter((pl.col("resolution") == 1.0) & (pl.col("cluster") == 0))["label"].item() == "A"
    assert lab.filter((pl.col("resolution") == 1.0) & (pl.col("cluster") == 2))["label"].item() == "C"


# ------------------------------------------------------------------------------------------------------
# simulated screens: planted effects


def _sim_profiles(seed: int, effect_size: float = 8.0):
    from subcell_screen.profiles import NEGCON, normalize
    from subcell_screen.simulate import simulate_well_profiles

    sim = simulate_well_profiles(n_plates=2, n_features=32, effect_size=effect_size, seed=seed)
    return sim, normalize(sim.profiles, method="mad_robustize", controls=NEGCON)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_moa_groups_share_a_cluster_and_inactive_compounds_are_not_enriched(seed):
    sim, prof = _sim_profiles(seed)
    m = ss.phenotypic_map(prof, by=["Metadata_perturbation_id"], annotations=["Metadata_moa"], seed=0)
    key = sim.answer_key.select(pl.col("perturbation_id").alias("Metadata_perturbation_id"), "moa", "kind")
    lab = m.clusters.join(key, on="Metadata_perturbation_id")
    act = lab.filter(pl.col("kind") == "active")
    for moa in sorted(set(act["moa"].to_list())):
        found = []
        for r in m.resolutions:
            grp = act.filter((pl.col("moa") == moa) & (pl.col("resolution") == r))
            if grp["cluster"].n_unique() == 1:
                mates = act.filter((pl.col("resolution") == r) & (pl.col("cluster") == grp["cluster"][0]))
                if (mates["moa"] == moa).all():
                    found.append(r)
        assert found, f"seed {seed}: the 4 compounds planted with {moa} never share a cluster of their own"
        sig = m.enrichment.filter((pl.col("term") == moa) & (pl.col("q_value") < 0.05))
        assert sig.height, f"seed {seed}: {moa} is not enriched in any cluster"
    # inactive compounds: never clustered as active, no enriched cluster of their terms, cluster labelled so
    items = m.items.join(key, on="Metadata_perturbation_id")
    inactive = items.filter(pl.col("kind").is_in(["null", "negcon"]))
    assert inactive["active"].sum() <= 2  # BH at 5 %: at most a chance call or two among 25
    sig = m.enrichment.filter(pl.col("q_value") < 0.05)
    assert sig.filter(pl.col("term").str.starts_with("moa_null")).height == 0
    assert items.filter(pl.col("kind") == "active")["active"].all()
    summary = m.cluster_summary.filter(pl.col("inactive"))
    assert summary["label"].unique().to_list() == [ss.phenomap.INACTIVE_LABEL]


def test_map_contract_nesting_and_reproducibility():
    _, prof = _sim_profiles(4, effect_size=6.0)
    kw = {"by": ["Metadata_perturbation_id"], "annotations": ["Metadata_moa"]}
    a = ss.phenotypic_map(prof, seed=0, **kw)
    b = ss.phenotypic_map(prof, seed=0, **kw)
    assert a.clusters.columns == ["Metadata_perturbation_id", "resolution", "cluster"]
    assert a.coordinates.columns == ["Metadata_perturbation_id", "x", "y"]
    assert a.enrichment.columns[:3] == ["resolution", "cluster", "annotation"]
    assert {"term", "n_in_cluster", "n_term", "n_items", "p_value", "q_value"} <= set(a.enrichment.columns)
    assert a.clusters.height == a.n_items * len(a.resolutions)
    assert a.clusters.equals(b.clusters) and a.coordinates.equals(b.coordinates) and a.enrichment.equals(b.enrichment)
    assert a.neighbours.equals(b.neighbours) and a.items.equals(b.items)
    # nested: every cluster at a finer resolution lies inside one cluster of the coarser one
    res = a.resolutions
    for coarse, fine in zip(res[:-1], res[1:]):
        pairs = pl.DataFrame({"c": a.labels(coarse), "f": a.labels(fine)}).unique()
        assert pairs["f"].is_unique().all(), (coarse, fine)
        parent = a.cluster_summary.filter(pl.col("resolution") == fine).select("cluster", "parent")
        assert dict(parent.iter_rows()) == dict(pairs.select("f", "c").iter_rows())


def test_similarity_search_p_values_against_brute_force():
    from statsmodels.stats.multitest import multipletests

    sim, prof = _sim_profiles(5, effect_size=6.0)
    prof = prof.filter(pl.col("Metadata_control_type").is_null())  # treatments only
    out = similar(prof, "active_00", by=["Metadata_perturbation_id"], k=5)
    items = consensus_items(prof, by=["Metadata_perturbation_id"],
                            features=[c for c in prof.columns if not c.startswith("Metadata_")])
    u = unit_rows(items.x)
    s = u @ u.T
    ids = items.frame["item"].to_list()
    q = ids.index("active_00")
    iu = np.triu_indices(len(ids), 1)
    null = s[iu]  # every pair of distinct items (each item is only its own replicate)
    others = [i for i in range(len(ids)) if i != q]
    p_all = np.array([(1 + np.sum(null >= s[q, j])) / (1 + null.size) for j in others])
    order = sorted(others, key=lambda j: (-s[q, j], j))[:5]
    assert out["neighbour"].to_list() == [ids[j] for j in order]
    np.testing.assert_allclose(out["similarity"].to_numpy(), [s[q, j] for j in order])
    p_of = dict(zip(others, p_all))
    np.testing.assert_allclose(out["p_value"].to_numpy(), [p_of[j] for j in order])
    q_of = dict(zip(others, multipletests(p_all, method="fdr_bh")[1]))
    np.testing.assert_allclose(out["q_value"].to_numpy(), [q_of[j] for j in order])
    # the nearest neighbours of a planted compound are its MoA mates, more similar than 97 % of unrelated
    # pairs (the null holds every pair, the 36 pairs of MoA mates too, so p cannot go far below 36/1326)
    moa = dict(sim.answer_key.select("perturbation_id", "moa").iter_rows())
    assert [moa[n] for n in out["neighbour"].head(3)] == [moa["active_00"]] * 3
    assert (out["p_value"].head(3) < 0.03).all() and (out["p_value"].tail(2) > 0.05).all()


def test_similarity_negcon_null_and_errors():
    _, prof = _sim_profiles(6, effect_size=6.0)
    out = similar(prof, "active_01", by=["Metadata_perturbation_id"], k=3, null="negcon")
    assert out.height == 3 and "DMSO" not in out["neighbour"].to_list()  # controls are the null, not items
    assert (out["p_value"] < 0.01).all()
    null = similar(prof, "null_00", by=["Metadata_perturbation_id"], k=3, null="negcon")
    assert (null["p_value"] > 0.001).all()
    with pytest.raises(KeyError, match="no item matches 'nope'"):
        similar(prof, "nope", by=["Metadata_perturbation_id"])
    with pytest.raises(ValueError, match="null must be one of"):
        similar(prof, "active_01", by=["Metadata_perturbation_id"], null="bad")


def test_per_dose_items_and_map_method_similar():
    _, prof = _sim_profiles(7, effect_size=6.0)
    m = phenotypic_map(prof, by=["Metadata_perturbation_id", "Metadata_concentration"],
                       annotations=["Metadata_moa", "Metadata_perturbation_id"],
                       replicate_by=["Metadata_perturbation_id"])
    doses = m.items.filter(pl.col("Metadata_perturbation_id") == "dose_00")
    assert doses.height == 8 and doses["item"][0].startswith("dose_00 @ ")
    # a compound's doses are replicates: none of them is a non-replicate neighbour when excluded
    out = m.similar("dose_00", k=3, exclude_replicates=True)
    assert out.height == 8 * 3 and not (out["neighbour_Metadata_perturbation_id"] == "dose_00").any()
    # DMSO sits exactly at the controls' centre after normalisation: left out, with the reason
    assert m.excluded.select("Metadata_perturbation_id", "Metadata_concentration").rows() == [("DMSO", None)]
    assert not m.items["is_control"].any()


def test_input_errors_name_the_problem():
    _, prof = _sim_profiles(0)
    with pytest.raises(ValueError, match="Metadata_nope"):
        phenotypic_map(prof, by=["Metadata_nope"])
    with pytest.raises(ValueError, match="Metadata_bad"):
        phenotypic_map(prof, by=["Metadata_perturbation_id"], annotations=["Metadata_bad"])
    with pytest.raises(TypeError, match="not a single string"):
        phenotypic_map(prof, by="Metadata_perturbation_id")
    with pytest.raises(ValueError, match="positive"):
        phenotypic_map(prof, by=["Metadata_perturbation_id"], resolutions=[0.0])
    with pytest.raises(ValueError, match="at least 2 items"):
        phenotypic_map(prof.filter(pl.col("Metadata_perturbation_id") == "active_00"),
                       by=["Metadata_perturbation_id"])
    with pytest.raises(ValueError, match="activity must be one of"):
        phenotypic_map(prof, by=["Metadata_perturbation_id"], activity="maybe")
    # a missing value in one well is skipped by the median; an item whose wells have no values is left out
    feats = [c for c in prof.columns if c.startswith("Cells_Feature_")]
    is3 = pl.col("Metadata_perturbation_id") == "null_03"
    first4 = (pl.col("Metadata_perturbation_id") == "null_04") & (pl.int_range(pl.len()).over(
        "Metadata_perturbation_id") == 0)
    bad = prof.with_columns([pl.when(is3).then(None).otherwise(pl.col(f)).alias(f) for f in feats]) \
        .with_columns(pl.when(first4).then(float("nan")).otherwise(pl.col("Cells_Feature_000"))
                      .alias("Cells_Feature_000"))
    m = phenotypic_map(bad, by=["Metadata_perturbation_id"])
    reasons = dict(m.excluded.select("item", "reason").iter_rows())
    assert set(reasons) == {"DMSO", "null_03"} and "non-finite" in reasons["null_03"]
    assert "zero" in reasons["DMSO"]  # the negative controls' median is their centre after normalisation
    assert "null_03" not in m.items["item"].to_list() and "null_04" in m.items["item"].to_list()
    rows = prof.filter(pl.col("Metadata_perturbation_id") == "null_04")["Cells_Feature_000"].to_numpy()
    got = m.consensus[m.items["item"].to_list().index("null_04"), 0]
    assert got == pytest.approx(np.median(rows[1:]))


# ------------------------------------------------------------------------------------------------------
# real data: the LINCS plate


@pytest.fixture(scope="module")
def lincs_map():
    df = pl.read_csv(LINCS, infer_schema_length=10000)
    wells = df.filter(pl.col("Metadata_mmoles_per_liter") >= 1.0)
    return phenotypic_map(wells, by=["Metadata_Plate", "Metadata_Well"],
                          annotations=["Metadata_InChIKey14", "Metadata_moa", "Metadata_target"], seed=0)


def test_lincs_doses_of_a_compound_co_cluster(lincs_map):
    """Wells at >= 1 µM of 58 compounds: compound identity must be enriched for many compounds; the average-
    linkage baseline reaches 17-46 of 58 depending on the cut (issue 20); at matched numbers of clusters the map
    finds more at every resolution with 6-17 clusters (see benchmarks/phenomap_validation.py)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    m = lincs_map
    assert m.n_items == 190 and m.items["Metadata_InChIKey14"].n_unique() == 58
    assert m.items["active"].all()  # one well per item: activity cannot be tested
    sig = m.enrichment.filter(pl.col("q_value") < 0.05)
    compounds = sig.filter(pl.col("annotation") == "Metadata_InChIKey14")["term"].n_unique()
    assert compounds >= 47, compounds
    assert sig.filter(pl.col("annotation") == "Metadata_moa")["term"].n_unique() >= 40
    terms = {"c": [split_terms(v) for v in m.items["Metadata_InChIKey14"].to_list()]}
    z = linkage(pdist(m.consensus, "cosine"), "average")
    better = 0
    for r in m.resolutions:
        k = m.cluster_summary.filter((pl.col("resolution") == r) & ~pl.col("inactive")).height
        ours = cluster_enrichment(m.labels(r)[None, :], [r], terms).filter(pl.col("q_value") < 0.05)
        base = cluster_enrichment(fcluster(z, k, "maxclust")[None, :] - 1, [r], terms).filter(pl.col("q_value") < 0.05)
        better += ours["term"].n_unique() > base["term"].n_unique()
    assert better >= 3


def test_lincs_nearest_neighbour_moa_agreement(lincs_map):
    other = neighbour_agreement(lincs_map, "Metadata_moa", exclude_same=["Metadata_InChIKey14"])
    assert other.n_items == 181
    assert other.agreement > 5 * other.chance and other.agreement > 0.1
    same = neighbour_agreement(lincs_map, "Metadata_moa")
    assert same.agreement > 0.4 > 10 * same.chance


def test_lincs_nested_and_labelled(lincs_map):
    m = lincs_map
    for coarse, fine in zip(m.resolutions[:-1], m.resolutions[1:]):
        pairs = pl.DataFrame({"c": m.labels(coarse), "f": m.labels(fine)}).unique()
        assert pairs["f"].is_unique().all()
    counts = m.cluster_summary.group_by("resolution").len().sort("resolution")["len"].to_list()
    assert counts == sorted(counts) and counts[0] >= 2
    assert m.cluster_summary["label"].drop_nulls().len() >= 30
