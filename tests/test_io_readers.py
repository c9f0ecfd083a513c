"""Readers: real acquisition files from tests/data and generated folders in every naming, auto-detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from subcell_screen.io import ReaderError, SiteLoadError, list_readers, load_site, read_plate
from subcell_screen.io._metadata import read_harmony_index, tiff_pixel_size_um

DATA = Path(__file__).parent / "data"
CP = DATA / "cellpainting"
PEDIATRIC_NAMES = {"1": "Brightfield", "2": "ER", "3": "AGP", "4": "Mito", "5": "DNA", "6": "RNA"}

# Harmony 6/7 layout: channel descriptions in Maps (not in the first Map), Image records without names.
HARMONY_V6 = """<?xml version="1.0" encoding="utf-8"?>
<EvaluationInputData Version="2" xmlns="43B2A954-E3C3-47E1-B392-6635266B0DD3/HarmonyV7">
  <User>user</User>
  <InstrumentType>Phenix</InstrumentType>
  <Plates>
    <Plate><PlateID>BR00117010</PlateID><MeasurementID>0b4c</MeasurementID><Name>BR00117010</Name>
      <PlateTypeName>PhenoPlate 384</PlateTypeName><PlateRows>16</PlateRows><PlateColumns>24</PlateColumns>
      <Well id="0101" /><Well id="0203" /></Plate>
  </Plates>
  <Wells>
    <Well><id>0101</id><Row>1</Row><Col>1</Col><Image id="0101K1F1P1R1" /></Well>
  </Wells>
  <Maps>
    <Map><Entry ChannelID="1"><FlatfieldProfile>{"Background": {}}</FlatfieldProfile></Entry></Map>
    <Map>
      <Entry ChannelID="1"><ChannelName>HOECHST 33342</ChannelName><ImageType>Signal</ImageType>
        <ImageResolutionX Unit="m">5.9799999999999997E-07</ImageResolutionX>
        <ImageResolutionY Unit="m">5.9799999999999997E-07</ImageResolutionY>
        <ImageSizeX>16</ImageSizeX><ImageSizeY>12</ImageSizeY><BinningX>2</BinningX>
        <MaxIntensity>65536</MaxIntensity><MainExcitationWavelength Unit="nm">375</MainExcitationWavelength>
        <MainEmissionWavelength Unit="nm">456</MainEmissionWavelength>
        <ObjectiveMagnification Unit="">20</ObjectiveMagnification><ObjectiveNA Unit="">1</ObjectiveNA>
        <ExposureTime Unit="s">0.04</ExposureTime></Entry>
      <Entry ChannelID="2"><ChannelName>Alexa 488</ChannelName>
        <ImageResolutionX Unit="m">5.9799999999999997E-07</ImageResolutionX>
        <ImageResolutionY Unit="m">5.9799999999999997E-07</ImageResolutionY></Entry>
      <Entry ChannelID="3"><ChannelName>Alexa 568</ChannelName>
        <ImageResolutionX Unit="m">5.9799999999999997E-07</ImageResolutionX></Entry>
    </Map>
  </Maps>
  <Images>
    <Image Version="1"><id>0101K1F1P1R1</id><State>Ok</State><URL>r01c01f01p01-ch1sk1fk1fl1.tiff</URL>
      <Row>1</Row><Col>1</Col><FieldID>1</FieldID><PlaneID>1</PlaneID><TimepointID>0</TimepointID>
      <ChannelID>1</ChannelID><PositionX Unit="m">0</PositionX><PositionY Unit="m">0</PositionY></Image>
  </Images>
</EvaluationInputData>
"""

# Harmony 5 layout: the channel name and resolution are in every Image record.
HARMONY_V5 = """<?xml version="1.0" encoding="utf-8"?>
<EvaluationInputData Version="1" xmlns="http://www.perkinelmer.com/PEHH/HarmonyV5">
  <InstrumentType>Phenix</InstrumentType>
  <Plates><Plate><PlateID>P5</PlateID><PlateRows>8</PlateRows><PlateColumns>12</PlateColumns></Plate></Plates>
  <Images>
    <Image Version="1"><id>a</id><URL>r01c01f01p01-ch2sk1fk1fl1.tiff</URL><Row>1</Row><Col>1</Col>
      <FieldID>1</FieldID><PlaneID>1</PlaneID><ChannelID>2</ChannelID><ChannelName>MitoTracker</ChannelName>
      <ImageResolutionX Unit="m">6.5E-07</ImageResolutionX></Image>
    <Image Version="1"><id>b</id><URL>r01c01f01p01-ch1sk1fk1fl1.tiff</URL><Row>1</Row><Col>1</Col>
      <FieldID>1</FieldID><PlaneID>1</PlaneID><ChannelID>1</ChannelID><ChannelName>DAPI</ChannelName>
      <ImageResolutionX Unit="m">6.5E-07</ImageResolutionX></Image>
  </Images>
