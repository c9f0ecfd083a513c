"""copairs users switching to subcell_screen.score (issue 23): the AP tie rule, and the copairs functions added
(expected_ap / normalize_ap, hierarchical FDR, replicate correlation and percent replicating), each against
copairs 0.5.5 on random inputs; plus the shared naming rules of profiles and score (issue 18 §5)."""

from __future__ import annotations

import inspect
import re
import tempfile
import warnings
from pathlib import Path

import copairs.map as cm
import numpy as np
import pandas as pd
import polars as pl
import pytest
from copairs import replicating as cr
from copairs.map.normalization import expected_ap as cp_expected_ap
from copairs.map.normalization import normalize_ap as cp_normalize_ap
from statsmodels.stats.multitest import multipletests

import subcell_screen.profiles as profiles
import subcell_screen.score as score
from subcell_screen.score import (
    average_precision,
    corr_between_replicates,
    correlation_test,
    expected_ap,
    mean_average_precision,
    mean_average_precision_hierarchical,
    normalize_ap,
)
from subcell_screen.score._multitest import fdr_bh_reject

PAIRS = dict(pos_sameby=["g"], pos_diffby=[], neg_sameby=[], neg_diffby=["g"])


def _cp_ap(meta, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cm.average_precision(meta, x, **PAIRS, progress_bar=False)


# -- the tie rule ------------------------------------------------------------------------------------------


def test_tied_similarities_rank_positives_first_whatever_the_feature_dtype():
    """Rows 1-3 are scaled copies of one vector and row 0 of it too: row 2's positive (row 3) and its two
    negatives (rows 0, 1) tie at cosine 1. The rule: similarities in float64, rounded to float32, exact ties
    rank positives first (copairs' stable sort over positives-then-negatives). float32 features give the same
    AP as float64 ones, equal to copairs' on float64; copairs on float32 features breaks the tie with float32
    rounding noise instead (0.5 vs 0.75 here)."""
    v = np.array([2.0, 1.0, 0.0, -2.0])
    x = np.stack([0.3 * v, 0.1 * v, 0.1 * v, 0.1 * v, np.array([2.0, 1.0, 3.0, 0.0])]).astype(np.float32)
    meta = pd.DataFrame({"g": ["a", "a", "b", "b", "b"]})
    ours32 = average_precision(meta, x, **PAIRS)["average_precision"].to_numpy()
    ours64 = average_precision(meta, x.astype(np.float64), **PAIRS)["average_precision"].to_numpy()
    ref64 = _cp_ap(meta, x.astype(np.float64))["average_precision"].to_numpy()
    ref32 = _cp_ap(meta, x)["average_precision"].to_numpy()
    assert np.array_equal(ours32, ours64)
    assert np.abs(ours32 - ref64).max() < 1e-12
    assert ours32[2] == ours32[3] == 0.75  # (1/1 + 2/4) / 2: the tied positive first, then two negatives
    assert ref32[2] == 0.5  # copairs on float32: the positive lands after the tied negatives


@pytest.mark.parametrize("seed", range(5))
def test_tie_heavy_float32_agrees_with_copairs_on_float64(seed):
    rng = np.random.default_rng(seed)
    n = 30
    base = rng.integers(-3, 4, size=(4, 6)).astype(float)
    x = base[rng.integers(0, 4, n)] * rng.choice([0.1, 0.3, 0.7, 1.3, 3.3], size=(n, 1))
    x = x.astype(np.float32)
    x[np.abs(x).sum(axis=1) == 0] = 1.0
    meta = pd.DataFrame({"g": rng.choice(["a", "b", "c", "d"], n)})
    ours = average_precision(meta, x, **PAIRS)
    ref = _cp_ap(meta, x.astype(np.float64))
    assert np.allclose(ours["average_precision"], ref["average_precision"], rtol=0, atol=1e-12, equal_nan=True)
    assert np.array_equal(ours["n_pos_pairs"], ref["n_pos_pairs"])


# -- expected / normalized AP ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_expected_and_normalized_ap_match_copairs(seed):
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 30, 200)
    n = rng.integers(0, 300, 200)
    m[:4], n[:4] = [1, 0, 5, 1], [0, 1, 0, 1]  # L = 1 and all-positive edge cases
    n[(m + n) == 0] = 1
    ap = rng.random(200)
    ref_e = np.array([cp_expected_ap(int(a), int(b)) for a, b in zip(m, n)])
    assert np.array_equal(expected_ap(m, n), ref_e)
    assert expected_ap(int(m[7]), int(n[7])) == ref_e[7] and isinstance(expected_ap(3, 9), float)
    assert np.array_equal(normalize_ap(ap, m, n), cp_normalize_ap(ap, m, n))
    assert normalize_ap(0.4, 3, 9) == cp_normalize_ap(0.4, 3, 9)
    with pytest.raises(ValueError, match="n_pos=0, n_neg=0"):
        expected_ap(0, 0)
    with pytest.raises(ValueError, match="n_pos=-1"):
        normalize_ap([0.5], [-1], [3])


