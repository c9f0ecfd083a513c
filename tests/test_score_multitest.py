"""BH q-values against statsmodels (bitwise)."""

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from subcell_screen.score._multitest import fdr_bh


@pytest.mark.parametrize("n", [1, 2, 7, 352, 5000])
def test_equals_statsmodels_bitwise(n):
    rng = np.random.default_rng(n)
    # a mix of tiny, tied, null-uniform and exactly-1 p-values, like permutation p-values (k + 1) / (B + 1)
    p = np.concatenate([rng.integers(0, 10001, n) / 10001, rng.uniform(size=n) ** 6, [1.0, 1 / 10001]])[:n]
    rng.shuffle(p)
    np.testing.assert_array_equal(fdr_bh(p), multipletests(p, method="fdr_bh")[1])


def test_known_values():
    # hand computed: sorted p * n / rank = [0.04, 0.04, 0.04, 0.2] after the running minimum from the top
    q = fdr_bh(np.array([0.03, 0.01, 0.02, 0.2]))
    np.testing.assert_allclose(q, [0.04, 0.04, 0.04, 0.2])


def test_empty_and_invalid():
    assert fdr_bh(np.array([])).shape == (0,)
    with pytest.raises(ValueError, match="entry 1 is nan"):
        fdr_bh(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fdr_bh(np.array([1.5]))