</EvaluationInputData>
"""


def _arr(seed: int, shape=(12, 16), dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=shape).astype(dtype)


def write_phenix(folder: Path, *, wells=((1, 1), (2, 3)), fields=(1, 2), channels=(1, 2, 3), shape=(12, 16),
                 compression="lzw", skip=()) -> dict:
    """Phenix export files; returns {(row, col, field, ch): array}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for r, c in wells:
        for f in fields:
            for ch in channels:
                if (r, c, f, ch) in skip:
                    continue
                a = _arr(r * 1000 + c * 100 + f * 10 + ch, shape)
                tifffile.imwrite(folder / f"r{r:02d}c{c:02d}f{f:02d}p01-ch{ch}sk1fk1fl1.tiff", a,
                                 compression=compression)
                out[(r, c, f, ch)] = a
    return out


# ----------------------------------------------------------------------------------------------------------
# Phenix on real files


def test_phenix_pediatric_crop_six_channels_lzw():
    folder = CP / "pediatric_site_crop256"
    index = read_plate(folder, channel_names=PEDIATRIC_NAMES)
    assert index.reader == "phenix"
    assert len(index) == 1
    rec = index.records[0]
    assert rec.key == ("pediatric_site_crop256", "C03", 3)
    assert list(rec.channels) == ["Brightfield", "ER", "AGP", "Mito", "DNA", "RNA"]
    assert rec.channels["DNA"].endswith("r03c03f03p01-ch5sk1fk1fl1.tiff")
    with tifffile.TiffFile(rec.channels["ER"]) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.LZW
    site = load_site(rec)
    assert site.data.shape == (6, 256, 256) and site.data.dtype == np.uint16
    for i, name in enumerate(site.channel_names):
        np.testing.assert_array_equal(site.data[i], tifffile.imread(rec.channels[name]))
    # original values, not rescaled
    assert int(site.channel("DNA").max()) == int(tifffile.imread(rec.channels["DNA"]).max()) > 4095
    assert index.to_frame()["channel_names"].to_list() == [["Brightfield", "ER", "AGP", "Mito", "DNA", "RNA"]]


def test_phenix_full_site_zstd_matches_lzw_crop():
    full = read_plate(CP / "pediatric_site_full", channel_names={"3": "AGP", "5": "DNA"})
    assert full.reader == "phenix"
    # the CellProfiler outline overlays in that folder are not image channels of any reader
    assert [list(r.channels) for r in full.records] == [["AGP", "DNA"]]
    site = load_site(full.records[0])
    assert site.data.shape == (2, 1080, 1080) and site.data.dtype == np.uint16
    with tifffile.TiffFile(full.records[0].channels["DNA"]) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ZSTD
    crop = load_site(read_plate(CP / "pediatric_site_crop256", channel_names=PEDIATRIC_NAMES).records[0],
                     channels=["DNA", "AGP"])
    np.testing.assert_array_equal(site.channel("DNA")[:256, :256], crop.channel("DNA"))
    np.testing.assert_array_equal(site.channel("AGP")[:256, :256], crop.channel("AGP"))


def test_phenix_cpjump1_three_channels_with_pixel_size():
    index = read_plate(CP / "cpjump1_crop256", channel_names={"2": "AGP", "3": "RNA", "5": "DNA"},
                       pixel_size_um=0.598)
    rec = index.records[0]
    assert rec.key == ("cpjump1_crop256", "A01", 1)
    assert list(rec.channels) == ["AGP", "RNA", "DNA"]
    assert rec.pixel_size_um == pytest.approx(0.598)
    site = load_site(rec)
    assert site.pixel_size_um == pytest.approx(0.598)
    assert site.data.shape == (3, 256, 256) and site.data.dtype == np.uint16
    np.testing.assert_array_equal(site.channel("RNA"), tifffile.imread(rec.channels["RNA"]))
    # without names the channel numbers are kept
    assert list(read_plate(CP / "cpjump1_crop256").records[0].channels) == ["ch2", "ch3", "ch5"]


