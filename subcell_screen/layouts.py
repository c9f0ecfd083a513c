"""Plate layouts (platemaps) and plates tables.

A *layout* says what is in every well of one plate design: one row per well in the project's standard columns
(see ``plate_layouts/README.md``). A *screen* is many plates; its *plates table* maps each plate barcode to a
layout id and to plate-level metadata (batch, cell line, timepoint), like JUMP's ``plate.csv``.

Every user file is validated once, here, and rejected whole on the first problem with a :class:`LayoutError`
that names the file, the line and the column. Nothing is partially loaded.

Examples
--------
>>> from subcell_screen.layouts import read_layout, builtin_layout_path
>>> layout = read_layout(builtin_layout_path("JUMP-Target-1_compound"))
>>> layout.height, int((layout["control_type"] == "negcon").sum())
(384, 64)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ._errors import LayoutError

__all__ = [
    "STANDARD_COLUMNS",
    "REQUIRED_COLUMNS",
    "CONTROL_TYPES",
    "PERTURBATION_TYPES",
    "PLATE_FORMATS",
    "ScreenDesign",
    "normalize_well",
    "well_row_col",
    "row_letters",
    "row_index",
    "read_layout",
    "read_jump_platemap",
    "validate_layout",
    "write_layout",
    "read_plates_table",
    "find_layout",
    "builtin_layout_path",
    "list_builtin_layouts",
    "to_metadata",
    "layout_summary",
]

#: Columns every standard layout has, in this order. Optional columns may follow.
STANDARD_COLUMNS: tuple[str, ...] = (
    "well",
    "perturbation_id",
    "perturbation_name",
    "perturbation_type",
    "control_type",
    "concentration",
    "concentration_unit",
    "target",
    "moa",
    "inchikey",
)
#: Optional columns with a defined meaning. ``protein`` is the protein of interest stained in an HPA-style
#: screen's protein channel (e.g. ``HDAC8``); ``antibody`` its antibody id.
OPTIONAL_COLUMNS: tuple[str, ...] = ("protein", "antibody", "replicate", "smiles")
REQUIRED_COLUMNS: tuple[str, ...] = ("well", "perturbation_id")
#: Allowed ``control_type`` values; blank (null) marks a treatment.
CONTROL_TYPES: frozenset[str] = frozenset({"negcon", "poscon", "empty"})
PERTURBATION_TYPES: frozenset[str] = frozenset(
    {"compound", "crispr", "orf", "sirna", "antibody", "biologic", "none"}
)
#: Concentration units accepted, mapped to their canonical spelling.
CONCENTRATION_UNITS: Mapping[str, str] = {
    "pm": "pM",
    "nm": "nM",
    "um": "uM",
    "µm": "uM",
    "μm": "uM",
    "mm": "mM",
    "m": "M",
    "ng/ml": "ng/mL",
    "ug/ml": "ug/mL",
    "µg/ml": "ug/mL",
    "mg/ml": "mg/mL",
    "%": "%",
    "moi": "MOI",
}
#: Plate format (number of wells) -> (rows, columns).
PLATE_FORMATS: Mapping[int, tuple[int, int]] = {96: (8, 12), 384: (16, 24), 1536: (32, 48)}

_WELL_RE = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")
_STRING_COLUMNS = tuple(c for c in STANDARD_COLUMNS if c != "concentration")


def row_letters(index: int) -> str:
    """Row letters of a zero-based row index: ``0`` -> ``"A"``, ``15`` -> ``"P"``, ``26`` -> ``"AA"``.

    Rows past ``Z`` continue ``AA``, ``AB``, ... (1536-well plates end at ``AF``); the inverse of
    :func:`row_index`.

    Raises
    ------
    ValueError
        If ``index`` is negative (an instrument's 1-based row 0).
    """
    index = int(index)
    if index < 0:
        raise ValueError(f"row index must be >= 0 (row A is 0), got {index}")
    letters = ""
    n = index + 1
    while n > 0:
        n, rem = divmod(n - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def row_index(letters: str) -> int:
    """Zero-based row index of row letters: ``"A"`` -> 0, ``"p"`` -> 15, ``"AF"`` -> 31; inverse of
    :func:`row_letters`.

    Raises
    ------
    ValueError
        If ``letters`` is not one or more letters A-Z.
    """
    text = str(letters).strip().upper()
    if not re.fullmatch(r"[A-Z]+", text):
        raise ValueError(f"not a plate row: {letters!r} (expected letters, e.g. 'A' or 'AF')")
    n = 0
    for ch in text:
        n = 26 * n + ord(ch) - ord("A") + 1
    return n - 1


def well_row_col(well: str) -> tuple[int, int]:
    """Zero-based ``(row, column)`` of a well id (``"B03"`` -> ``(1, 2)``).

    Raises
    ------
    ValueError
        If ``well`` is not a well id.
    """
    match = _WELL_RE.match(str(well))
    if match is None or int(match.group(2)) < 1:
        raise ValueError(f"not a well id: {well!r} (expected a row letter and a column number, e.g. 'A01')")
    return row_index(match.group(1)), int(match.group(2)) - 1


def normalize_well(well: str, *, plate_format: int | None = None) -> str:
    """Normalise a well id: ``"A1"``, ``"a01"`` and ``"A01"`` all give ``"A01"``.

    Parameters
    ----------
    well
        Well id as written by a user or an instrument.
    plate_format
        96, 384 or 1536; when given, wells outside that plate raise.

    Returns
    -------
    str
        Row letter(s) plus a two-digit column number.

    Raises
    ------
    ValueError
        If ``well`` is not a well id, or lies outside ``plate_format``.
    """
    row, col = well_row_col(well)
    if plate_format is not None:
        if plate_format not in PLATE_FORMATS:
            raise ValueError(f"unknown plate format {plate_format}; expected one of {sorted(PLATE_FORMATS)}")
        n_rows, n_cols = PLATE_FORMATS[plate_format]
        if row >= n_rows or col >= n_cols:
            last = row_letters(n_rows - 1) + f"{n_cols:02d}"
            raise ValueError(f"well {well!r} is outside a {plate_format}-well plate (A01..{last})")
    return row_letters(row) + f"{col + 1:02d}"


# ----------------------------------------------------------------------------------------------------------
# reading


def _read_text_table(path: Path, *, separator: str) -> pl.DataFrame:
    """Read a delimited file with every column as a string; blank cells become null."""
    if not path.is_file():
        raise LayoutError("file not found", path=path)
    try:
        df = pl.read_csv(
            path,
            separator=separator,
            infer_schema=False,
            null_values=[""],
            comment_prefix=None,
            truncate_ragged_lines=False,
        )
    except pl.exceptions.NoDataError:
        raise LayoutError("the file is empty (expected a header line with the column names, then one row per "
                          "well or plate)", path=path) from None
    except pl.exceptions.ComputeError as exc:  # ragged lines, bad quoting
        raise LayoutError(f"cannot parse as a {'tab' if separator == chr(9) else 'comma'}-separated table: {exc}",
                          path=path) from exc
    except UnicodeDecodeError as exc:
        raise LayoutError(f"not UTF-8 text: {exc}", path=path) from exc
    df = df.rename({c: c.strip() for c in df.columns})
    if not any(df.columns):
        raise LayoutError("the file is empty (expected a header line with the column names, then one row per "
                          "well or plate)", path=path)
    # strip whitespace; blank-after-strip becomes null
    return df.with_columns(
        pl.col(c).str.strip_chars().replace("", None) for c in df.columns
    )


def _sniff_separator(path: Path) -> str:
    if path.suffix.lower() in {".tsv", ".txt"}:
        return "\t"
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
    except OSError as exc:
        raise LayoutError(f"cannot read: {exc}", path=path) from exc
    return "\t" if first.count("\t") > first.count(",") else ","


def _is_jump_platemap(path: Path, df_columns: Iterable[str]) -> bool:
    cols = set(df_columns)
    return "well_position" in cols and "broad_sample" in cols


def read_layout(
    path: str | Path,
    *,
    metadata: str | Path | None = None,
    plate_format: int | None = None,
    allow_no_negcon: bool = False,
) -> pl.DataFrame:
    """Read and validate one plate layout.

    Parameters
    ----------
    path
        A layout CSV in the standard columns, or an original JUMP platemap TSV (``well_position``,
        ``broad_sample``[, ``solvent``]) whose metadata TSV sits beside it (``*_platemap.tsv`` ->
        ``*_metadata.tsv``) or is given as ``metadata``.
    metadata
        JUMP metadata TSV (``broad_sample``, ``pert_iname``, ``control_type``, …). Only for JUMP platemaps.
    plate_format
        96, 384 or 1536. Default: inferred as the smallest format that holds every well.
    allow_no_negcon
        Accept a layout without negative-control wells (normalisation against controls then needs
        ``controls="all"``).

    Returns
    -------
    polars.DataFrame
        One row per well, sorted by row then column, in :data:`STANDARD_COLUMNS` followed by any optional
        columns the file had. ``concentration`` is Float64 (null where unknown); every other column is a
        string.

    Raises
    ------
    LayoutError
        On the first problem, naming file, line and column.
    """
    path = Path(path)
    if not path.is_file():
        raise LayoutError("file not found", path=path)
    df = _read_text_table(path, separator=_sniff_separator(path))
    if _is_jump_platemap(path, df.columns):
        return read_jump_platemap(path, metadata=metadata, plate_format=plate_format,
                                  allow_no_negcon=allow_no_negcon)
    if metadata is not None:
        raise LayoutError("a metadata file is only used with a JUMP platemap (columns well_position, "
                          "broad_sample); this file is a standard layout", path=path)
    return validate_layout(df, path=path, plate_format=plate_format, allow_no_negcon=allow_no_negcon)


def validate_layout(
    df: pl.DataFrame,
    *,
    path: str | Path | None = None,
    plate_format: int | None = None,
    allow_no_negcon: bool = False,
    line_numbers: list[int] | None = None,
) -> pl.DataFrame:
    """Validate a layout table of strings and return it in canonical form.

    Parameters
    ----------
    df
        Layout with at least :data:`REQUIRED_COLUMNS`, every column a string (null = blank).
    path
        File the table came from, for messages.
    plate_format, allow_no_negcon
        As in :func:`read_layout`.
    line_numbers
        File line of each row (default: row index + 2, i.e. a header line then one line per row).

    Returns
    -------
    polars.DataFrame
        Canonical layout (see :func:`read_layout`).
    """
    if df.height == 0:
        raise LayoutError("the layout has no wells", path=path)
    lines = line_numbers if line_numbers is not None else list(range(2, df.height + 2))
    for col in REQUIRED_COLUMNS:
        if col not in df.columns:
            raise LayoutError(
                f"required column {col!r} is missing; columns found: {', '.join(df.columns)}",
                path=path, line=1, column=col,
            )
    dupes = [c for c in set(df.columns) if df.columns.count(c) > 1]
    if dupes:
        raise LayoutError(f"duplicate column names: {dupes}", path=path, line=1)
    for col in _STRING_COLUMNS + ("concentration",):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.String).alias(col))
    df = df.with_columns(pl.col(c).cast(pl.String) for c in df.columns)
    records = df.to_dicts()

    # wells: syntax, format, duplicates
    wells: list[str] = []
    for rec, line in zip(records, lines):
        raw = rec["well"]
        if raw is None:
            raise LayoutError("well is blank", path=path, line=line, column="well")
        try:
            wells.append(normalize_well(raw))
        except ValueError as exc:
            raise LayoutError(str(exc), path=path, line=line, column="well") from None
    if plate_format is None:
        max_row = max(well_row_col(w)[0] for w in wells)
        max_col = max(well_row_col(w)[1] for w in wells)
        plate_format = next(
            (fmt for fmt, (r, c) in sorted(PLATE_FORMATS.items()) if max_row < r and max_col < c), None
        )
        if plate_format is None:
            big_r, big_c = PLATE_FORMATS[1536]
            bad = next(i for i, w in enumerate(wells) if well_row_col(w)[0] >= big_r or well_row_col(w)[1] >= big_c)
            raise LayoutError(f"well {wells[bad]} does not fit any plate format (96, 384, 1536)", path=path,
                              line=lines[bad], column="well")
    elif plate_format not in PLATE_FORMATS:
        raise LayoutError(f"unknown plate format {plate_format}; expected one of {sorted(PLATE_FORMATS)}",
                          path=path)
    seen: dict[str, int] = {}
    for well, line in zip(wells, lines):
        try:
            normalize_well(well, plate_format=plate_format)
        except ValueError as exc:
            raise LayoutError(str(exc), path=path, line=line, column="well") from None
        if well in seen:
            raise LayoutError(f"duplicate well {well} (first on line {seen[well]})", path=path, line=line,
                              column="well")
        seen[well] = line

    concentrations: list[float | None] = []
    units: list[str | None] = []
    for rec, line in zip(records, lines):
        control = rec["control_type"]
        if control is not None:
            control = control.lower()
            if control not in CONTROL_TYPES:
                raise LayoutError(
                    f"unknown control_type {rec['control_type']!r}; expected one of "
                    f"{sorted(CONTROL_TYPES)} or blank for a treatment",
                    path=path, line=line, column="control_type",
                )
            rec["control_type"] = control
        ptype = rec["perturbation_type"]
        if ptype is not None:
            ptype = ptype.lower()
            if ptype not in PERTURBATION_TYPES:
                raise LayoutError(
                    f"unknown perturbation_type {rec['perturbation_type']!r}; expected one of "
                    f"{sorted(PERTURBATION_TYPES)}", path=path, line=line, column="perturbation_type",
                )
            rec["perturbation_type"] = ptype
        if rec["perturbation_id"] is None:
            if control == "empty":
                rec["perturbation_id"] = "EMPTY"
            else:
                raise LayoutError("perturbation_id is blank (write control_type 'empty' for an empty well)",
                                  path=path, line=line, column="perturbation_id")
        if rec["perturbation_name"] is None:
            rec["perturbation_name"] = rec["perturbation_id"]
        raw_conc = rec["concentration"]
        if raw_conc is None:
            conc = None
        else:
            try:
                conc = float(raw_conc)
            except ValueError:
                raise LayoutError(f"concentration {raw_conc!r} is not a number", path=path, line=line,
                                  column="concentration") from None
            if not conc == conc or conc < 0 or conc == float("inf"):  # NaN, negative, inf
                raise LayoutError(f"concentration {raw_conc!r} must be a finite number >= 0", path=path,
                                  line=line, column="concentration")
        unit = rec["concentration_unit"]
        if unit is not None:
            canon = CONCENTRATION_UNITS.get(unit.lower())
            if canon is None:
                raise LayoutError(
                    f"unknown concentration_unit {unit!r}; expected one of "
                    f"{sorted(set(CONCENTRATION_UNITS.values()))}", path=path, line=line,
                    column="concentration_unit")
            unit = canon
        if conc is not None and conc > 0 and unit is None:
            raise LayoutError(f"concentration {raw_conc} has no concentration_unit", path=path, line=line,
                              column="concentration_unit")
        concentrations.append(conc)
        units.append(unit)

    # one perturbation id -> one identity
    identity_cols = ("perturbation_name", "perturbation_type", "target", "moa", "inchikey")
    first: dict[str, tuple[dict, int]] = {}
    for rec, line in zip(records, lines):
        pid = rec["perturbation_id"]
        if pid not in first:
            first[pid] = (rec, line)
            continue
        ref, ref_line = first[pid]
        for col in identity_cols:
            if ref[col] != rec[col]:
                raise LayoutError(
                    f"perturbation_id {pid!r} has {col} {rec[col]!r} here but {ref[col]!r} on line "
                    f"{ref_line}; one perturbation id must have one identity", path=path, line=line,
                    column=col)
        if (ref["control_type"] or "") != (rec["control_type"] or ""):
            raise LayoutError(
                f"perturbation_id {pid!r} is control_type {rec['control_type']!r} here but "
                f"{ref['control_type']!r} on line {ref_line}", path=path, line=line, column="control_type")

    if not allow_no_negcon and not any(r["control_type"] == "negcon" for r in records):
        raise LayoutError(
            "the layout has no negative-control wells (control_type 'negcon'); per-plate normalisation "
            "needs them. Pass allow_no_negcon=True (config: plates.allow_no_negcon = true) to accept it",
            path=path, column="control_type")

    extra = [c for c in df.columns if c not in STANDARD_COLUMNS]
    out = pl.DataFrame(
        {
            "well": wells,
            **{c: [r[c] for r in records] for c in STANDARD_COLUMNS[1:] if c not in {"concentration",
                                                                                     "concentration_unit"}},
            "concentration": pl.Series(concentrations, dtype=pl.Float64),
            "concentration_unit": pl.Series(units, dtype=pl.String),
            **{c: [r[c] for r in records] for c in extra},
        },
        schema_overrides={c: pl.String for c in STANDARD_COLUMNS if c != "concentration"}
        | {c: pl.String for c in extra},
    )
    out = out.select(list(STANDARD_COLUMNS) + extra)
    order = sorted(range(out.height), key=lambda i: well_row_col(wells[i]))
    return out[order]


def read_jump_platemap(
    path: str | Path,
    *,
    metadata: str | Path | None = None,
    plate_format: int | None = None,
    allow_no_negcon: bool = False,
) -> pl.DataFrame:
    """Read an original JUMP platemap + metadata TSV pair into the standard layout.

    Conventions (JUMP-Target / JUMP-MOA READMEs): an empty ``broad_sample`` with a ``solvent`` is a
    solvent (DMSO) negative-control well; an empty ``broad_sample`` without one is an empty well. The
    metadata's ``control_type`` ``poscon_*`` become ``poscon``; ``target_list`` or ``gene`` becomes
    ``target``; the perturbation type is taken from the file name (``compound``/``crispr``/``orf``).

    Parameters
    ----------
    path
        ``*_platemap.tsv``.
    metadata
        ``*_metadata.tsv``; default: the sibling file with ``_platemap`` replaced by ``_metadata``.
    plate_format, allow_no_negcon
        As in :func:`read_layout`.

    Returns
    -------
    polars.DataFrame
        The standard layout; extra columns ``broad_sample`` and (compounds) ``smiles``.
    """
    path = Path(path)
    if metadata is None:
        guess = path.with_name(path.name.replace("_platemap", "_metadata"))
        if guess == path or not guess.is_file():
            raise LayoutError(
                f"JUMP platemap needs its metadata TSV; looked for {guess.name} beside it. Pass "
                "metadata=PATH (CLI: --metadata PATH)", path=path)
        metadata = guess
    metadata = Path(metadata)
    plate = _read_text_table(path, separator="\t")
    meta = _read_text_table(metadata, separator="\t")
    for col in ("well_position", "broad_sample"):
        if col not in plate.columns:
            raise LayoutError(f"required column {col!r} is missing", path=path, line=1, column=col)
    if "broad_sample" not in meta.columns:
        raise LayoutError("required column 'broad_sample' is missing", path=metadata, line=1,
                          column="broad_sample")
    name = path.name.lower()
    ptype = "crispr" if "crispr" in name else "orf" if "orf" in name else "compound"

    meta_rows: dict[str, dict] = {}
    for i, rec in enumerate(meta.to_dicts()):
        key = rec["broad_sample"] or "NA"
        prev = meta_rows.get(key)
        if prev is not None:
            # JUMP-Target-2 metadata repeats some broad_samples; identical repeats are harmless
            differing = [c for c in ("pert_iname", "gene", "control_type", "moa", "target_list")
                         if prev.get(c) != rec.get(c)]
            if differing:
                raise LayoutError(
                    f"broad_sample {key!r} appears twice with different {differing[0]}",
                    path=metadata, line=i + 2, column=differing[0])
            continue
        meta_rows[key] = rec

    has_solvent = "solvent" in plate.columns
    rows = []
    for i, rec in enumerate(plate.to_dicts()):
        sample = rec["broad_sample"]
        solvent = rec.get("solvent") if has_solvent else None
        if sample is None and solvent is not None:
            m = meta_rows.get("NA", {})
            rows.append({
                "well": rec["well_position"], "perturbation_id": solvent,
                "perturbation_name": m.get("pert_iname") or solvent, "perturbation_type": "compound",
                "control_type": "negcon", "inchikey": m.get("InChIKey"), "broad_sample": None,
            })
            continue
        if sample is None:
            rows.append({"well": rec["well_position"], "perturbation_id": "EMPTY",
                         "perturbation_name": "EMPTY", "perturbation_type": "none",
                         "control_type": "empty", "broad_sample": None})
            continue
        m = meta_rows.get(sample)
        if m is None:
            raise LayoutError(f"broad_sample {sample!r} is not in the metadata file {metadata.name}",
                              path=path, line=i + 2, column="broad_sample")
        control = m.get("control_type")
        control = None if control in (None, "NA") else ("poscon" if control.startswith("poscon") else control)
        target = m.get("target_list") or m.get("gene")
        moa = m.get("moa")
        name_ = m.get("pert_iname") or m.get("gene") or sample
        rows.append({
            "well": rec["well_position"], "perturbation_id": sample, "perturbation_name": name_,
            "perturbation_type": ptype, "control_type": control, "target": target, "moa": moa,
            "inchikey": m.get("InChIKey"), "broad_sample": sample, "smiles": m.get("smiles"),
        })
    frame = pl.DataFrame(rows, schema={c: pl.String for c in (
        "well", "perturbation_id", "perturbation_name", "perturbation_type", "control_type", "target",
        "moa", "inchikey", "broad_sample", "smiles")})
    if ptype != "compound":
        frame = frame.drop("smiles")
    return validate_layout(frame, path=path, plate_format=plate_format, allow_no_negcon=allow_no_negcon)


def write_layout(layout: pl.DataFrame, path: str | Path) -> Path:
    """Write a layout as a standard CSV (atomically: temp file, then rename).

    Parameters
    ----------
    layout
        A validated layout (as from :func:`read_layout`).
    path
        Destination ``.csv``.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    layout.write_csv(tmp)
    tmp.replace(path)
    return path


def layout_summary(layout: pl.DataFrame) -> dict[str, int]:
    """Counts for a one-line summary: wells, perturbations and controls of each kind."""
    ctrl = layout["control_type"]
    treat = layout.filter(pl.col("control_type").is_null())
    return {
        "wells": layout.height,
        "perturbations": int(treat["perturbation_id"].n_unique()),
        "treatment_wells": treat.height,
        "negcon_wells": int((ctrl == "negcon").sum()),
        "poscon_wells": int((ctrl == "poscon").sum()),
        "empty_wells": int((ctrl == "empty").sum()),
    }


# ----------------------------------------------------------------------------------------------------------
# built-in layouts and lookup


def builtin_layouts_dir() -> Path:
    """Folder of the layouts shipped with the project.

    An installed package has them in ``subcell_screen/plate_layouts/`` (the build maps the repository's
    top-level ``plate_layouts/`` there, see ``setup.py``); a source checkout or an editable install reads the
    repository's ``plate_layouts/`` next to the package.
    """
    here = Path(__file__).resolve().parent
    candidates = (here / "plate_layouts", here.parent / "plate_layouts")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the shipped plate layouts are missing: none of {[str(c) for c in candidates]} "
                            "exists (reinstall subcell_screen)")


