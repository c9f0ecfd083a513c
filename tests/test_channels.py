"""Tests for subcell_screen.channels."""

from __future__ import annotations

import pytest

from subcell_screen import ChannelMapError
from subcell_screen.channels import custom_channel_map, list_presets, preset


def test_hpa_preset_is_rybg_in_letter_order():
    cmap = preset("hpa")
    assert cmap.model_channels == "rybg"
    assert cmap.passes[0].slots == ("microtubules", "er", "nucleus", "protein")
    assert cmap.embedding_dim == 1536
    # reader order differs from model order: indices follow the letters r, y, b, g
    assert cmap.pass_indices(["nucleus", "protein", "er", "microtubules"]) == [(3, 2, 0, 1)]
    assert cmap.segmentation_indices(["nucleus", "protein", "er", "microtubules"]) == (0, 3)
    assert cmap.feature_names()[:2] == ["feat0000", "feat0001"] and len(cmap.feature_names()) == 1536


@pytest.mark.parametrize(("name", "letters", "slots"), [
    ("hpa-rbg", "rbg", ("microtubules", "nucleus", "protein")),
    ("hpa-ybg", "ybg", ("er", "nucleus", "protein")),
    ("hpa-bg", "bg", ("nucleus", "protein")),
])
def test_hpa_subsets(name, letters, slots):
    cmap = preset(name)
    assert cmap.model_channels == letters and cmap.passes[0].slots == slots
    assert set(cmap.channels) == set(slots)


def test_hpa_colour_aliases():
    cmap = preset("hpa")
    assert cmap.pass_indices(["blue", "green", "red", "yellow"]) == [(2, 3, 0, 1)]


def test_cellpainting_three_ybg_passes():
    cmap = preset("cellpainting")
    assert cmap.model_channels == "ybg"
    assert [(p.name, p.slots) for p in cmap.passes] == [
        ("Mito", ("ER", "DNA", "Mito")), ("AGP", ("ER", "DNA", "AGP")), ("RNA", ("ER", "DNA", "RNA"))]
    assert cmap.embedding_dim == 4608
    names = cmap.feature_names()
    assert len(names) == 4608 and names[0] == "Mito_feat0000" and names[1536] == "AGP_feat0000"
    # case-insensitive channel matching (readers may report "dna", "Mito", ...)
    assert cmap.pass_indices(["dna", "er", "rna", "agp", "mito", "brightfield"]) == [(1, 0, 4), (1, 0, 3), (1, 0, 2)]
    assert cmap.segmentation_indices(["DNA", "ER", "RNA", "AGP", "Mito"]) == (0, 3)


def test_missing_channel_lists_what_exists():
    with pytest.raises(ChannelMapError, match=r"needs channel\(s\) 'Mito'.*channels found: DNA, ER, RNA, AGP"):
        preset("cellpainting").resolve(["DNA", "ER", "RNA", "AGP"])


def test_unknown_preset():
    with pytest.raises(ChannelMapError, match="known: hpa"):
        preset("brightfield")
    assert "cellpainting" in list_presets()


def test_custom_map_validation():
    cmap = custom_channel_map(channels=["Hoechst", "GFP", "Tubulin"], model_channels="rbg",
                              slots={"r": "Tubulin", "b": "Hoechst", "g": "GFP"}, nucleus="Hoechst",
                              cytoplasm="Tubulin", protein="GFP")
    assert cmap.pass_indices(["Hoechst", "GFP", "Tubulin"]) == [(2, 0, 1)]
    with pytest.raises(ChannelMapError, match="slot.*'r' \\(microtubules\\).*not filled"):
        custom_channel_map(channels=["Hoechst", "GFP"], model_channels="rbg", slots={"b": "Hoechst", "g": "GFP"},
                           nucleus="Hoechst")
    with pytest.raises(ChannelMapError, match="not an acquired channel"):
        custom_channel_map(channels=["Hoechst", "GFP"], model_channels="bg", slots={"b": "DAPI", "g": "GFP"},
                           nucleus="Hoechst")
    with pytest.raises(ChannelMapError, match="letters \\['y'\\] are not in 'bg'"):
        custom_channel_map(channels=["Hoechst", "GFP"], model_channels="bg",
                           slots={"b": "Hoechst", "g": "GFP", "y": "GFP"}, nucleus="Hoechst")
    with pytest.raises(ChannelMapError, match="nucleus channel 'DAPI'"):
        custom_channel_map(channels=["Hoechst", "GFP"], model_channels="bg", slots={"b": "Hoechst", "g": "GFP"},
                           nucleus="DAPI")
    with pytest.raises(ChannelMapError, match="unknown SubCell channel set"):
        custom_channel_map(channels=["a"], model_channels="rgb", slots={"r": "a"}, nucleus="a")