# ----------------------------------------------------------------------------------------------------------
# Phenix on generated folders


def test_harmony_index_v6_and_plate_barcode_from_folder(tmp_path):
    images = tmp_path / "BR00117010__2020-11-08T19_57_47-Measurement1" / "Images"
    arrays = write_phenix(images)
    (images / "Index.idx.xml").write_text(HARMONY_V6)
    idx = read_harmony_index(images / "Index.idx.xml")
    assert idx.channel_names == {1: "HOECHST 33342", 2: "Alexa 488", 3: "Alexa 568"}
    assert idx.pixel_size_um == pytest.approx(0.598)
    assert idx.plate_id == "BR00117010" and idx.n_images == 1

    index = read_plate(tmp_path)
    assert index.reader == "phenix"
    assert index.plates() == ["BR00117010"]
    assert [(r.well, r.site) for r in index] == [("A01", 1), ("A01", 2), ("B03", 1), ("B03", 2)]
    rec = index.records[2]
    assert list(rec.channels) == ["HOECHST 33342", "Alexa 488", "Alexa 568"]
    assert rec.pixel_size_um == pytest.approx(0.598)
    assert "Index.idx.xml" in index.notes["phenix"]
    site = load_site(rec)
    np.testing.assert_array_equal(site.data[1], arrays[(2, 3, 1, 2)])
    # explicit names win over the index file (by channel number or by the index's name); explicit pixel size too
    index2 = read_plate(tmp_path, channel_names={"1": "DNA", "Alexa 488": "AGP"}, pixel_size_um=0.65)
    assert list(index2.records[0].channels) == ["DNA", "AGP", "Alexa 568"]
    assert index2.records[0].pixel_size_um == pytest.approx(0.65)


def test_harmony_index_v5_names_in_image_records(tmp_path):
    images = tmp_path / "P5__2019-01-01T00_00_00-Measurement 2" / "Images"
    write_phenix(images, wells=((1, 1),), fields=(1,), channels=(1, 2))
    (images.parent / "Index.xml").write_text(HARMONY_V5)  # next to Images/ also counts
    index = read_plate(images)
    rec = index.records[0]
    assert rec.plate == "P5"
    assert list(rec.channels) == ["DAPI", "MitoTracker"]
    assert rec.pixel_size_um == pytest.approx(0.65)


def test_broken_index_file_is_noted_not_fatal(tmp_path):
    images = tmp_path / "P1" / "Images"
    write_phenix(images, wells=((1, 1),), fields=(1,), channels=(1,))
    (images / "Index.idx.xml").write_text("<EvaluationInputData><Maps>")
    index = read_plate(tmp_path, channel_names="1=DNA")
    assert list(index.records[0].channels) == ["DNA"]
    assert "ignored" in index.notes["phenix"] and "Index.idx.xml" in index.notes["phenix"]


def test_phenix_simulator_layout_several_plates(tmp_path):
    # the simulator writes <images>/<plate>/Images/r01c01f01p01-ch1sk1fk1fl1.tiff, names from the config
    for plate in ("SIM-P2", "SIM-P1"):
        write_phenix(tmp_path / plate / "Images", wells=((1, 1), (1, 2)), fields=(1,), channels=(1, 2, 3))
    index = read_plate(tmp_path, reader="phenix", channel_names={"1": "DNA", "2": "ER", "3": "RNA"})
    assert index.plates() == ["SIM-P1", "SIM-P2"]
    assert [r.key for r in index] == [("SIM-P1", "A01", 1), ("SIM-P1", "A02", 1), ("SIM-P2", "A01", 1),
                                      ("SIM-P2", "A02", 1)]
    assert index.notes == {"phenix": index.notes["phenix"]}  # explicit reader: no detection run
    assert index.notes["phenix"].startswith("chosen explicitly")
    assert index.filter(plates=["SIM-P2"]).plates() == ["SIM-P2"]