def list_builtin_layouts() -> list[str]:
    """Ids of the shipped standard layouts (file stems of ``plate_layouts/*.csv``)."""
    return sorted(p.stem for p in builtin_layouts_dir().glob("*.csv"))


def builtin_layout_path(layout_id: str) -> Path:
    """Path of a shipped standard layout, e.g. ``"JUMP-Target-1_compound"``."""
    path = builtin_layouts_dir() / f"{layout_id}.csv"
    if not path.is_file():
        raise LayoutError(f"unknown built-in layout {layout_id!r}; known: {', '.join(list_builtin_layouts())}")
    return path


def find_layout(layout_id: str, *, search: Iterable[str | Path] = ()) -> Path:
    """Resolve a layout id to a file.

    Looks, in each folder of ``search`` and then in the shipped ``plate_layouts/``, for ``<id>.csv``,
    ``<id>.tsv`` and ``<id>_platemap.tsv``. An id that is itself an existing path is returned as is.

    Raises
    ------
    LayoutError
        If no file matches; the message lists where it looked.
    """
    as_path = Path(layout_id)
    if as_path.suffix and as_path.is_file():
        return as_path
    folders = [Path(s) for s in search]
    try:
        folders.append(builtin_layouts_dir())
    except FileNotFoundError:
        pass
    for folder in folders:
        for name in (f"{layout_id}.csv", f"{layout_id}.tsv", f"{layout_id}_platemap.tsv"):
            if (folder / name).is_file():
                return folder / name
    raise LayoutError(
        f"unknown layout id {layout_id!r}: no {layout_id}.csv, .tsv or _platemap.tsv in "
        + ", ".join(str(f) for f in folders))


