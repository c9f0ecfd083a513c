"""Model cards for the 8 public SubCell models.

Every public model is the same ViT-B/16 encoder (Hugging Face ``ViTModel`` layout, 768 wide, 12 layers,
12 heads, pre-LN, final LayerNorm) + a gated attention pooler (2 heads, 768 -> 512, 1536-d output) + one
31-class MLP classifier (``seed_0``). They differ by channel set (``rybg``, ``rbg``, ``ybg``, ``bg``) and
training recipe (``MAE-CellS-ProtS-Pool`` = ``mae_contrast_supcon_model``, ``ViT-ProtS-Pool`` =
``vit_supcon_model``). Weights live in the public bucket ``s3://czi-subcell-public/models/``, read here over
HTTPS.

Names are ``"<channels>/<family>"``, e.g. ``"rybg/MAE-CellS-ProtS-Pool"``; matching is case-insensitive and
SubCellPortable's ``model_type`` spellings (``"rybg/mae_contrast_supcon_model"``) and the short forms
``"rybg/mae"`` / ``"rybg/vit"`` are accepted.

Examples
--------
>>> from subcell_screen.embed.registry import get_model_card
>>> card = get_model_card("ybg/mae_contrast_supcon_model")
>>> card.name, card.encoder_file, card.channel_names
('ybg/MAE-CellS-ProtS-Pool', 'ER-DNA-Protein_MAE-CellS-ProtS-Pool.pth', ('ER', 'nucleus', 'protein'))
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ._errors import UnknownModelError

__all__ = [
    "BASE_URL",
    "HPA_PIXEL_SIZE_UM",
    "Architecture",
    "Preprocessing",
    "ModelCard",
    "MODEL_CARDS",
    "get_model_card",
    "list_model_cards",
    "resolve_preprocessing",
    "model_names",
]

#: HTTPS form of ``s3://czi-subcell-public/models/`` (anonymous read).
BASE_URL = "https://czi-subcell-public.s3.amazonaws.com/models/"
#: HPA pixel size, SubCell's native scale (µm/px): the one definition (crops, config, model cards use it).
HPA_PIXEL_SIZE_UM = 0.0800885

_PREFIX = {"rybg": "all_channels", "rbg": "MT-DNA-Protein", "ybg": "ER-DNA-Protein", "bg": "DNA-Protein"}
_LETTER_NAME = {"r": "microtubules", "y": "ER", "b": "nucleus", "g": "protein"}
_FAMILIES = {
    # family -> (model_type, short tag used in classifier file names, position embedding)
    "MAE-CellS-ProtS-Pool": ("mae_contrast_supcon_model", "MAE", "fixed 2-D sin-cos (ViTMAE)"),
    "ViT-ProtS-Pool": ("vit_supcon_model", "ViT", "learned"),
}
#: SHA-256 of published files where known (only one is published, by a third party; see docs).
_KNOWN_SHA256 = {
    "ER-DNA-Protein_MAE-CellS-ProtS-Pool.pth": "ed8c22b42e1b0665b2363e7a1ae56b42a8a93ac93203bb89a13b6be7ad878e51",
}


@dataclass(frozen=True)
class Architecture:
    """Hyper-parameters of a SubCell network.

    The public models all use the defaults below (ViT-B/16 at 448 px). Loading infers every shape-bearing
    value from the checkpoint; ``num_heads`` and ``layer_norm_eps`` cannot be seen in shapes and come from
    the card, or from a ``<encoder stem>.config.json`` sidecar next to the encoder file (tiny test models).

    Attributes
    ----------
    num_channels : int
        Input channels C.
    hidden_size, num_layers, num_heads, mlp_dim : int
        Encoder width, depth, attention heads and MLP width.
    patch_size, image_size : int
        Patch side and the training image side (pixels); the stored position grid is
        ``image_size // patch_size`` square.
    layer_norm_eps : float
        LayerNorm epsilon (1e-12 as in the HF config).
    pool_dim, pool_heads : int
        Gated-attention pooler inner width and heads; embedding width = ``pool_heads * hidden_size``.
    classifier_dims : tuple of int
        Hidden widths of the MLP classifier (1536 -> 512 -> 256 -> classes).
    num_classes : int
        Classifier outputs.
    """

    num_channels: int
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    image_size: int = 448
    layer_norm_eps: float = 1e-12
    pool_dim: int = 512
    pool_heads: int = 2
    classifier_dims: tuple[int, ...] = (512, 256)
    num_classes: int = 31

    @property
    def embedding_dim(self) -> int:
        """Width of the pooled embedding (1536 for the public models)."""
        return self.pool_heads * self.hidden_size

    @property
    def grid_size(self) -> int:
        """Side of the stored position-embedding grid (28)."""
        return self.image_size // self.patch_size

    def flops(self, height: int, width: int | None = None) -> float:
        """Forward FLOPs (2 x multiply-accumulates) of encoder + pooler + classifier for one crop.

        Counts every matmul: patch embedding, QKV/output projections, attention scores and weighted sum,
        MLP, pooler and classifier. 157 GFLOPs at 448², 368 GFLOPs at 640² for ViT-B/16 with 4 channels.
        """
        width = height if width is None else width
        p, d, m = self.patch_size, self.hidden_size, self.mlp_dim
        n_patch = (height // p) * (width // p)
        n = n_patch + 1
        macs = n_patch * d * self.num_channels * p * p
        macs += self.num_layers * (4 * n * d * d + 2 * n * d * m + 2 * n * n * d)
        macs += 2 * n * d * self.pool_dim + n * self.pool_dim * self.pool_heads + self.pool_heads * n * d
        dims = (self.embedding_dim, *self.classifier_dims, self.num_classes)
        macs += sum(a * b for a, b in zip(dims[:-1], dims[1:]))
        return 2.0 * macs


@dataclass(frozen=True)
class Preprocessing:
    """Preprocessing defaults of a model card.

    Attributes
    ----------
    normalize : str
        ``"joint"`` min-max over (C, H, W) per cell, what SubCell was trained with (``MinMaxNormalize`` of the
        released configs; the default of every public card), or ``"per_channel"`` over (H, W)
        (SubCellPortable 2025, the JUMP analysis); both add ``epsilon`` to the denominator.
    epsilon : float
        Denominator epsilon (1e-6, as in training).
    pixel_size_um : float
        Target pixel size (HPA, 0.0800885 µm/px).
    crop_size : int
        Crop side at the target pixel size used by the authors at inference (640); training used 448 crops
        of 0.5x-downscaled 896 windows.
    mask : bool
        Multiply by the (dilated) cell mask before normalising (training validation did; JUMP headline
        results did not).
    """

    normalize: str = "joint"
    epsilon: float = 1e-6
    pixel_size_um: float = HPA_PIXEL_SIZE_UM
    crop_size: int = 640
    mask: bool = False


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to fetch, verify, build and feed one public SubCell model.

    Attributes
    ----------
    name : str
        Canonical name ``"<channels>/<family>"``.
    channels : str
        SubCell letters in tensor order (subsequence of ``rybg``).
    family : str
        ``"MAE-CellS-ProtS-Pool"`` or ``"ViT-ProtS-Pool"``.
    model_type : str
        SubCellPortable's name for the family.
    channel_names : tuple of str
        Meaning of each input channel (microtubules, ER, nucleus, protein).
    encoder_file, encoder_url : str
        Public file name and HTTPS URL of the encoder + pooler checkpoint.
    classifier_files, classifier_urls : tuple of str
        Classifier checkpoints (only ``seed_0`` is published).
    encoder_sha256 : str or None
        Known SHA-256 of the encoder file (None: unknown, recorded on first download).
    classifier_sha256 : tuple of (str or None)
        Known SHA-256 per classifier file.
    position_embedding : str
        How the stored position embeddings were made (MAE: fixed sin-cos; ViT: learned).
    architecture : Architecture
        Expected network hyper-parameters.
    preprocessing : Preprocessing
        Defaults for crops fed to this model.
    """

    name: str
    channels: str
    family: str
    model_type: str
    channel_names: tuple[str, ...]
    encoder_file: str
    encoder_url: str
    classifier_files: tuple[str, ...]
    classifier_urls: tuple[str, ...]
    encoder_sha256: str | None
    classifier_sha256: tuple[str | None, ...]
    position_embedding: str
    architecture: Architecture
    preprocessing: Preprocessing = Preprocessing()

    @property
    def files(self) -> tuple[str, ...]:
        """All file names (encoder first)."""
        return (self.encoder_file, *self.classifier_files)

    def url_for(self, filename: str, *, base_url: str | None = None) -> str:
        """URL of one of this card's files, optionally on a mirror that keeps the bucket's layout."""
        urls = dict(zip(self.files, (self.encoder_url, *self.classifier_urls)))
        if filename not in urls:
            raise KeyError(f"{filename!r} is not a file of model {self.name!r}; files: {', '.join(self.files)}")
        url = urls[filename]
        if base_url:
            url = base_url.rstrip("/") + "/" + url[len(BASE_URL):]
        return url

    def sha256_for(self, filename: str) -> str | None:
        """Known SHA-256 of one of this card's files (None when unknown)."""
        return dict(zip(self.files, (self.encoder_sha256, *self.classifier_sha256))).get(filename)