# -- hierarchical FDR --------------------------------------------------------------------------------------


def _dose_screen(seed: int, n_cpd: int = 10, n_dose: int = 4):
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cpd):
        eff = rng.normal(size=16) * (c < n_cpd // 2)
        for dose in range(n_dose):
            rows += [(f"c{c}", dose, eff * dose * 0.7 + rng.normal(size=16)) for _ in range(3)]
    rows += [("DMSO", -1, rng.normal(size=16)) for _ in range(20)]
    meta = pd.DataFrame({"cpd": [r[0] for r in rows], "dose": [r[1] for r in rows]})
    meta["ref"] = np.where(meta.cpd == "DMSO", np.arange(len(meta)), -1)
    return meta, np.stack([r[2] for r in rows])


@pytest.mark.parametrize("seed", range(3))
def test_hierarchical_map_matches_copairs(seed):
    meta, x = _dose_screen(seed)
    kw = dict(pos_sameby=["cpd", "dose", "ref"], pos_diffby=[], neg_sameby=[], neg_diffby=["cpd", "ref"])
    ap = average_precision(meta, x, **kw)
    ap = ap[ap.cpd != "DMSO"]
    args = dict(sameby=["cpd", "dose"], null_size=2000, threshold=0.05, seed=0, hierarchical_by=["cpd"])
    ref = cm.mean_average_precision_hierarchical(ap, progress_bar=False, cache_dir=tempfile.mkdtemp(), **args)
    ours = mean_average_precision_hierarchical(ap, **args)
    assert list(ours.columns) == list(ref.columns)
    for c in ("p_value", "stage1_p_value", "stage1_corrected_p_value", "corrected_p_value", "stage1_significant",
              "below_corrected_p"):
        assert np.array_equal(ours[c].to_numpy(), ref[c].to_numpy()), c
    assert 0 < ours["stage1_significant"].sum() < len(ours)  # both stages matter on this screen
    flat = mean_average_precision(ap, sameby=["cpd", "dose"], null_size=2000, threshold=0.05, seed=0)
    assert not np.array_equal(flat["corrected_p_value"].to_numpy(), ours["corrected_p_value"].to_numpy())
    pol = mean_average_precision_hierarchical(pl.from_pandas(ap.reset_index(drop=True)), **args)
    assert np.array_equal(pol["corrected_p_value"].to_numpy(), ref["corrected_p_value"].to_numpy())
    with pytest.raises(ValueError, match="proper subset"):
        mean_average_precision_hierarchical(ap, **{**args, "hierarchical_by": ["cpd", "dose"]})
    with pytest.raises(ValueError, match="must be a subset"):
        mean_average_precision_hierarchical(ap, **{**args, "hierarchical_by": ["ref"]})


@pytest.mark.parametrize("seed", range(5))
def test_bh_rejections_match_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(40) ** 3, 2)  # ties
    for alpha in (0.05, 0.2):
        assert np.array_equal(fdr_bh_reject(p, alpha=alpha), multipletests(p, alpha=alpha, method="fdr_bh")[0])


# -- replicate correlation ---------------------------------------------------------------------------------