# ----------------------------------------------------------------------------------------------------------
# screens: plates table


@dataclass(frozen=True)
class ScreenDesign:
    """The plates of a screen and their layouts.

    Attributes
    ----------
    plates : polars.DataFrame
        One row per plate: ``plate``, ``layout`` and plate-level metadata (``batch``, ``cell_line``,
        ``timepoint``, any other columns of the plates table), all strings.
    layouts : dict of str to polars.DataFrame
        Layout id -> validated layout.
    plate_format : int
        Wells per plate.
    """

    plates: pl.DataFrame
    layouts: dict[str, pl.DataFrame] = field(repr=False)
    plate_format: int = 384

    def wells(self) -> pl.DataFrame:
        """One row per (plate, well): plate metadata joined to its layout."""
        parts = []
        for rec in self.plates.iter_rows(named=True):
            layout = self.layouts[rec["layout"]]
            parts.append(layout.with_columns(pl.lit(rec["plate"]).alias("plate")))
        wells = pl.concat(parts, how="diagonal_relaxed")
        return wells.join(self.plates, on="plate", how="left").select(
            ["plate", *[c for c in wells.columns if c != "plate"],
             *[c for c in self.plates.columns if c not in ("plate",) and c not in wells.columns]]
        )

    def layout_of(self, plate: str) -> pl.DataFrame:
        """Layout of one plate."""
        row = self.plates.filter(pl.col("plate") == plate)
        if row.height == 0:
            raise KeyError(f"plate {plate!r} is not in the plates table; known: "
                           f"{', '.join(self.plates['plate'].to_list())}")
        return self.layouts[row["layout"][0]]


