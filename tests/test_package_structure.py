"""Structure rules of the package that code review alone does not keep (DEVELOPERS.md, "Conventions"):

* no part of the package (a top-level module or subpackage: ``layouts``, ``io``, ``report``, ...) takes a private
  name (leading underscore) of another part: what two parts share is public where it belongs;
* constants shared by several parts are defined once (the HPA pixel size, the HPA colour map).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "subcell_screen"

#: Files still allowed to take private names of other parts (issue 18: the pipeline and the Ray engine are
#: being rewritten onto public names; empty this list when they are).
ALLOWED: tuple[str, ...] = ()


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """``subcell_screen.io._load`` -> ``io``; the root package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_below_part(module: str) -> bool:
    """A private module inside a part (``subcell_screen.io._load``), not a private part (``subcell_screen._errors``)."""
    return any(_private(p) for p in module.split(".")[2:])


def private_imports(path: Path, source: str | None = None) -> list[str]:
    """Private names of other parts that module ``path`` (text ``source``, default read from it) imports or reads
    as module attributes."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    mine = _part(module)
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source, filename=str(path))
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> package module it is bound to

    def where(node: ast.AST) -> str:
        return f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "subcell_screen":
                continue
            for alias in node.names:
                owner = alias.name if target == "subcell_screen" else _part(target)
                if owner == mine:
                    continue
                if _private(alias.name) or _private_below_part(target):
                    found.append(f"{where(node)}: from {target} import {alias.name}")
                else:
                    modules[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "subcell_screen" or _part(alias.name) == mine:
                    continue
                if _private_below_part(alias.name):
                    found.append(f"{where(node)}: import {alias.name}")
                if alias.asname:
                    modules[alias.asname] = alias.name
                else:
                    modules[alias.name.split(".")[0]] = "subcell_screen"

    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        chain, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in modules:
            continue
        dotted = ".".join([modules[value.id], *reversed(chain[1:])])
        owner = _part(dotted) if dotted.count(".") else ""
        if owner and owner != mine:
            found.append(f"{where(node)}: {value.id}.{'.'.join(reversed(chain))}")
    return found


def _allowed(path: Path) -> bool:
    rel = path.relative_to(PACKAGE)
    return any(rel.match(pattern) for pattern in ALLOWED)


def test_no_private_names_across_parts():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if not _allowed(path) for hit in private_imports(path)]
    assert not found, ("private names taken from another part of the package (make them public where they "
                       "belong):\n" + "\n".join(found))


@pytest.mark.parametrize(("source", "expected"), [
    ("from ..layouts import _row_index_to_letters\n", ["from subcell_screen.layouts import _row_index_to_letters"]),
    ("from ..io._load import probe_site\n", ["from subcell_screen.io._load import probe_site"]),
    ("from .. import store\nx = store._now()\n", ["store._now"]),
    ("import subcell_screen.pipeline as p\np._SiteProcessor\n", ["p._SiteProcessor"]),
    ("from ._errors import ReportError\nfrom .._errors import SubcellScreenError\nfrom .plots import _x\n", []),
    ("from .. import __version__\n", []),
])
def test_private_import_detector(source, expected):
    """The detector itself, on a (not written) module of subcell_screen/report/."""
    got = private_imports(PACKAGE / "report" / "_probe.py", source)
    assert len(got) == len(expected) and all(e in g for e, g in zip(expected, got)), got


# ----------------------------------------------------------------------------------------------------------
# one definition of shared constants


def _literals(predicate) -> list[str]:
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if predicate(node):
                hits.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return hits


def test_hpa_pixel_size_is_defined_once():
    from subcell_screen import crops
    from subcell_screen.config import EmbeddingSection
    from subcell_screen.embed import registry

    hits = _literals(lambda n: isinstance(n, ast.Constant) and n.value == 0.0800885)
    assert [h.split(":")[0] for h in hits] == ["embed/registry.py"], hits
    assert crops.HPA_PIXEL_SIZE_UM is registry.HPA_PIXEL_SIZE_UM
    assert EmbeddingSection().target_pixel_size_um == registry.Preprocessing().pixel_size_um == 0.0800885


def test_hpa_colours_are_defined_once():
    from subcell_screen import channels, simulate
    from subcell_screen.io import _readers

    hpa = {"red", "yellow", "blue", "green", "microtubules", "nucleus", "protein"}

    def colour_map(node):  # a dict literal pairing the HPA channels with their colours (either way round)
        if not isinstance(node, ast.Dict):
            return False
        return hpa <= {k.value for k in (*node.keys, *node.values) if isinstance(k, ast.Constant)}

    hits = _literals(colour_map)
    assert [h.split(":")[0] for h in hits] == ["channels.py"], hits
    assert dict(channels.HPA_COLORS) == {"microtubules": "red", "er": "yellow", "nucleus": "blue", "protein": "green"}
    assert simulate.HPA_COLORS is channels.HPA_COLORS
    assert _readers.HPA_COLOR_CHANNELS == {c: ch for ch, c in channels.HPA_COLORS.items()}
    assert list(_readers.HPA_COLOR_CHANNELS) == ["red", "yellow", "blue", "green"]  # acquisition order
    assert channels.preset("hpa").aliases == dict(channels.HPA_COLORS)
    assert channels.preset("hpa").channels == tuple(channels.HPA_COLORS)