def _replicate_screen(seed: int, n: int = 72):
    rng = np.random.default_rng(seed)
    cpd = rng.choice([f"c{i}" for i in range(10)], n)
    signal = {c: rng.normal(size=24) * (i % 2) for i, c in enumerate(sorted(set(cpd)))}
    x = np.stack([signal[c] for c in cpd]) + rng.normal(size=(n, 24))
    meta = pd.DataFrame({"cpd": cpd, "plate": rng.choice(["p1", "p2", "p3"], n), "dose": rng.choice(["1", "2"], n)})
    return meta, x


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("same", "diff"), [(["cpd"], ["plate"]), (["cpd"], []), (["cpd", "dose"], ["plate"])])
def test_replicate_correlation_and_percent_replicating_match_copairs(seed, same, diff):
    meta, x = _replicate_screen(seed)
    ref, ref_n = cr.corr_between_replicates(x, meta, same, diff, progress_bar=False)
    ours, n_rep = corr_between_replicates(meta, x, sameby=same, diffby=diff)
    key = ours[same].astype(str).agg("_".join, axis=1) if len(same) > 1 else ours[same[0]]
    ref = ref.loc[list(key)]
    assert len(ours) == len(ref) and n_rep == ref_n
    assert np.array_equal(ours["median"].to_numpy(), ref["median"].to_numpy().astype(np.float64))
    assert np.array_equal(ours["count"].to_numpy(), ref["count"].to_numpy())
    pol, _ = corr_between_replicates(pl.from_pandas(meta), x, sameby=same, diffby=diff)
    assert np.array_equal(pol["median"].to_numpy(), ours["median"].to_numpy())
    t_ref = cr.correlation_test(x, meta, same, diff, n_samples=300, progress_bar=False)
    t_ours = correlation_test(meta, x, sameby=same, diffby=diff, n_samples=300)
    assert np.array_equal(t_ours.null_dist, t_ref.null_dist.to_numpy())
    for how in ("left", "right", "both"):
        got, ref_score = t_ours.percent_score(how), t_ref.percent_score(how)
        assert got[0] == ref_score[0] and got[1:] == tuple(None if v is None else float(v) for v in ref_score[1:])
    assert 0.2 < t_ours.percent_score("right")[0] < 1.0  # planted: half of the compounds replicate
    assert np.isclose(t_ours.wasserstein_distance(), t_ref.wasserstein_distance(), rtol=1e-6)


# -- one name per concept across profiles and score (issue 18 §5) ------------------------------------------


def _public_functions():
    for mod in (profiles, score):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                yield f"{mod.__name__}.{name}", inspect.signature(obj)


def test_one_name_per_concept():
    assert profiles.NEGCON is score.NEGCON  # one default control selection, owned by profiles.frames
    assert not hasattr(score, "DEFAULT_NEGCON")
    for name, sig in _public_functions():
        params = sig.parameters
        assert not {"negcon", "strata", "replicate_columns"} & set(params), name
        for p in params.values():
            if p.default is profiles.NEGCON:
                assert p.name == "controls", name
    assert "plate_col" in inspect.signature(profiles.normalize).parameters
    assert "by" not in inspect.signature(profiles.normalize).parameters
    assert "batch_col" in inspect.signature(profiles.correct_batch).parameters
    assert inspect.signature(score.relocalization).parameters["controls"].default is profiles.NEGCON


def test_no_private_names_across_subpackages():
    """profiles and score import only public names from other subpackages (``from ..x import _y`` is out)."""
    root = Path(profiles.__file__).parent.parent
    private = re.compile(r"from \.\.[\w.]* import \(?([^)]*?)\)?$", re.M)
    for pkg in ("profiles", "score"):
        for path in (root / pkg).glob("*.py"):
            text = path.read_text()
            for m in private.finditer(text):
                names = [n.strip().split(" as ")[0] for n in m.group(1).split(",") if n.strip()]
                assert not [n for n in names if n.startswith("_")], f"{path.name}: {m.group(0)}"
            assert not re.search(r"from \.\.[\w.]*\._\w+ import", text), path.name
