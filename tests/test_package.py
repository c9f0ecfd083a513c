"""Package-level conventions: cheap import without side effects, public names, signature conventions."""

from __future__ import annotations

import subprocess
import sys

import subcell_screen


def test_import_is_cheap_and_side_effect_free():
    code = ("import sys, logging; import subcell_screen; "
            "heavy = [m for m in ('torch', 'cellpose', 'ray', 'transformers', 'matplotlib', 'pandas', 'duckdb', 'numba') "
            "if m in sys.modules]; "
            "assert not heavy, heavy; "
            "assert not logging.getLogger().handlers; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_lazy_public_names_resolve():
    assert subcell_screen.ScreenStore.__name__ == "ScreenStore"
    assert callable(subcell_screen.read_layout)
    assert "normalize" in dir(subcell_screen)