def _make_card(channels: str, family: str) -> ModelCard:
    model_type, tag, pos = _FAMILIES[family]
    prefix = _PREFIX[channels]
    encoder = f"{prefix}_{family}.pth"
    clf_dir = f"{prefix}_{tag}_MLP_classifier"
    classifier = f"{clf_dir}_seed_0.pth"
    return ModelCard(
        name=f"{channels}/{family}",
        channels=channels,
        family=family,
        model_type=model_type,
        channel_names=tuple(_LETTER_NAME[c] for c in channels),
        encoder_file=encoder,
        encoder_url=BASE_URL + encoder,
        classifier_files=(classifier,),
        classifier_urls=(f"{BASE_URL}{clf_dir}/{classifier}",),
        encoder_sha256=_KNOWN_SHA256.get(encoder),
        classifier_sha256=(_KNOWN_SHA256.get(classifier),),
        position_embedding=pos,
        architecture=Architecture(num_channels=len(channels)),
    )


#: All public models, by canonical name.
MODEL_CARDS: dict[str, ModelCard] = {
    c.name: c for c in (_make_card(ch, fam) for ch in ("rybg", "rbg", "ybg", "bg") for fam in _FAMILIES)
}


def _aliases() -> dict[str, str]:
    out: dict[str, str] = {}
    for card in MODEL_CARDS.values():
        tag = _FAMILIES[card.family][1].lower()
        for alias in (card.name, f"{card.channels}/{card.model_type}", f"{card.channels}/{tag}",
                      f"{card.channels}-{tag}", f"{card.channels}/{card.family}".replace("-", "_")):
            out[alias.lower()] = card.name
    return out


