"""Tests for subcell_screen.layouts: shipped layouts, JUMP pairs, the malformed-layout suite, plates tables."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from subcell_screen import LayoutError
from subcell_screen.layouts import (
    STANDARD_COLUMNS,
    builtin_layout_path,
    layout_summary,
    list_builtin_layouts,
    normalize_well,
    read_layout,
    read_plates_table,
    row_index,
    row_letters,
    to_metadata,
    write_layout,
)

REPO = Path(__file__).resolve().parents[1]
JUMP = REPO / "plate_layouts" / "jump"

# (layout id, wells, negcon, poscon, empty, distinct treatments)
SHIPPED = [
    ("JUMP-Target-1_compound", 384, 64, 60, 0, 260),
    ("JUMP-Target-2_compound", 384, 64, 60, 0, 260),
    ("JUMP-Target-1_crispr", 384, 60, 60, 4, 247),
    ("JUMP-Target-1_orf", 384, 60, 60, 4, 130),
    ("JUMP-MOA_compound", 384, 24, 0, 0, 90),
]


@pytest.mark.parametrize(("layout_id", "wells", "negcon", "poscon", "empty", "treatments"), SHIPPED)
def test_shipped_layouts_load_with_right_counts(layout_id, wells, negcon, poscon, empty, treatments):
    layout = read_layout(builtin_layout_path(layout_id))
    s = layout_summary(layout)
    assert (s["wells"], s["negcon_wells"], s["poscon_wells"], s["empty_wells"], s["perturbations"]) == (
        wells, negcon, poscon, empty, treatments)
    assert layout.columns[: len(STANDARD_COLUMNS)] == list(STANDARD_COLUMNS)
    assert layout["well"].is_unique().all()
    assert layout["well"][0] == "A01" and layout["well"][-1] == "P24"


def test_every_csv_in_plate_layouts_is_shipped_and_valid():
    ids = list_builtin_layouts()
    assert {s[0] for s in SHIPPED} <= set(ids)
    for layout_id in ids:
        read_layout(builtin_layout_path(layout_id), allow_no_negcon=True)


@pytest.mark.parametrize("layout_id", [s[0] for s in SHIPPED])
def test_jump_original_pair_equals_converted(layout_id):
    direct = read_layout(JUMP / f"{layout_id}_platemap.tsv")
    converted = read_layout(builtin_layout_path(layout_id))
    assert direct.equals(converted)


def test_jump_target1_known_wells():
    layout = read_layout(JUMP / "JUMP-Target-1_compound_platemap.tsv")
    rows = {r["well"]: r for r in layout.iter_rows(named=True)}
    assert rows["A02"]["perturbation_id"] == "DMSO" and rows["A02"]["control_type"] == "negcon"
    assert rows["N19"]["perturbation_name"] == "romidepsin" and rows["N19"]["control_type"] == "poscon"
    assert rows["H03"]["perturbation_name"] == "RGFP966" and "HDAC3" in rows["H03"]["target"]
    assert rows["N05"]["perturbation_name"] == "droxinostat" and rows["N05"]["control_type"] is None


def test_jump_metadata_given_explicitly(tmp_path):
    plate = tmp_path / "my_plate.tsv"
    plate.write_bytes((JUMP / "JUMP-MOA_compound_platemap.tsv").read_bytes())
    with pytest.raises(LayoutError, match="metadata"):
        read_layout(plate)
    layout = read_layout(plate, metadata=JUMP / "JUMP-MOA_compound_metadata.tsv")
    assert layout.height == 384
    assert set(layout.filter(pl.col("perturbation_name") == "romidepsin")["well"]) == {"G14", "H12", "J03", "O13"}


@pytest.mark.parametrize(("raw", "fmt", "expected"), [
    ("A1", None, "A01"), ("a01", None, "A01"), ("A01", 384, "A01"), (" p24 ", 384, "P24"),
    ("H12", 96, "H12"), ("AF48", 1536, "AF48"), ("B003", None, "B03"),
])
def test_normalize_well(raw, fmt, expected):
    assert normalize_well(raw, plate_format=fmt) == expected


@pytest.mark.parametrize(("raw", "fmt"), [("I01", 96), ("A13", 96), ("Q01", 384), ("A25", 384), ("AG01", 1536),
                                         ("A00", None), ("1A", None), ("", None), ("A1B", None)])
def test_normalize_well_rejects(raw, fmt):
    with pytest.raises(ValueError):
        normalize_well(raw, plate_format=fmt)



def test_row_letters_and_row_index_are_inverse():
    assert [row_letters(i) for i in (0, 7, 15, 25, 26, 31, 51, 701, 702)] == [
        "A", "H", "P", "Z", "AA", "AF", "AZ", "ZZ", "AAA"]
    assert [row_index(s) for s in ("A", "h", " P ", "Z", "AA", "af", "ZZ", "AAA")] == [0, 7, 15, 25, 26, 31, 701, 702]
    assert all(row_index(row_letters(i)) == i for i in range(2000))
    for bad in (-1,):
        with pytest.raises(ValueError, match="row index"):
            row_letters(bad)
    for bad in ("", "A1", "1"):
        with pytest.raises(ValueError, match="plate row"):
            row_index(bad)


GOOD = """well,perturbation_id,perturbation_name,perturbation_type,control_type,concentration,concentration_unit,target,moa,inchikey
A01,DMSO,DMSO,compound,negcon,,,,,
A02,vorinostat,vorinostat,compound,,10,uM,HDAC1|HDAC8,HDAC inhibitor,
A03,vorinostat,vorinostat,compound,,1,uM,HDAC1|HDAC8,HDAC inhibitor,
"""


def _write(tmp_path: Path, text: str, name: str = "layout.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_layout_roundtrip(tmp_path):
    layout = read_layout(_write(tmp_path, GOOD))
    assert layout.height == 3
    assert layout.schema["concentration"] == pl.Float64
    assert layout["concentration"].to_list() == [None, 10.0, 1.0]
    out = write_layout(layout, tmp_path / "again.csv")
    assert read_layout(out).equals(layout)
    meta = to_metadata(layout.with_columns(pl.lit("P1").alias("plate")))
    assert {"Metadata_Well", "Metadata_Plate", "Metadata_perturbation_id"} <= set(meta.columns)


def test_minimal_layout_and_well_normalisation(tmp_path):
    layout = read_layout(_write(tmp_path, "well,perturbation_id,control_type\na1,DMSO,negcon\nB2,x,\n"))
    assert layout["well"].to_list() == ["A01", "B02"]
    assert layout["perturbation_name"].to_list() == ["DMSO", "x"]


def _replace_line(text: str, line: int, new: str) -> str:
    lines = text.splitlines()
    lines[line - 1] = new
    return "\n".join(lines) + "\n"


HEADER = GOOD.splitlines()[0]

# (name, file text, expected line, expected column, message fragment)
MALFORMED = [
    ("missing well column", "perturbation_id,control_type\nDMSO,negcon\n", 1, "well", "required column 'well'"),
    ("missing perturbation column", "well,control_type\nA01,negcon\n", 1, "perturbation_id", "required column"),
    ("duplicate well", GOOD + "A2,DMSO,DMSO,compound,negcon,,,,,\n", 5, "well", "duplicate well A02"),
    ("well outside any plate", _replace_line(GOOD, 3, "A49,vorinostat,vorinostat,compound,,10,uM,HDAC1|HDAC8,HDAC inhibitor,"),
     3, "well", "does not fit any plate format"),
    ("malformed well", _replace_line(GOOD, 4, "3C,vorinostat,vorinostat,compound,,1,uM,HDAC1|HDAC8,HDAC inhibitor,"),
     4, "well", "not a well id"),
    ("non-numeric concentration", _replace_line(GOOD, 3, "A02,vorinostat,vorinostat,compound,,ten,uM,HDAC1|HDAC8,HDAC inhibitor,"),
     3, "concentration", "'ten' is not a number"),
    ("negative concentration", _replace_line(GOOD, 3, "A02,vorinostat,vorinostat,compound,,-1,uM,HDAC1|HDAC8,HDAC inhibitor,"),
     3, "concentration", ">= 0"),
    ("concentration without unit", _replace_line(GOOD, 3, "A02,vorinostat,vorinostat,compound,,10,,HDAC1|HDAC8,HDAC inhibitor,"),
     3, "concentration_unit", "has no concentration_unit"),
    ("unknown unit", _replace_line(GOOD, 3, "A02,vorinostat,vorinostat,compound,,10,furlongs,HDAC1|HDAC8,HDAC inhibitor,"),
     3, "concentration_unit", "unknown concentration_unit"),
    ("unknown control type", _replace_line(GOOD, 2, "A01,DMSO,DMSO,compound,negative,,,,,"), 2, "control_type",
     "unknown control_type 'negative'"),
    ("unknown perturbation type", _replace_line(GOOD, 2, "A01,DMSO,DMSO,chemical,negcon,,,,,"), 2,
     "perturbation_type", "unknown perturbation_type"),
    ("conflicting metadata", _replace_line(GOOD, 4, "A03,vorinostat,vorinostat,compound,,1,uM,HDAC1,HDAC inhibitor,"),
     4, "target", "one perturbation id must have one identity"),
    ("blank perturbation id", _replace_line(GOOD, 3, "A02,,vorinostat,compound,,10,uM,HDAC1|HDAC8,HDAC inhibitor,"),
     3, "perturbation_id", "perturbation_id is blank"),
    ("no negcon", HEADER + "\nA02,vorinostat,vorinostat,compound,,10,uM,HDAC1|HDAC8,HDAC inhibitor,\n", None,
     "control_type", "no negative-control wells"),
    ("no rows", HEADER + "\n", None, None, "has no wells"),
    ("ragged line", GOOD + "A04,x,x,compound,,1,uM,,,,extra,cells\n", None, None, "cannot parse"),
]


@pytest.mark.parametrize(("text", "line", "column", "fragment"), [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_layouts_name_file_line_column(tmp_path, text, line, column, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(LayoutError) as info:
        read_layout(path)
    err = info.value
    assert fragment in str(err)
    assert str(path) in str(err)
    assert err.path == path
    assert err.line == line
    assert err.column == column


def test_no_negcon_allowed_when_asked(tmp_path):
    path = _write(tmp_path, HEADER + "\nA02,x,x,compound,,10,uM,,,\n")
    assert read_layout(path, allow_no_negcon=True).height == 1


def test_plate_format_bounds(tmp_path):
    path = _write(tmp_path, "well,perturbation_id,control_type\nA01,DMSO,negcon\nH13,x,\n")
    assert read_layout(path).height == 2  # inferred 384
    with pytest.raises(LayoutError, match="outside a 96-well plate") as info:
        read_layout(path, plate_format=96)
    assert info.value.line == 3


def test_missing_file():
    with pytest.raises(LayoutError, match="file not found"):
        read_layout("/nonexistent/layout.csv")


@pytest.mark.parametrize("text", ["", "\n", "   \n"])
def test_empty_layout_or_plates_table_names_the_file(tmp_path, text):
    # an empty file gave polars' raw "NoDataError: empty CSV" traceback
    from subcell_screen.layouts import read_layout, read_plates_table

    path = tmp_path / "layout.csv"
    path.write_text(text)
    with pytest.raises(LayoutError, match=r"layout\.csv: (the file is empty|the layout has no wells)"):
        read_layout(path)
    with pytest.raises(LayoutError, match=r"layout\.csv: (the file is empty|the plates table has no plates)"):
        read_plates_table(path)


def test_jump_sample_missing_from_metadata(tmp_path):
    (tmp_path / "x_platemap.tsv").write_text("well_position\tbroad_sample\tsolvent\nA01\t\tDMSO\nA02\tBRD-NOPE\tDMSO\n")
    (tmp_path / "x_metadata.tsv").write_text("broad_sample\tpert_iname\tcontrol_type\nNA\tDMSO\tnegcon\n")
    with pytest.raises(LayoutError, match="BRD-NOPE") as info:
        read_layout(tmp_path / "x_platemap.tsv")
    assert info.value.line == 3 and info.value.column == "broad_sample"


def test_plates_table(tmp_path):
    (tmp_path / "mylayout.csv").write_text(GOOD)
    table = tmp_path / "plates.csv"
    table.write_text("plate,layout,batch,cell_line,timepoint\nP1,mylayout,b1,U2OS,24h\n"
                     "P2,JUMP-Target-1_compound,b1,U2OS,24h\n")
    design = read_plates_table(table)
    assert design.plates.height == 2 and design.plate_format == 384
    wells = design.wells()
    assert wells.height == 3 + 384
    assert wells.filter(pl.col("plate") == "P1")["cell_line"].unique().to_list() == ["U2OS"]
    assert design.layout_of("P2").height == 384


@pytest.mark.parametrize(("text", "line", "column", "fragment"), [
    ("plate,layout\nP1,nope\n", 2, "layout", "unknown layout id 'nope'"),
    ("plate,layout\nP1,mylayout\nP1,mylayout\n", 3, "plate", "duplicate plate 'P1'"),
    ("plate\nP1\n", 1, "layout", "required column 'layout'"),
    ("plate,layout\n,mylayout\n", 2, "plate", "plate is blank"),
])
def test_plates_table_errors(tmp_path, text, line, column, fragment):
    (tmp_path / "mylayout.csv").write_text(GOOD)
    table = tmp_path / "plates.csv"
    table.write_text(text)
    with pytest.raises(LayoutError) as info:
        read_plates_table(table)
    assert fragment in str(info.value)
    assert (info.value.line, info.value.column) == (line, column)
