"""Tests for subcell_screen.config: validation at the edge, messages that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from subcell_screen import ConfigError
from subcell_screen.config import load_config

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
[screen]
path = "screens/x"
[images]
source = "images"
[plates]
table = "plates.csv"
"""


def _cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


def test_minimal_config_resolves_paths_relative_to_file(tmp_path):
    cfg = load_config(_cfg(tmp_path, MINIMAL))
    assert cfg.screen.path == tmp_path / "screens/x"
    assert cfg.images.source == tmp_path / "images"
    assert cfg.plates.table == tmp_path / "plates.csv"
    assert cfg.channels.preset == "hpa" and cfg.channel_map().model_channels == "rybg"
    assert cfg.segmentation.method == "classical" and cfg.embedding.precision == "auto"
    assert cfg.illumination_correction() is False
    assert cfg.to_dict()["screen"]["path"] == str(tmp_path / "screens/x")


def test_cellpainting_custom_segmentation_channel(tmp_path):
    cfg = load_config(_cfg(tmp_path, MINIMAL + '[channels]\npreset = "cellpainting"\ncytoplasm = "RNA"\n'))
    cmap = cfg.channel_map()
    assert cmap.cytoplasm_channel == "RNA" and cmap.embedding_dim == 4608
    assert cfg.illumination_correction() is True


@pytest.mark.parametrize(("extra", "fragment"), [
    ('[segmentation]\nmethod = "magic"\n', "[segmentation].method: Input should be 'classical' or 'cellpose'"),
    ('[segmentation]\nmethd = "classical"\n', "[segmentation].methd: unknown key"),
    ('[embedding]\ncrop_size = 100\n', "[embedding].crop_size"),
    ('[embedding]\nbatch_size = 0\n', "[embedding].batch_size"),
    ('[profiles]\nnormalize = "zscore"\n', "[profiles].normalize"),
    ('device = "gpu"\n', "device: Value error, device must be"),
    ('[channels]\npreset = "custom"\nchannels = ["a", "b"]\n', "preset 'custom' needs model_channels, nucleus"),
    ('[channels]\npreset = "cellpainting"\ncytoplasm = "Actin"\n', "cytoplasm channel 'Actin'"),
    ('[bogus]\nx = 1\n', "bogus: unknown key"),
])
def test_invalid_keys_are_named(tmp_path, extra, fragment):
    text = MINIMAL.replace("[screen]", extra + "[screen]") if extra.startswith("device") else MINIMAL + extra
    with pytest.raises(ConfigError) as info:
        load_config(_cfg(tmp_path, text))
    assert fragment in str(info.value)
    assert str(tmp_path / "run.toml") in str(info.value)


def test_missing_section(tmp_path):
    with pytest.raises(ConfigError, match=r"\[plates\]: required key is missing"):
        load_config(_cfg(tmp_path, "[screen]\npath='x'\n[images]\nsource='y'\n"))


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_cfg(tmp_path, "[screen\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_example_configs_validate():
    examples = sorted((REPO / "examples").glob("*.toml"))
    assert examples, "examples/ must hold at least one run config"
    for path in examples:
        load_config(path)


def test_preprocessing_defaults_are_the_model_cards(tmp_path):
    """[embedding] without normalize (or crop size, pixel size, mask) gives the model card's preprocessing:
    joint min-max, as SubCell was trained; the config used to say per_channel while the card said joint."""
    from subcell_screen.embed import get_model_card, resolve_preprocessing
    from subcell_screen.embed.registry import HPA_PIXEL_SIZE_UM

    emb = load_config(_cfg(tmp_path, MINIMAL)).embedding
    assert emb.normalize is None
    card = get_model_card(emb.model)
    got = resolve_preprocessing(emb.model, normalize=emb.normalize, crop_size=emb.crop_size,
                                pixel_size_um=emb.target_pixel_size_um, mask=emb.mask)
    assert got == card.preprocessing
    assert (got.normalize, got.crop_size, got.pixel_size_um, got.mask) == (
        "joint", 640, HPA_PIXEL_SIZE_UM, False)
    # a setting that is given wins, for any card
    text = MINIMAL + '[embedding]\nmodel = "ybg/vit"\nnormalize = "per_channel"\n'
    explicit = load_config(_cfg(tmp_path, text))
    assert resolve_preprocessing(explicit.embedding.model, normalize=explicit.embedding.normalize).normalize == (
        "per_channel")
    assert resolve_preprocessing("bg/mae", mask=True).mask is True
    with pytest.raises(ValueError, match="unknown normalization 'minmax'"):
        resolve_preprocessing(card, normalize="minmax")
    # the shipped examples: Cell Painting keeps the JUMP recipe on purpose, HPA takes the card's
    assert load_config(REPO / "examples" / "cellpainting_jump_target1.toml").embedding.normalize == "per_channel"
    assert load_config(REPO / "examples" / "hpa_vorinostat.toml").embedding.normalize is None