_ALIASES = _aliases()


def model_names() -> list[str]:
    """Canonical names of the public models."""
    return list(MODEL_CARDS)


def list_model_cards() -> list[ModelCard]:
    """All public model cards (rybg, rbg, ybg, bg x MAE, ViT)."""
    return list(MODEL_CARDS.values())


def get_model_card(name: str | ModelCard) -> ModelCard:
    """The card of a public model.

    Parameters
    ----------
    name
        ``"<channels>/<family>"`` (e.g. ``"rybg/MAE-CellS-ProtS-Pool"``), SubCellPortable's
        ``"<channels>/<model_type>"``, or ``"<channels>/mae|vit"``; case-insensitive. A card is returned as is.

    Raises
    ------
    UnknownModelError
        For any other name; the message lists the known names.
    """
    if isinstance(name, ModelCard):
        return name
    key = str(name).strip().lower()
    if key in _ALIASES:
        return MODEL_CARDS[_ALIASES[key]]
    raise UnknownModelError(
        f"unknown SubCell model {name!r}; known models: {', '.join(MODEL_CARDS)} "
        "(also written '<channels>/mae_contrast_supcon_model' or '<channels>/vit_supcon_model')")


def resolve_preprocessing(
    card: ModelCard | str,
    *,
    normalize: str | None = None,
    crop_size: int | None = None,
    pixel_size_um: float | None = None,
    mask: bool | None = None,
) -> Preprocessing:
    """The preprocessing a model is fed with: its card's defaults, overridden by the settings that were given.

    The model card is the only source of preprocessing defaults: a setting left at None (e.g. a run config
    without ``[embedding].normalize``) takes the card's value.

    Parameters
    ----------
    card
        A model card or a model name (see :func:`get_model_card`).
    normalize
        ``"joint"``, ``"per_channel"`` or ``"none"``; None: the card's (``"joint"``).
    crop_size
        Crop side in pixels at ``pixel_size_um``; None: the card's (640).
    pixel_size_um
        Target pixel size in µm/px; None: the card's (:data:`HPA_PIXEL_SIZE_UM`).
    mask
        Multiply crops by the cell mask; None: the card's (False).

    Returns
    -------
    Preprocessing
        The card's ``epsilon`` with every other field resolved.

    Raises
    ------
    ValueError
        For an unknown ``normalize``, or a non-positive ``crop_size`` / ``pixel_size_um``.
    """
    from .preprocess import NORMALIZATIONS

    card = get_model_card(card)
    given = {"normalize": normalize, "crop_size": crop_size, "pixel_size_um": pixel_size_um, "mask": mask}
    out = replace(card.preprocessing, **{k: v for k, v in given.items() if v is not None})
    if out.normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {out.normalize!r}; use one of {NORMALIZATIONS}")
    if not (out.crop_size > 0 and out.pixel_size_um > 0):
        raise ValueError(f"crop_size ({out.crop_size}) and pixel_size_um ({out.pixel_size_um}) must be > 0")
    return out