#: Characters a plate barcode may not contain: it names the plate's folders in the screen store (every OS).
UNSTORABLE_CHARS = '/\\:*?"<>|\0'


def read_plates_table(
    path: str | Path,
    *,
    layouts_dir: str | Path | Iterable[str | Path] | None = None,
    plate_format: int | None = None,
    allow_no_negcon: bool = False,
) -> ScreenDesign:
    """Read a plates table and every layout it names.

    Parameters
    ----------
    path
        CSV with columns ``plate`` (barcode) and ``layout`` (layout id or file path), plus optional plate
        metadata (``batch``, ``cell_line``, ``timepoint``, …). JUMP's ``Metadata_Plate``/``Metadata_Batch``
        spellings are accepted.
    layouts_dir
        Folder(s) to look for layout files in; the plates table's own folder is always searched first.
    plate_format, allow_no_negcon
        Passed to :func:`read_layout`.

    Returns
    -------
    ScreenDesign
    """
    path = Path(path)
    df = _read_text_table(path, separator=_sniff_separator(path))
    df = df.rename({c: c.removeprefix("Metadata_").lower() if c.startswith("Metadata_") else c
                    for c in df.columns})
    for col in ("plate", "layout"):
        if col not in df.columns:
            raise LayoutError(f"required column {col!r} is missing; columns found: {', '.join(df.columns)}",
                              path=path, line=1, column=col)
    if df.height == 0:
        raise LayoutError("the plates table has no plates", path=path)
    search: list[Path] = [path.parent]
    if layouts_dir is not None:
        search.extend([Path(layouts_dir)] if isinstance(layouts_dir, str | Path) else map(Path, layouts_dir))
    seen: dict[str, int] = {}
    layouts: dict[str, pl.DataFrame] = {}
    for i, rec in enumerate(df.to_dicts()):
        line = i + 2
        plate, layout_id = rec["plate"], rec["layout"]
        if plate is None:
            raise LayoutError("plate is blank", path=path, line=line, column="plate")
        if layout_id is None:
            raise LayoutError("layout is blank", path=path, line=line, column="layout")
        if plate in seen:
            raise LayoutError(f"duplicate plate {plate!r} (first on line {seen[plate]})", path=path, line=line,
                              column="plate")
        bad = sorted(set(plate) & set(UNSTORABLE_CHARS)) if plate not in (".", "..") else [plate]
        if bad:  # a barcode names the plate's folders in the screen store
            raise LayoutError(f"plate barcode {plate!r} cannot name the plate's folders in the screen store "
                              f"(it contains {' '.join(map(repr, bad))}; not allowed: / \\ : * ? \" < > |)",
                              path=path, line=line, column="plate")
        seen[plate] = line
        if layout_id not in layouts:
            try:
                layout_path = find_layout(layout_id, search=search)
            except LayoutError as exc:
                raise LayoutError(str(exc), path=path, line=line, column="layout") from None
            layouts[layout_id] = read_layout(layout_path, plate_format=plate_format,
                                             allow_no_negcon=allow_no_negcon)
    fmt = plate_format
    if fmt is None:
        fmt = max(_infer_format(lay) for lay in layouts.values())
    return ScreenDesign(plates=df, layouts=layouts, plate_format=fmt)


def _infer_format(layout: pl.DataFrame) -> int:
    rows_cols = [well_row_col(w) for w in layout["well"]]
    max_r = max(r for r, _ in rows_cols)
    max_c = max(c for _, c in rows_cols)
    return next(f for f, (r, c) in sorted(PLATE_FORMATS.items()) if max_r < r and max_c < c)


def to_metadata(frame: pl.DataFrame) -> pl.DataFrame:
    """Rename layout/plate columns to pycytominer's ``Metadata_`` convention.

    ``plate``, ``well``, ``site`` and ``batch`` become ``Metadata_Plate``, ``Metadata_Well``,
    ``Metadata_Site`` and ``Metadata_Batch`` (pycytominer / JUMP spelling); every other column ``c`` becomes
    ``Metadata_c``. Columns already prefixed are left alone.
    """
    special = {"plate": "Metadata_Plate", "well": "Metadata_Well", "site": "Metadata_Site",
               "batch": "Metadata_Batch"}
    return frame.rename({
        c: special.get(c, f"Metadata_{c}") for c in frame.columns if not c.startswith("Metadata_")
    })
