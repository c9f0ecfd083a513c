"""Channel maps: which acquired channel feeds which SubCell input, and which ones segmentation uses.

SubCell models take a subsequence of the HPA colours **r, y, b, g** = microtubules, ER, nucleus (DNA),
protein of interest, always in that order (``rybg``, ``rbg``, ``ybg``, ``bg``). A :class:`ChannelMap` names
every acquired channel and fills every model slot explicitly; nothing is inferred by position.

Cell Painting has no microtubule or protein-of-interest stain. Following the SubCell authors' JUMP analysis,
the ``ybg`` model runs three *passes* per cell, ``[ER, DNA, X]`` for X in Mito, AGP, RNA, and the three
1536-d embeddings are concatenated in that order into 4608-d.

Examples
--------
>>> from subcell_screen.channels import preset
>>> cp = preset("cellpainting")
>>> cp.model_channels, [p.name for p in cp.passes], cp.embedding_dim
('ybg', ['Mito', 'AGP', 'RNA'], 4608)
>>> cp.pass_indices(["DNA", "ER", "RNA", "AGP", "Mito"])
[(1, 0, 4), (1, 0, 3), (1, 0, 2)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ._errors import ChannelMapError

__all__ = [
    "MODEL_CHANNELS",
    "SLOT_NAMES",
    "EMBEDDING_DIM",
    "ModelPass",
    "ChannelMap",
    "preset",
    "list_presets",
    "custom_channel_map",
    "COLORS",
    "CELLPAINTING_COLORS",
    "HPA_COLORS",
    "parse_color",
]

#: SubCell channel sets, letters in tensor order.
MODEL_CHANNELS: tuple[str, ...] = ("rybg", "rbg", "ybg", "bg")
#: What each SubCell letter means.
SLOT_NAMES: Mapping[str, str] = {"r": "microtubules", "y": "ER", "b": "nucleus", "g": "protein"}
#: Width of one SubCell embedding (2 pooling heads x 768).
EMBEDDING_DIM = 1536

#: Named display colours (RGB in [0, 1]); the nucleus blue is lightened so that it stays visible on black.
COLORS: Mapping[str, tuple[float, float, float]] = {
    "blue": (0.0, 0.35, 1.0), "green": (0.0, 1.0, 0.0), "red": (1.0, 0.0, 0.0), "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0), "cyan": (0.0, 1.0, 1.0), "orange": (1.0, 0.5, 0.0), "grey": (0.7, 0.7, 0.7),
    "white": (1.0, 1.0, 1.0)}
#: Cell Painting display convention by dye (as in Cell Painting Gallery / JUMP montages: Hoechst blue, ConA
#: green, SYTO 14 yellow, phalloidin + WGA red, MitoTracker magenta).
CELLPAINTING_COLORS: Mapping[str, str] = {"DNA": "blue", "ER": "green", "RNA": "yellow", "AGP": "red",
                                          "Mito": "magenta"}
#: HPA colour of each channel of the ``hpa`` preset, in SubCell letter order (r, y, b, g): the colour of its
#: image file in the Human Protein Atlas, its display colour, and the meaning of SubCell's letters. The one
#: definition: readers (file colour -> channel), the simulator and the preset's aliases derive from it.
HPA_COLORS: Mapping[str, str] = {"microtubules": "red", "er": "yellow", "nucleus": "blue", "protein": "green"}
_LETTER_COLORS = dict(zip("rybg", HPA_COLORS.values()))


def parse_color(value: str) -> tuple[float, float, float]:
    """A colour name of :data:`COLORS` or ``#rrggbb`` as RGB in [0, 1].

    Raises
    ------
    ValueError
        Naming the value and the accepted forms.
    """
    text = str(value).strip().lower()
    if text in COLORS:
        return COLORS[text]
    if len(text) == 7 and text.startswith("#"):
        try:
            return tuple(int(text[i:i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            pass
    raise ValueError(f"unknown colour {value!r}; use a name ({', '.join(COLORS)}) or #rrggbb")


@dataclass(frozen=True)
class ModelPass:
    """One forward pass of a SubCell model over one cell.

    Attributes
    ----------
    name : str
        Pass name; prefixes the pass's embedding columns (e.g. ``"Mito"`` for Cell Painting, ``"rybg"``
        for HPA).
    slots : tuple of str
        Acquired channel name feeding each letter of the model's channel set, in letter order.
    """

    name: str
    slots: tuple[str, ...]


@dataclass(frozen=True)
class ChannelMap:
    """Acquired channels -> SubCell model inputs and segmentation inputs.

    Attributes
    ----------
    name : str
        Preset name, or ``"custom"``.
    channels : tuple of str
        Acquired channel names the map expects (the names readers report).
    model_channels : str
        SubCell channel set: ``rybg``, ``rbg``, ``ybg`` or ``bg``.
    passes : tuple of ModelPass
        Forward passes per cell; embeddings are concatenated in this order.
    nucleus_channel : str
        Channel used to segment nuclei.
    cytoplasm_channel : str or None
        Channel used to grow cells from nuclei (None: cells = dilated nuclei).
    protein_channel : str or None
        Protein-of-interest channel for relocalization readouts (HPA-style screens).
    """

    name: str
    channels: tuple[str, ...]
    model_channels: str
    passes: tuple[ModelPass, ...]
    nucleus_channel: str
    cytoplasm_channel: str | None = None
    protein_channel: str | None = None
    aliases: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.model_channels not in MODEL_CHANNELS:
            raise ChannelMapError(
                f"unknown SubCell channel set {self.model_channels!r}; expected one of {list(MODEL_CHANNELS)}")
        if not self.passes:
            raise ChannelMapError("a channel map needs at least one model pass")
        known = set(self.channels)
        for p in self.passes:
            if len(p.slots) != len(self.model_channels):
                raise ChannelMapError(
                    f"pass {p.name!r} fills {len(p.slots)} slots but {self.model_channels!r} has "
                    f"{len(self.model_channels)} ({', '.join(self.model_channels)})")
            for letter, ch in zip(self.model_channels, p.slots):
                if ch not in known:
                    raise ChannelMapError(
                        f"pass {p.name!r}: slot {letter!r} ({SLOT_NAMES[letter]}) uses channel {ch!r}, which "
                        f"is not an acquired channel; acquired: {', '.join(self.channels)}")
        for role, ch in (("nucleus", self.nucleus_channel), ("cytoplasm", self.cytoplasm_channel),
                         ("protein", self.protein_channel)):
            if ch is not None and ch not in known:
                raise ChannelMapError(f"{role} channel {ch!r} is not an acquired channel; acquired: "
                                      f"{', '.join(self.channels)}")
        names = [p.name for p in self.passes]
        if len(set(names)) != len(names):
            raise ChannelMapError(f"pass names must be unique: {names}")

    @property
    def embedding_dim(self) -> int:
        """Width of the concatenated per-cell embedding (1536 per pass)."""
        return EMBEDDING_DIM * len(self.passes)

    def resolve(self, available: Sequence[str]) -> dict[str, int]:
        """Index of each of this map's channels in ``available`` (a site's channel names).

        Matching is exact first, then case-insensitive, then through ``aliases``.

        Raises
        ------
        ChannelMapError
            If a channel the map needs is not acquired; the message lists what exists.
        """
        available = list(available)
        lower = {a.lower(): i for i, a in enumerate(available)}
        out: dict[str, int] = {}
        missing = []
        for ch in self.channels:
            if ch in available:
                out[ch] = available.index(ch)
            elif ch.lower() in lower:
                out[ch] = lower[ch.lower()]
            elif ch in self.aliases and self.aliases[ch].lower() in lower:
                out[ch] = lower[self.aliases[ch].lower()]
            else:
                missing.append(ch)
        if missing:
            raise ChannelMapError(
                f"channel map {self.name!r} needs channel(s) {', '.join(map(repr, missing))}, which the "
                f"images do not have; channels found: {', '.join(available) or '(none)'}")
        return out

    def pass_indices(self, available: Sequence[str]) -> list[tuple[int, ...]]:
        """For each pass, indices into ``available`` in model-letter order."""
        idx = self.resolve(available)
        return [tuple(idx[ch] for ch in p.slots) for p in self.passes]

    def segmentation_indices(self, available: Sequence[str]) -> tuple[int, int | None]:
        """Indices of the nucleus and cytoplasm channels in ``available``."""
        idx = self.resolve(available)
        return idx[self.nucleus_channel], (idx[self.cytoplasm_channel] if self.cytoplasm_channel else None)

    def feature_names(self) -> list[str]:
        """Names of the concatenated embedding's columns, ``<pass>_<0000..1535>``."""
        if len(self.passes) == 1:
            return [f"feat{i:04d}" for i in range(EMBEDDING_DIM)]
        return [f"{p.name}_feat{i:04d}" for p in self.passes for i in range(EMBEDDING_DIM)]

    def display_colors(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """Display colour (a :data:`COLORS` name or ``#rrggbb``) of each of this map's channels.

        The field's convention by role: Cell Painting dyes (:data:`CELLPAINTING_COLORS`), HPA colours
        (:data:`HPA_COLORS`); for a custom map, the nucleus blue, the protein green, and other channels the
        colour of the SubCell letter they fill (r red, y yellow, b blue, g green), else the next free colour.
        ``overrides`` (``[report].channel_colors``) wins for the channels it names. Channels outside the map
        are never shown.
        """
        convention = {**CELLPAINTING_COLORS, **HPA_COLORS}
        colors: dict[str, str] = {}
        for ch in self.channels:
            if ch in convention:
                colors[ch] = convention[ch]
        if self.name == "custom":
            colors = {}
            colors[self.nucleus_channel] = "blue"
            if self.protein_channel:
                colors.setdefault(self.protein_channel, "green")
            for p in self.passes:
                for letter, ch in zip(self.model_channels, p.slots):
                    if ch not in colors and _LETTER_COLORS[letter] not in colors.values():
                        colors[ch] = _LETTER_COLORS[letter]
        free = [c for c in ("green", "red", "magenta", "yellow", "cyan", "orange", "grey")
                if c not in colors.values()]
        for ch in self.channels:
            if ch not in colors:
                colors[ch] = free.pop(0) if free else "white"
        for ch, color in (overrides or {}).items():
            match = next((c for c in self.channels if c.lower() == str(ch).lower()), None)
            if match is None:
                raise ChannelMapError(f"[report].channel_colors names channel {ch!r}, which is not in the channel "
                                      f"map; its channels: {', '.join(self.channels)}")
            parse_color(color)
            colors[match] = str(color)
        return {ch: colors[ch] for ch in self.channels}

    def roles(self) -> dict[str, list[str]]:
        """What each of this map's channels is used for (segmentation, SubCell slots, relocalization).

        Every channel of the map is also featurized by the classical featurizer when that one runs.
        """
        out: dict[str, list[str]] = {ch: [] for ch in self.channels}
        out[self.nucleus_channel].append("nuclei (segmentation)")
        if self.cytoplasm_channel:
            out[self.cytoplasm_channel].append("cells (segmentation)")
        if self.protein_channel:
            out[self.protein_channel].append("protein of interest (relocalization)")
        slots: dict[tuple[str, str], list[str]] = {}
        for p in self.passes:
            for letter, ch in zip(self.model_channels, p.slots):
                slots.setdefault((ch, letter), []).append(p.name)
        for (ch, letter), names in slots.items():
            label = f"SubCell {self.model_channels} '{letter}' ({SLOT_NAMES[letter]})"
            if len(self.passes) > 1:
                label += f" in pass{'es' if len(names) > 1 else ''} {', '.join(names)}"
            out[ch].append(label)
        return out

    def acquired(self, available: Sequence[str]) -> list[str]:
        """The names in ``available`` (a site's channels) this map uses, in acquisition order.

        Raises
        ------
        ChannelMapError
            If a channel the map needs is not acquired.
        """
        used = set(self.resolve(available).values())
        return [name for i, name in enumerate(available) if i in used]

    def with_segmentation(self, *, nucleus: str | None = None, cytoplasm: str | None = None) -> ChannelMap:
        """A copy with other segmentation channels (validated)."""
        from dataclasses import replace

        return replace(self, nucleus_channel=nucleus or self.nucleus_channel,
                       cytoplasm_channel=cytoplasm or self.cytoplasm_channel)


_HPA_CHANNELS = tuple(HPA_COLORS)  # r, y, b, g
_HPA_LETTER_CHANNEL = dict(zip("rybg", _HPA_CHANNELS))
_CP_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


def _hpa(model_channels: str) -> ChannelMap:
    # a subset model only needs the channels it reads; the cytoplasm stain is microtubules, else ER
    channels = tuple(_HPA_LETTER_CHANNEL[c] for c in model_channels)
    cytoplasm = "microtubules" if "r" in model_channels else "er" if "y" in model_channels else None
    return ChannelMap(
        name="hpa" if model_channels == "rybg" else f"hpa-{model_channels}",
        channels=channels,
        model_channels=model_channels,
        passes=(ModelPass(model_channels, channels),),
        nucleus_channel="nucleus",
        cytoplasm_channel=cytoplasm,
        protein_channel="protein",
        aliases=dict(HPA_COLORS),  # HPA files are named by colour
    )


def _cellpainting() -> ChannelMap:
    return ChannelMap(
        name="cellpainting",
        channels=_CP_CHANNELS,
        model_channels="ybg",
        passes=tuple(ModelPass(x, ("ER", "DNA", x)) for x in ("Mito", "AGP", "RNA")),
        nucleus_channel="DNA",
        cytoplasm_channel="AGP",
        protein_channel=None,
    )


_PRESETS = {
    "hpa": lambda: _hpa("rybg"),
    "hpa-rbg": lambda: _hpa("rbg"),
    "hpa-ybg": lambda: _hpa("ybg"),
    "hpa-bg": lambda: _hpa("bg"),
    "cellpainting": _cellpainting,
}


def list_presets() -> list[str]:
    """Names of the built-in channel maps."""
    return list(_PRESETS)


def preset(name: str) -> ChannelMap:
    """A built-in channel map.

    ``hpa`` (``rybg``: microtubules, er, nucleus, protein) and its subsets ``hpa-rbg``, ``hpa-ybg``,
    ``hpa-bg``; ``cellpainting`` (DNA, ER, RNA, AGP, Mito -> three ``ybg`` passes, 4608-d).

    Raises
    ------
    ChannelMapError
        For an unknown name, listing the known ones.
    """
    try:
        return _PRESETS[name]()
    except KeyError:
        raise ChannelMapError(f"unknown channel-map preset {name!r}; known: {', '.join(_PRESETS)}") from None


def custom_channel_map(
    *,
    channels: Sequence[str],
    model_channels: str,
    passes: Mapping[str, Mapping[str, str]] | None = None,
    slots: Mapping[str, str] | None = None,
    nucleus: str,
    cytoplasm: str | None = None,
    protein: str | None = None,
) -> ChannelMap:
    """Build a channel map from a run config.

    Parameters
    ----------
    channels
        Acquired channel names.
    model_channels
        SubCell channel set (``rybg``, ``rbg``, ``ybg``, ``bg``).
    passes
        Pass name -> {letter: channel}. Give either ``passes`` or ``slots`` (a single pass).
    slots
        {letter: channel} for a single pass named after ``model_channels``.
    nucleus, cytoplasm, protein
        Segmentation and relocalization channels.

    Raises
    ------
    ChannelMapError
        If a letter is missing or unknown, or a channel is not acquired.
    """
    if model_channels not in MODEL_CHANNELS:
        raise ChannelMapError(
            f"unknown SubCell channel set {model_channels!r}; expected one of {list(MODEL_CHANNELS)}")
    if (passes is None) == (slots is None):
        raise ChannelMapError("give exactly one of 'passes' or 'slots'")
    if passes is None:
        passes = {model_channels: slots or {}}
    built = []
    for pname, mapping in passes.items():
        extra = set(mapping) - set(model_channels)
        if extra:
            raise ChannelMapError(f"pass {pname!r}: letters {sorted(extra)} are not in {model_channels!r}")
        missing = [c for c in model_channels if c not in mapping]
        if missing:
            raise ChannelMapError(
                f"pass {pname!r}: slot(s) {', '.join(f'{m!r} ({SLOT_NAMES[m]})' for m in missing if m in SLOT_NAMES)} "
                f"of {model_channels!r} are not filled")
        built.append(ModelPass(pname, tuple(mapping[c] for c in model_channels)))
    return ChannelMap(name="custom", channels=tuple(channels), model_channels=model_channels,
                      passes=tuple(built), nucleus_channel=nucleus, cytoplasm_channel=cytoplasm,
                      protein_channel=protein)