def test_phenix_same_plate_in_two_folders_is_an_error(tmp_path):
    write_phenix(tmp_path / "BR1__2020-01-01T00_00_00-Measurement1" / "Images", fields=(1,), channels=(1,))
    write_phenix(tmp_path / "BR1__2020-02-01T00_00_00-Measurement2" / "Images", fields=(1,), channels=(1,))
    with pytest.raises(ReaderError, match=r"plate BR1 appears in two folders.*Measurement1.*Measurement2"):
        read_plate(tmp_path)


def test_phenix_z_planes_become_named_channels(tmp_path):
    for p in (1, 2):
        tifffile.imwrite(tmp_path / f"r01c01f01p0{p}-ch1sk1fk1fl1.tiff", _arr(p))
    rec = read_plate(tmp_path, channel_names="1=DNA").records[0]
    assert list(rec.channels) == ["DNA_p1", "DNA_p2"]


def test_missing_channel_file_keeps_expected_path(tmp_path):
    write_phenix(tmp_path / "P1", wells=((1, 1),), fields=(1, 2), channels=(1, 2), skip={(1, 1, 2, 2)})
    index = read_plate(tmp_path, channel_names="1=DNA,2=ER")
    assert "1 channel file(s) missing" in index.notes["phenix"]
    good, bad = index.records
    assert load_site(good).data.shape == (2, 12, 16)
    assert bad.channels["ER"].endswith("r01c01f02p01-ch2sk1fk1fl1.tiff")
    with pytest.raises(SiteLoadError) as err:
        load_site(bad)
    assert "r01c01f02p01-ch2sk1fk1fl1.tiff: channel file not found" in str(err.value)
    assert "site P1 A01 s2" in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# ImageXpress


def test_imagexpress_bbbc039_real_files():
    index = read_plate(DATA / "bbbc039" / "images", channel_names={"1": "DNA"})
    assert index.reader == "imagexpress"
    assert index.plates() == ["IXMtest"]
    assert [(r.well, r.site) for r in index] == [("A02", 1), ("A06", 6), ("A09", 1), ("A12", 7)]
    assert "phenix" in index.notes and "none of the 4 image files fit" in index.notes["phenix"]
    for rec in index:
        site = load_site(rec)
        ref = tifffile.imread(rec.channels["DNA"])
        assert site.data.shape == (1, 520, 696) and site.data.dtype == np.uint16
        np.testing.assert_array_equal(site.data[0], ref)
        assert site.data.max() <= 4095  # 12-bit data stays 12-bit


def test_imagexpress_generated_guid_sites_thumbs_and_metamorph_pixel_size(tmp_path):
    desc = ('<MetaData><prop id="spatial-calibration-x" type="float" value="0.645"/>'
            '<prop id="spatial-calibration-units" type="string" value="um"/></MetaData>')
    guids = ["051DAA7C-7042-435F-99F0-1E847D9B42CB", "B9577918-4973-4A87-BA73-A168AA755527"]
    for w, g in zip((1, 2), guids):
        tifffile.imwrite(tmp_path / f"Plate_1_B03_s2_w{w}{g}.tif", _arr(w), description=desc)
        tifffile.imwrite(tmp_path / f"Plate_1_B03_s2_w{w}_thumb{g}.tif", _arr(9, (4, 4)))
        tifffile.imwrite(tmp_path / f"Plate_1_C04_w{w}.tif", _arr(10 + w), description=desc)  # single-site well
    assert tiff_pixel_size_um(tmp_path / "Plate_1_C04_w1.tif") == pytest.approx(0.645)
    index = read_plate(tmp_path, channel_names="1=DNA,w2=ER")
    assert index.reader == "imagexpress"
    assert [r.key for r in index] == [("Plate_1", "B03", 2), ("Plate_1", "C04", 1)]
    assert [list(r.channels) for r in index] == [["DNA", "ER"], ["DNA", "ER"]]
    assert all(r.pixel_size_um == pytest.approx(0.645) for r in index)
    np.testing.assert_array_equal(load_site(index.records[1]).data, np.stack([_arr(11), _arr(12)]))


# ----------------------------------------------------------------------------------------------------------
# CellProfiler LoadData CSV


