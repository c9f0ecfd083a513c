"""Rebuild the small real fixtures in tests/data from the project's reference-data folder.

Usage: python tests/data/make_fixtures.py SOURCE_DATA_DIR

SOURCE_DATA_DIR is the folder described in tests/data/README.md (one sub-folder per upstream source).
Pixel values are never changed: images are copied, cropped (where stated) and, where stated, re-encoded with
lossless TIFF compression. Run once; the outputs are committed.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

import tifffile

HERE = Path(__file__).parent


def _tiff(src: Path, dst: Path, *, crop: tuple[slice, slice] | None = None, compression: str = "zlib",
          keep_resolution: bool = False) -> None:
    """Copy ``src`` to ``dst`` losslessly re-encoded; ``keep_resolution`` keeps the X/YResolution and
    ResolutionUnit tags as they are upstream (bogus instrument values included: tests rely on them)."""
    image = tifffile.imread(src)
    if crop is not None:
        image = image[(..., *crop)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    args = {"level": 19 if compression == "zstd" else 9} if compression not in ("lzw", "lzma") else {}
    extra = {}
    if keep_resolution:
        with tifffile.TiffFile(src) as tif:
            tags = tif.pages.first.tags
            if "XResolution" in tags:
                extra = {"resolution": (tags["XResolution"].value, tags["YResolution"].value),
                         "resolutionunit": int(tags["ResolutionUnit"].value)}
    tifffile.imwrite(dst, image, compression=compression, compressionargs=args, predictor=True, **extra)


def main(src: Path) -> None:
    # BBBC039: 4 ImageXpress-named Hoechst fields + ground-truth masks (pixels unchanged, deflate)
    for img in sorted((src / "bbbc039-nuclei-gt" / "images").glob("*.tif")):
        _tiff(img, HERE / "bbbc039" / "images" / img.name)
    for mask in sorted((src / "bbbc039-nuclei-gt" / "masks").glob("*.png")):
        (HERE / "bbbc039" / "masks").mkdir(parents=True, exist_ok=True)
        shutil.copy2(mask, HERE / "bbbc039" / "masks" / mask.name)
    # DSB2018 image + instance mask
    for name in ("img2d.tif", "mask2d.tif"):
        _tiff(src / "dsb2018-stardist" / name, HERE / "dsb2018" / name)
    # pediatric Cell Painting site: full-size DNA (ch5) and AGP (ch3) (zstd re-encoded), the other four
    # channels full size in pediatric_site_more (LZMA re-encoded, the smallest lossless encoding, instrument
    # resolution tags kept; the real-pixel plates of tests/realplates.py are cut from all six),
    # plus all six channels cropped to the top-left 256 x 256 px in Phenix naming (LZW kept via re-encode)
    ped = src / "cellpainting-sites" / "pediatric_BR00143976_C03_f3"
    full = HERE / "cellpainting" / "pediatric_site_full"
    full.mkdir(parents=True, exist_ok=True)
    for ch in ("ch3", "ch5"):
        name = f"r03c03f03p01-{ch}sk1fk1fl1.tiff"
        _tiff(ped / name, full / name, compression="zstd")
    for ch in ("ch1", "ch2", "ch4", "ch6"):
        name = f"r03c03f03p01-{ch}sk1fk1fl1.tiff"
        _tiff(ped / name, HERE / "cellpainting" / "pediatric_site_more" / name, compression="lzma",
              keep_resolution=True)
    for name in ("NucleiOutlines_BR00143976_C03_3.tiff", "CellsOutlines_BR00143976_C03_3.tiff"):
        shutil.copy2(ped / name, full / name)
    for img in sorted(ped.glob("r03c03f03p01-ch*.tiff")):
        _tiff(img, HERE / "cellpainting" / "pediatric_site_crop256" / img.name,
              crop=(slice(0, 256), slice(0, 256)), compression="lzw")
    # CPJUMP1 site: 3 channels cropped to 256 x 256 (top-left)
    jump = src / "cellpainting-sites" / "jump_cpjump1_BR00117006_A01_f1"
    for img in sorted(jump.glob("*.tiff")):
        _tiff(img, HERE / "cellpainting" / "cpjump1_crop256" / img.name, crop=(slice(0, 256), slice(0, 256)),
              compression="lzw")
    # CellProfiler ExampleHuman images (unchanged) and per-object CSVs (gzipped)
    eh = src / "cellprofiler-examplehuman"
    dst = HERE / "examplehuman"
    dst.mkdir(parents=True, exist_ok=True)
    for img in sorted(eh.glob("*.tif")):
        shutil.copy2(img, dst / img.name)
    for csv in sorted((eh / "cellprofiler_output").glob("*.csv")):
        with open(csv, "rb") as fin, gzip.GzipFile(dst / (csv.name + ".gz"), "wb", mtime=0) as fout:
            shutil.copyfileobj(fin, fout)
    # HPA: single-cell crop (unchanged) and the field's central 256 x 256 (float32, deflate)
    hpa = src / "hpa-bioimageio-samples"
    (HERE / "hpa").mkdir(exist_ok=True)
    shutil.copy2(hpa / "hpa_singlecell_rgby_128.tif", HERE / "hpa" / "hpa_singlecell_rgby_128.tif")
    _tiff(hpa / "hpa_field_mt_er_nuc_512.tif", HERE / "hpa" / "hpa_field_mt_er_nuc_crop256.tif",
          crop=(slice(128, 384), slice(128, 384)))
    # LINCS plate of well profiles (unchanged)
    (HERE / "lincs").mkdir(exist_ok=True)
    shutil.copy2(src / "lincs-plate-profiles" / "SQ00015054_normalized_feature_select.csv.gz",
                 HERE / "lincs" / "SQ00015054_normalized_feature_select.csv.gz")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
