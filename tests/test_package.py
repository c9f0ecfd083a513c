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


def test_wheel_ships_the_plate_layouts_and_finds_them_installed(tmp_path):
    """plate_layouts/ (top level of the repository) is inside the wheel as subcell_screen/plate_layouts/, and
    builtin_layout_path finds it in an installed (not editable) package."""
    import json
    import os
    import shutil
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(repo / name, src / name)
    for folder in ("subcell_screen", "plate_layouts"):
        shutil.copytree(repo / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": ""}
    pip = [sys.executable, "-m", "pip"]
    res = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                          str(src)], capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp_path / "dist").glob("subcell_screen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    layouts = sorted(p.relative_to(repo).as_posix() for p in (repo / "plate_layouts").rglob("*") if p.is_file())
    assert len(layouts) >= 18 and "plate_layouts/jump/JUMP-Target-1_compound_platemap.tsv" in layouts
    missing = [f for f in layouts if f"subcell_screen/{f}" not in names]
    assert not missing, f"not in the wheel: {missing}"

    site = tmp_path / "site"
    res = subprocess.run([*pip, "install", "--no-deps", "--no-compile", "-q", "--target", str(site), str(wheel)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr
    code = ("import json, subcell_screen, subcell_screen.layouts as L; "
            "p = L.builtin_layout_path('JUMP-Target-1_compound'); "
            "print(json.dumps([subcell_screen.__file__, str(p), L.read_layout(p).height, L.list_builtin_layouts()]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**env, "PYTHONPATH": str(site)}, check=False)
    assert res.returncode == 0, res.stderr
    init, path, height, ids = json.loads(res.stdout)
    assert Path(init) == site / "subcell_screen" / "__init__.py"  # the installed copy, not the checkout
    assert Path(path) == site / "subcell_screen" / "plate_layouts" / "JUMP-Target-1_compound.csv"
    assert height == 384
    assert ids == sorted(p.stem for p in (repo / "plate_layouts").glob("*.csv"))