def _examplehuman_csv(path: Path, *, relative: bool) -> None:
    src = DATA / "examplehuman"
    folder = Path("..") / "eh" if relative else src
    header = ("Metadata_Plate,Metadata_Well,Metadata_Site,FileName_OrigDNA,PathName_OrigDNA,FileName_OrigPH3,"
              "PathName_OrigPH3,FileName_OrigCells,PathName_OrigCells,FileName_IllumDNA,PathName_IllumDNA\n")
    row = ",".join(["AS_09125_050116030001", "D03", "0"]
                   + [x for d in range(3) for x in (f"AS_09125_050116030001_D03f00d{d}.tif", str(folder))]
                   + ["illum_dna.npy", str(folder)]) + "\n"
    path.write_text(header + row)


def test_loaddata_examplehuman(tmp_path):
    (tmp_path / "eh").symlink_to(DATA / "examplehuman", target_is_directory=True)
    csv_dir = tmp_path / "loaddata"
    csv_dir.mkdir()
    _examplehuman_csv(csv_dir / "load_data.csv", relative=True)
    for source in (csv_dir / "load_data.csv", csv_dir):
        index = read_plate(source)
        assert index.reader == "loaddata"
        rec = index.records[0]
        assert rec.key == ("AS_09125_050116030001", "D03", 0)
        assert list(rec.channels) == ["DNA", "PH3", "Cells"]  # the Illum columns are not channels
        site = load_site(rec)
        assert site.data.shape == (3, 512, 512) and site.data.dtype == np.uint8
        for i in range(3):
            ref = tifffile.imread(DATA / "examplehuman" / f"AS_09125_050116030001_D03f00d{i}.tif")
            np.testing.assert_array_equal(site.data[i], ref)
    # absolute PathName values and renamed channels
    _examplehuman_csv(tmp_path / "abs.csv", relative=False)
    rec = read_plate(tmp_path / "abs.csv", channel_names={"OrigCells": "cell_body"}).records[0]
    assert list(rec.channels) == ["DNA", "PH3", "cell_body"]
    assert Path(rec.channels["DNA"]).is_absolute()
    assert Path(rec.channels["DNA"]).samefile(DATA / "examplehuman" / "AS_09125_050116030001_D03f00d0.tif")


def test_loaddata_bad_well_names_file_and_line(tmp_path):
    csv = tmp_path / "load_data.csv"
    csv.write_text("Metadata_Plate,Metadata_Well,Metadata_Site,FileName_OrigDNA,PathName_OrigDNA\n"
                   "P1,A01,1,a.tif,\nP1,ZZ999x,1,b.tif,\n")
    with pytest.raises(ReaderError, match=r"load_data.csv, line 3: bad well"):
        read_plate(csv)


def test_loaddata_cellprofiler_output_csv_is_not_a_loaddata_csv():
    # Image.csv.gz (CellProfiler output) has FileName_DNA but no Metadata_Well: not a LoadData source
    with pytest.raises(ReaderError) as err:
        read_plate(DATA / "examplehuman")
    msg = str(err.value)
    assert "examplehuman: no reader matched" in msg
    assert "Image.csv.gz: no Metadata_Well" in msg and "Cells.csv.gz: no FileName_Orig<Channel> columns" in msg


# ----------------------------------------------------------------------------------------------------------
# HPA


def test_hpa_names_on_real_hpa_cell_all_four_colours(tmp_path):
    rgby = tifffile.imread(DATA / "hpa" / "hpa_singlecell_rgby_128.tif")  # [red MT, green prot, blue nuc, yellow ER]
    assert rgby.shape == (4, 128, 128) and rgby.dtype == np.float32
    for plane, color in zip(rgby, ("red", "green", "blue", "yellow")):
        tifffile.imwrite(tmp_path / f"10580_1758_B1_1_{color}.tif", plane)
    index = read_plate(tmp_path)
    assert index.reader == "hpa"
    rec = index.records[0]
    assert rec.key == ("10580_1758", "B01", 1)
    assert list(rec.channels) == ["microtubules", "er", "nucleus", "protein"]
    site = load_site(rec)
    assert site.data.dtype == np.float32
    np.testing.assert_array_equal(site.data, rgby[[0, 3, 2, 1]])


