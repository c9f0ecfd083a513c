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


def test_installed_versions_are_the_locked_ones():
    """The suite runs against constraints.txt (what `make`/CI install) and pyproject's ranges admit it."""
    import importlib.metadata as md
    import re
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    locked = {}
    for line in (repo / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            locked[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    assert {"torch", "polars", "duckdb", "pycytominer", "cellpose", "numpy"} <= set(locked)
    drift = {}
    for dist in md.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if name in locked and dist.version != locked[name]:
            drift[name] = (dist.version, locked[name])
    assert not drift, f"installed != constraints.txt (run `make lock` after changing dependencies): {drift}"
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]

    def vtuple(v):
        return tuple(int(x) for x in re.findall(r"\d+", v)[:3])

    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?>=([0-9.]+),<([0-9.]+)", req.split(";")[0].strip())
        assert m, f"pyproject dependency {req!r}: give a tested range '>=X.Y,<Z'"
        name, low, high = re.sub(r"[-_.]+", "-", m[1]).lower(), m[2], m[3]
        assert name in locked, f"{name} is not in constraints.txt"
        assert vtuple(low) <= vtuple(locked[name]) < vtuple(high), (req, locked[name])