def test_hpa_png_jpg_and_colour_files(tmp_path):
    field = tifffile.imread(DATA / "hpa" / "hpa_field_mt_er_nuc_crop256.tif")  # [MT, ER, nucleus] float 0-1
    u8 = np.round(np.clip(field, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(u8[0]).save(tmp_path / "P2_A1_3_red.png")
    # HPA web images are colour files: the ER (yellow) channel as an RGB image with R == G
    Image.fromarray(np.stack([u8[1], u8[1], np.zeros_like(u8[1])], axis=-1)).save(tmp_path / "P2_A1_3_yellow.png")
    Image.fromarray(np.stack([np.zeros_like(u8[2])] * 2 + [u8[2]], axis=-1)).save(tmp_path / "P2_A1_3_blue.png")
    Image.fromarray(u8[2]).save(tmp_path / "P2_A1_4_blue.jpg", quality=95)
    index = read_plate(tmp_path, reader="hpa")
    assert [r.key for r in index] == [("P2", "A01", 3), ("P2", "A01", 4)]
    first = load_site(index.records[0])
    assert first.channel_names == ("microtubules", "er", "nucleus")
    assert first.data.dtype == np.uint8
    np.testing.assert_array_equal(first.data, u8)
    # site 4 has only a blue file: the others are reported missing with their expected names
    with pytest.raises(SiteLoadError, match=r"P2_A1_4_red\.jpg: channel file not found"):
        load_site(index.records[1])
    jpg = load_site(index.records[1], channels=["nucleus"])
    assert np.abs(jpg.data[0].astype(int) - u8[2]).mean() < 3  # lossy but the same picture


# ----------------------------------------------------------------------------------------------------------
# OME-TIFF


def test_ometiff_real_hpa_field_names_and_physical_size(tmp_path):
    field = tifffile.imread(DATA / "hpa" / "hpa_field_mt_er_nuc_crop256.tif")
    tifffile.imwrite(tmp_path / "HPA1_B02_s1.ome.tif", field, compression="zlib",
                     metadata={"axes": "CYX", "Channel": {"Name": ["microtubules", "er", "nucleus"]},
                               "PhysicalSizeX": 80.0, "PhysicalSizeXUnit": "nm"})
    tifffile.imwrite(tmp_path / "HPA1_B02_s2.ome.tif", field[::-1].copy(),
                     metadata={"axes": "CYX", "Channel": {"Name": ["microtubules", "er", "nucleus"]},
                               "PhysicalSizeX": 0.08})
    index = read_plate(tmp_path)
    assert index.reader == "ometiff"
    assert [r.key for r in index] == [("HPA1", "B02", 1), ("HPA1", "B02", 2)]
    rec = index.records[0]
    assert list(rec.channels) == ["microtubules", "er", "nucleus"]
    assert rec.channels["er"].endswith("HPA1_B02_s1.ome.tif#1")
    assert rec.pixel_size_um == pytest.approx(0.08)
    site = load_site(rec)
    np.testing.assert_array_equal(site.data, field)
    assert site.data.dtype == np.float32
    np.testing.assert_array_equal(load_site(index.records[1], channels=["nucleus"]).data[0], field[0])
    # a single OME-TIFF file is a source too; channel names can be renamed by index
    one = read_plate(tmp_path / "HPA1_B02_s2.ome.tif", channel_names={"2": "DNA"})
    assert list(one.records[0].channels) == ["microtubules", "er", "DNA"]


# ----------------------------------------------------------------------------------------------------------
# auto-detection and errors


def test_list_readers_in_priority_order():
    assert list(list_readers()) == ["loaddata", "phenix", "ometiff", "imagexpress", "hpa"]


def test_auto_detection_precedence_and_explicit_reader(tmp_path):
    write_phenix(tmp_path, wells=((1, 1),), fields=(1,), channels=(1,))
    tifffile.imwrite(tmp_path / "P9_A01_1_blue.tif", _arr(1))
    index = read_plate(tmp_path)
    assert index.reader == "phenix"
    assert index.notes["phenix"].startswith("detected: matched 1 file(s)")
    assert "but phenix takes precedence (pass reader='hpa' to use it)" in index.notes["hpa"]
    assert "looked for <plate>_<well>_s<site>_w<N>[<GUID>].tif" in index.notes["imagexpress"]
    assert set(index.notes) == set(list_readers())
    hpa = read_plate(tmp_path, reader="hpa")
    assert hpa.reader == "hpa" and [r.key for r in hpa] == [("P9", "A01", 1)]


def test_nothing_matches_names_folder_and_patterns(tmp_path):
    tifffile.imwrite(tmp_path / "foo.tif", _arr(1))
    with pytest.raises(ReaderError) as err:
        read_plate(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path}: no reader matched")
    for pattern in ("rRRcCCfFFpPP-chNsk1fk1fl1.tiff", "<plate>_<well>_s<site>_w<N>[<GUID>].tif",
                    "{red,yellow,blue,green}", ".ome.tif", "FileName_Orig<Channel>"):
        assert pattern in msg
    assert "e.g. foo.tif" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReaderError, match="found no image files"):
        read_plate(tmp_path / "empty")
    with pytest.raises(ReaderError, match=r"reader 'imagexpress' found no sites"):
        read_plate(tmp_path, reader="imagexpress")
    with pytest.raises(ReaderError, match="no such file or folder"):
        read_plate(tmp_path / "nope")
    with pytest.raises(ReaderError, match="unknown reader 'operetta'"):
        read_plate(tmp_path, reader="operetta")


def test_channel_name_errors(tmp_path):
    write_phenix(tmp_path, wells=((1, 1),), fields=(1,), channels=(1, 2))
    with pytest.raises(ReaderError, match="both named 'DNA'"):
        read_plate(tmp_path, channel_names="1=DNA,2=DNA")
    with pytest.raises(ReaderError, match="is not <id>=<name>"):
        read_plate(tmp_path, channel_names="1:DNA")
    with pytest.raises(ReaderError, match="pixel_size_um must be > 0"):
        read_plate(tmp_path, pixel_size_um=0)


def test_loaddata_generated_row_col_relative_paths_and_failures(tmp_path):
    a, b = _arr(1), _arr(2)
    tifffile.imwrite(tmp_path / "a_dna.tif", a)
    tifffile.imwrite(tmp_path / "a_er.tif", b)
    tifffile.imwrite(tmp_path / "b_dna.tif", a)
    (tmp_path / "load_data.csv").write_text(
        "Metadata_Plate,Metadata_Row,Metadata_Col,Metadata_Field,FileName_OrigDNA,PathName_OrigDNA,"
        "FileName_OrigER,PathName_OrigER\n"
        "PX,2,3,1,a_dna.tif,,a_er.tif,\n"  # empty PathName: next to the CSV
        "PX,B,3,2,b_dna.tif,.,b_er.tif,.\n"  # b_er.tif does not exist
        "PX,B,4,1,c.tif,s3://bucket/plate,c_er.tif,s3://bucket/plate\n")
    index = read_plate(tmp_path)
    assert index.reader == "loaddata"
    assert [r.key for r in index] == [("PX", "B03", 1), ("PX", "B03", 2), ("PX", "B04", 1)]
    np.testing.assert_array_equal(load_site(index.records[0]).data, np.stack([a, b]))
    with pytest.raises(SiteLoadError, match=r"b_er.tif: channel file not found"):
        load_site(index.records[1])
    assert index.records[2].channels["DNA"] == "s3://bucket/plate/c.tif"
    with pytest.raises(SiteLoadError, match="remote URIs are not read by load_site"):
        load_site(index.records[2])


def test_ome_plate_well_rows_are_zero_based(tmp_path):
    """OME-XML Well Row/Column are 0-based: Row 27, Column 4 is well AB05 (1536-well rows past Z)."""
    from subcell_screen.io._metadata import read_ome_info

    xml = ('<?xml version="1.0" encoding="UTF-8"?>'
           '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Plate ID="Plate:0" Name="P1536"><Well ID="Well:0" Row="27" Column="4">'
           '<WellSample ID="WellSample:0" Index="2"><ImageRef ID="Image:0"/></WellSample></Well></Plate>'
           '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="8" SizeY="8" '
           'SizeC="1" SizeZ="1" SizeT="1"><Channel ID="Channel:0" Name="DNA"/><TiffData/></Pixels></Image></OME>')
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16), description=xml, metadata=None)
    info = read_ome_info(path)
    assert (info.plate, info.well, info.site, info.channel_names) == ("P1536", "AB05", 3, ("DNA",))
