"""Cellpose segmentation: offline weight resolution, strict loading, batched GPU inference.

Weights are never downloaded here. A model name (``cpsam``, ``cpsam_v2``) is looked up as a file of that
name in Cellpose's model folder (``$CELLPOSE_LOCAL_MODELS_PATH``, else ``~/.cellpose/models``), read at call
time; a path is used as given. Existence (and the SHA-256 when configured) is checked before cellpose sees
the file, and the state dict must fill every parameter of the network (cellpose's own loader is not strict:
a wrong file would "load" with random weights; and a mistyped name makes cellpose download its default
model with TLS verification switched off for the whole process; neither can happen through this module).

Inference (:meth:`CellposeSegmenter.segment_many`) stacks same-size images into one array so that their
256x256 tiles share network batches (cellpose runs a list of images one by one), and builds masks from the
flows in worker threads while the network runs on the next batch. Results equal cellpose's own
``CellposeModel.eval`` on each image (same normalisation, tiling, rescaling and dynamics).

Cellpose is imported lazily (its import takes seconds).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import SubcellScreenError
from ._resample import downscale_image, upscale_labels, working_pixel_size, working_shape

logger = logging.getLogger(__name__)

__all__ = [
    "CellposeWeightsError",
    "CellposeSegmenter",
    "SegmentationFailure",
    "load_cellpose",
    "cellpose_models_dir",
    "resolve_cellpose_weights",
    "CELLPOSE4_MODELS",
    "CELLPOSE3_MODELS",
]

#: Built-in Cellpose 4 models: name -> download URL (the file is stored under the name itself).
CELLPOSE4_MODELS: dict[str, str] = {
    "cpsam": "https://huggingface.co/mouseland/cellpose-sam/resolve/main/cpsam",
    "cpsam_v2": "https://huggingface.co/mouseland/cellpose-sam/resolve/main/cpsam_v2",
}
#: Cellpose 3.x model names (not offered by cellpose >= 4).
CELLPOSE3_MODELS: tuple[str, ...] = ("cyto3", "cyto2", "cyto", "nuclei")

#: Object diameters (px) that Cellpose-SAM handles without rescaling (its authors trained it with size
#: augmentation over roughly this range; cellpose 4 makes ``diameter`` optional). Outside it, images are
#: rescaled so that objects are 30 px across, cellpose's ``diameter`` convention.
SIZE_INVARIANT_RANGE_PX = (7.5, 120.0)


class CellposeWeightsError(SubcellScreenError, FileNotFoundError):
    """Cellpose weights are missing, corrupt, or do not fit the network."""


@dataclass(frozen=True)
class SegmentationFailure:
    """A site (or image) whose segmentation failed; the others go on.

    Attributes
    ----------
    index : int
        Position in the input sequence.
    error : str
        ``"<ExceptionType>: <message>"``.
    plate, well, site : str, str, int or None
        Site key when known.
    """

    index: int
    error: str
    plate: str | None = None
    well: str | None = None
    site: int | None = None

    @property
    def key(self) -> tuple[str | None, str | None, int | None]:
        """``(plate, well, site)``."""
        return (self.plate, self.well, self.site)


def cellpose_models_dir() -> Path:
    """Cellpose's model folder: ``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models`` (read now)."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env).expanduser() if env else Path.home() / ".cellpose" / "models"


def _installed_cellpose_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cellpose")
    except PackageNotFoundError:
        return "not installed"


def _missing_message(name: str, expected: Path, where: str) -> str:
    url = CELLPOSE4_MODELS.get(name, CELLPOSE4_MODELS["cpsam"])
    fname = name if name in CELLPOSE4_MODELS else expected.name
    return (
        f"Cellpose weights {name!r} not found: expected the file {expected} ({where}). Nothing is downloaded "
        f"automatically.\nTo get them, on a machine with internet run\n"
        f"    curl -L -o {fname} {url}\n"
        f"or  python -c \"from cellpose.models import cache_model_path; print(cache_model_path('{fname}'))\"\n"
        f"and copy the file to {expected} (or set CELLPOSE_LOCAL_MODELS_PATH to its folder, or point "
        f"[segmentation].weights in the run config at it).\n"
        f"To segment without Cellpose weights use the classical segmenter: [segmentation].method = "
        f"\"classical\" in the run config (segmenter = \"classical\", method=\"classical\" in the API).")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_cellpose_weights(model: str | os.PathLike = "cpsam", *, weights_sha256: str | None = None) -> Path:
    """Local weights file of a Cellpose model, checked; never downloads.

    Parameters
    ----------
    model
        A built-in Cellpose 4 model name (``cpsam``, ``cpsam_v2``), looked up in
        :func:`cellpose_models_dir`, or a path to a weights file.
    weights_sha256
        Expected SHA-256 (hex) of the file; checked when given.

    Returns
    -------
    Path
        Absolute path of an existing, non-empty file whose checksum (if given) matches.

    Raises
    ------
    CellposeWeightsError
        When the file is missing, empty, a folder, or has another checksum; the message names the file
        expected, where it was looked for, how to get it, and the classical alternative.
    """
    text = os.fspath(model)
    is_name = isinstance(model, str) and os.sep not in text and "/" not in text and not text.endswith(
        (".pth", ".pt", ".bin", ".safetensors"))
    if is_name and text in CELLPOSE3_MODELS:
        raise CellposeWeightsError(
            f"Cellpose model {text!r} is a Cellpose 3 model; the installed cellpose "
            f"{_installed_cellpose_version()} offers {', '.join(CELLPOSE4_MODELS)} (Cellpose-SAM). Use "
            f"[segmentation].model = \"cpsam\", or a local Cellpose 4 weights file, or [segmentation].method = "
            f"\"classical\".")
    if is_name and text not in CELLPOSE4_MODELS and not Path(text).exists():
        folder = cellpose_models_dir()
        if (folder / text).is_file():  # a user-trained model stored in cellpose's folder
            path = folder / text
        else:
            raise CellposeWeightsError(
                f"unknown Cellpose model {text!r}: not a built-in Cellpose 4 model "
                f"({', '.join(CELLPOSE4_MODELS)}) and no file {folder / text} exists. Give a built-in name or "
                f"a path to a weights file; or use [segmentation].method = \"classical\".")
    elif is_name and text in CELLPOSE4_MODELS:
        folder = cellpose_models_dir()
        path = folder / text
        env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
        where = (f"looked in CELLPOSE_LOCAL_MODELS_PATH={env}" if env else
                 f"looked in cellpose's default folder {folder}; CELLPOSE_LOCAL_MODELS_PATH is not set")
        if not path.is_file():
            raise CellposeWeightsError(_missing_message(text, path, where))
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise CellposeWeightsError(_missing_message(path.name, path.resolve(),
                                                        f"the configured weights path {what}"))
    path = path.resolve()
    if path.stat().st_size == 0:
        raise CellposeWeightsError(f"Cellpose weights file {path} is empty (an interrupted download?); "
                                   "replace it, or use [segmentation].method = \"classical\".")
    if weights_sha256:
        got = _sha256(path)
        if got.lower() != weights_sha256.strip().lower():
            raise CellposeWeightsError(
                f"Cellpose weights file {path} has SHA-256 {got}, but {weights_sha256} is expected "
                "([segmentation].weights_sha256). The file is corrupt or a different model; replace it.")
    return path


def _resolve_device(device: str | Any) -> Any:
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        logger.info("Cellpose runs on the CPU (no CUDA device); expect seconds to minutes per site")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested for Cellpose but CUDA is not available; use "
                           "device='auto' or 'cpu'")
    return dev


def _load_state_dict(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise CellposeWeightsError(f"Cellpose weights file {path} cannot be read as a PyTorch state dict "
                                   f"({type(exc).__name__}: {exc}); replace it.") from exc
    if not isinstance(state, dict) or not state:
        raise CellposeWeightsError(f"Cellpose weights file {path} does not hold a state dict")
    if "W2" not in state and "module.W2" not in state:
        raise CellposeWeightsError(
            f"{path} is not a Cellpose 4 model (no 'W2' tensor); Cellpose 3 models (cyto3, nuclei, ...) do "
            f"not run on the installed cellpose {_installed_cellpose_version()}.")
    if next(iter(state)).startswith("module."):
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return state


def _default_architecture(state: dict, dtype: Any) -> Any:
    if "encoder.cls_token" in state:
        try:
            from cellpose.vit import CPDINO
        except ImportError as exc:  # dinov3 missing
            raise CellposeWeightsError("these weights are a Cellpose-DINO model, which needs the dinov3 "
                                       "package (pip install git+https://github.com/facebookresearch/dinov3)"
                                       ) from exc
        feat = state["encoder.patch_embed.proj.weight"].shape[0]
        return CPDINO(model_name="vitl" if feat == 1024 else "vitb", dtype=dtype)
    from cellpose.vit import CPSAM

    return CPSAM(dtype=dtype)


def _load_strict(net: Any, state: dict, path: Path) -> None:
    """Load ``state`` into ``net``; every network parameter must come from the file."""
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CellposeWeightsError(f"Cellpose weights {path} do not fit the network: {exc}") from exc
    if result.missing_keys:
        raise CellposeWeightsError(
            f"Cellpose weights {path} leave {len(result.missing_keys)} network tensors unset (e.g. "
            f"{', '.join(result.missing_keys[:4])}); the file is a different model. Refusing to run with "
            "random weights.")
    if result.unexpected_keys:
        logger.warning("Cellpose weights %s hold %d tensors the network does not use (e.g. %s)", path,
                       len(result.unexpected_keys), ", ".join(result.unexpected_keys[:4]))


def load_cellpose(model: str | os.PathLike = "cpsam", *, weights_sha256: str | None = None,
                  device: str | Any = "auto", batch_size: int = 32, workers: int = 2,
                  nucleus_diameter_um: float = 12.0, cell_diameter_um: float = 30.0,
                  flow_threshold: float = 0.4, cellprob_threshold: float = 0.0,
                  precision: str = "auto", working_pixel_size_um: float | None = None,
                  architecture: Callable[[], Any] | None = None) -> CellposeSegmenter:
    """Load a Cellpose model from local weights (never downloads).

    Parameters
    ----------
    model
        ``"cpsam"`` / ``"cpsam_v2"`` (a file of that name in :func:`cellpose_models_dir`) or a path to a
        weights file.
    weights_sha256
        Expected SHA-256 of the weights file, checked before loading.
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cuda"``, ``"cuda:1"``, ``"cpu"``, or a torch.device.
    batch_size
        Network batch size in 256x256 tiles (a 1080x1080 site is 36 tiles).
    workers
        Threads that build masks from flows while the network runs.
    nucleus_diameter_um, cell_diameter_um
        Typical object sizes; images are rescaled when objects fall outside Cellpose-SAM's size-invariant
        range (:data:`SIZE_INVARIANT_RANGE_PX`).
    flow_threshold, cellprob_threshold
        Cellpose's mask thresholds.
    precision
        ``"auto"`` (bfloat16 on CUDA, as cellpose does, float32 elsewhere), ``"bf16"`` or ``"fp32"``.
    working_pixel_size_um
        Segment at this pixel size: finer images are area-averaged down to it, segmented (network and masks),
        and the label images brought back to the image's grid by nearest neighbour (every object kept).
        None: at the image's own pixel size.
    architecture
        Callable returning the untrained network the weights belong to (default: Cellpose-SAM, or
        Cellpose-DINO when the checkpoint says so). Used for custom networks.

    Returns
    -------
    CellposeSegmenter

    Raises
    ------
    CellposeWeightsError
        Missing, corrupt or mismatched weights (checked before cellpose is imported when possible).
    """
    path = resolve_cellpose_weights(model, weights_sha256=weights_sha256)
    _check_cellpose_version()
    dev = _resolve_device(device)
    dtype = _dtype_for(precision, dev)
    state = _load_state_dict(path)
    net = architecture() if architecture is not None else _default_architecture(state, dtype)
    _load_strict(net, state, path)
    net = net.to(device=dev, dtype=dtype)
    if hasattr(net, "_dtype"):
        net._dtype = dtype
    net.eval()
    del state
    name = os.fspath(model)
    return CellposeSegmenter(net, device=dev, name=name, weights_path=path, weights_sha256=weights_sha256,
                             batch_size=batch_size, workers=workers, nucleus_diameter_um=nucleus_diameter_um,
                             cell_diameter_um=cell_diameter_um, flow_threshold=flow_threshold,
                             cellprob_threshold=cellprob_threshold, working_pixel_size_um=working_pixel_size_um)


def _dtype_for(precision: str, dev: Any) -> Any:
    import torch

    if precision == "auto":
        return torch.bfloat16 if dev.type == "cuda" else torch.float32
    try:
        return {"bf16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
                "bfloat16": torch.bfloat16}[precision]
    except KeyError:
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}") from None


def _check_cellpose_version() -> None:
    v = _installed_cellpose_version()
    try:
        major = int(v.split(".")[0])
    except ValueError:
        major = -1
    if major != 4:
        raise RuntimeError(f"subcell_screen drives Cellpose 4 (Cellpose-SAM); the installed cellpose is {v}")


class CellposeSegmenter:
    """A loaded Cellpose network plus the settings to segment nuclei and cells.

    Build with :func:`load_cellpose` (weights from disk) or :meth:`from_network`. Use as ``model=`` in
    :func:`subcell_screen.segment.segment_nuclei` / ``segment_cells`` / ``segment_site``, or call
    :meth:`segment_many` to segment many images with batching across images.

    Attributes
    ----------
    model : cellpose.models.CellposeModel
        Cellpose's model object wrapping the network (its ``eval`` is the reference behaviour).
    device : torch.device
    name : str
        Model name or weights path given.
    weights_path : Path or None
    batch_size, workers : int
    nucleus_diameter_um, cell_diameter_um, flow_threshold, cellprob_threshold : float
    working_pixel_size_um : float or None
        Pixel size the network and mask building work at (see :func:`load_cellpose`).
    """

    def __init__(self, net: Any, *, device: Any, name: str, weights_path: Path | None = None,
                 weights_sha256: str | None = None, batch_size: int = 32, workers: int = 2,
                 nucleus_diameter_um: float = 12.0, cell_diameter_um: float = 30.0,
                 flow_threshold: float = 0.4, cellprob_threshold: float = 0.0, min_size_px: int = 15,
                 max_size_fraction: float = 0.4, working_pixel_size_um: float | None = None) -> None:
        _check_cellpose_version()
        from cellpose import models

        if batch_size < 1 or workers < 0:
            raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size}, {workers}")
        if working_pixel_size_um is not None and not (working_pixel_size_um > 0
                                                      and np.isfinite(working_pixel_size_um)):
            raise ValueError(f"working_pixel_size_um must be a positive number, got {working_pixel_size_um}")
        # CellposeModel's constructor always builds (and may download) Cellpose-SAM; wrap our own network
        # instead, setting the attributes its eval() reads.
        cp = models.CellposeModel.__new__(models.CellposeModel)
        cp.device = device
        cp.gpu = device.type in ("cuda", "mps")
        cp.pretrained_model = str(weights_path) if weights_path else name
        cp.backbone = getattr(net, "backbone", "sam_vitl")
        cp.net = net
        self.model = cp
        self.net = net
        self.device = device
        self.name = name
        self.weights_path = weights_path
        self._weights_sha256 = weights_sha256
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.nucleus_diameter_um = float(nucleus_diameter_um)
        self.cell_diameter_um = float(cell_diameter_um)
        self.flow_threshold = float(flow_threshold)
        self.cellprob_threshold = float(cellprob_threshold)
        self.min_size_px = int(min_size_px)
        self.max_size_fraction = float(max_size_fraction)
        self.working_pixel_size_um = None if working_pixel_size_um is None else float(working_pixel_size_um)
        self._lock = threading.Lock()

    @classmethod
    def from_network(cls, net: Any, *, device: str | Any = "auto", name: str = "custom network",
                     precision: str = "auto", **settings: Any) -> CellposeSegmenter:
        """Wrap an already built network (e.g. Cellpose-SAM with random weights to time the pipeline).

        Results of an untrained network are meaningless; use :func:`load_cellpose` for real work.
        """
        dev = _resolve_device(device)
        dtype = _dtype_for(precision, dev)
        net = net.to(device=dev, dtype=dtype)
        if hasattr(net, "_dtype"):
            net._dtype = dtype
        net.eval()
        return cls(net, device=dev, name=name, **settings)

    def __repr__(self) -> str:
        return f"CellposeSegmenter({self.name!r}, device={self.device}, batch_size={self.batch_size})"

    @property
    def weights_sha256(self) -> str | None:
        """SHA-256 of the weights file (computed on first use)."""
        if self._weights_sha256 is None and self.weights_path is not None:
            self._weights_sha256 = _sha256(self.weights_path)
        return self._weights_sha256

    def describe(self) -> dict:
        """Provenance record: model, weights file and checksum, device, settings."""
        return {"segmenter": "cellpose", "cellpose": _installed_cellpose_version(), "model": self.name,
                "weights": str(self.weights_path) if self.weights_path else None,
                "weights_sha256": self.weights_sha256, "device": str(self.device),
                "batch_size": self.batch_size, "nucleus_diameter_um": self.nucleus_diameter_um,
                "cell_diameter_um": self.cell_diameter_um, "flow_threshold": self.flow_threshold,
                "cellprob_threshold": self.cellprob_threshold, "working_pixel_size_um": self.working_pixel_size_um}

    # -- single images -------------------------------------------------------------------------------

    def segment(self, nuclei_image: np.ndarray, cyto_image: np.ndarray | None = None, *,
                pixel_size_um: float) -> tuple[np.ndarray, np.ndarray]:
        """``(nuclei, cells)`` label images of one site (int32, matching ids); see :meth:`segment_many`."""
        out = self.segment_many([(nuclei_image, cyto_image)], pixel_size_um=pixel_size_um, on_error="raise")
        return out[0]  # type: ignore[return-value]

    def nuclei(self, image: np.ndarray, *, pixel_size_um: float) -> np.ndarray:
        """Nucleus labels (int32) of one nuclear-stain image."""
        return self.segment_many([(image, None)], pixel_size_um=pixel_size_um, on_error="raise",
                                 cells=False)[0][0]  # type: ignore[index]

    # -- batched -------------------------------------------------------------------------------------

    def rescale_for(self, diameter_um: float, pixel_size_um: float) -> float:
        """Resize factor applied before the network (1.0 inside the size-invariant range)."""
        d_px = diameter_um / pixel_size_um
        lo, hi = SIZE_INVARIANT_RANGE_PX
        return 1.0 if lo <= d_px <= hi else 30.0 / d_px

    def segment_many(self, images: Sequence[tuple[np.ndarray, np.ndarray | None]], *,
                     pixel_size_um: float | Sequence[float], on_error: str = "record", cells: bool = True,
                     progress: bool | None = None
                     ) -> list[tuple[np.ndarray, np.ndarray] | SegmentationFailure]:
        """Segment many images, batching same-size images through the network together.

        Parameters
        ----------
        images : sequence of (nuclei_image, cyto_image or None)
            2-D arrays (any integer or float dtype) of one shape per pair.
        pixel_size_um : float or sequence of float
            µm per pixel, one for all or one per image.
        on_error : {"record", "raise"}
            ``record``: a failing image yields a :class:`SegmentationFailure` and the rest go on.
        cells : bool
            Also segment cells (False: cells are returned equal to nuclei).
        progress : bool or None
            Show a progress bar (None: only when attached to a terminal).

        Returns
        -------
        list
            Per image, ``(nuclei, cells)`` int32 label images with matching ids (cell k contains nucleus
            k; see :func:`subcell_screen.segment.pair_cells_nuclei`), or a SegmentationFailure.

        Notes
        -----
        Nuclei come from the nuclear channel alone; cells from ``[cyto, nucleus]``. Without a cytoplasm
        image, cells are nuclei expanded by 6 µm. Images of one shape and rescale factor are stacked into
        one array so that cellpose shares network batches across them; masks are built from the flows by
        ``workers`` threads while the network computes the next batch. With :attr:`working_pixel_size_um`,
        images are segmented at that pixel size and the labels returned on each image's own grid.
        """
        from tqdm.auto import tqdm

        if on_error not in ("record", "raise"):
            raise ValueError(f"on_error must be 'record' or 'raise', got {on_error!r}")
        n = len(images)
        pix = [float(pixel_size_um)] * n if np.isscalar(pixel_size_um) else [float(p) for p in pixel_size_um]
        if len(pix) != n:
            raise ValueError(f"{len(pix)} pixel sizes for {n} images")
        results: list[Any] = [None] * n
        working_images: dict[int, np.ndarray] = {}  # nuclei images at the working pixel size
        full_shape: dict[int, tuple[int, int]] = {}  # images segmented at the working pixel size
        # passes: (image index, kind, stacked input (H, W, C) float32, rescale)
        passes: dict[tuple, list[tuple[int, str, np.ndarray]]] = {}
        needed: dict[int, set[str]] = {}
        for i, pair in enumerate(images):
            try:
                nuc, cyto = pair
                nuc_f = _as_image(nuc, "nuclei image")
                if not (pix[i] > 0 and np.isfinite(pix[i])):
                    raise ValueError(f"pixel size must be a positive number, got {pix[i]}")
                cyto_f = _as_image(cyto, "cytoplasm image") if cells and cyto is not None else None
                if cyto_f is not None and cyto_f.shape != nuc_f.shape:
                    raise ValueError(f"cytoplasm image shape {cyto_f.shape} differs from the nuclei "
                                     f"image {nuc_f.shape}")
                small = working_shape(nuc_f.shape, pixel_size_um=pix[i],
                                      working_pixel_size_um=self.working_pixel_size_um)
                if small is not None:
                    full_shape[i] = nuc_f.shape
                    pix[i] = working_pixel_size(nuc_f.shape, small, pixel_size_um=pix[i])
                    nuc_f = downscale_image(nuc_f, small)
                    cyto_f = None if cyto_f is None else downscale_image(cyto_f, small)
                    working_images[i] = nuc_f
                jobs = [("nuclei", nuc_f[..., None], self.rescale_for(self.nucleus_diameter_um, pix[i]))]
                if cyto_f is not None:
                    jobs.append(("cells", np.stack([cyto_f, nuc_f], axis=-1),
                                 self.rescale_for(self.cell_diameter_um, pix[i])))
                needed[i] = {k for k, _, _ in jobs}
                for kind, arr, rsz in jobs:
                    passes.setdefault((kind, arr.shape, rsz), []).append((i, kind, arr))
            except Exception as exc:  # noqa: BLE001 - recorded per image
                if on_error == "raise":
                    raise
                results[i] = SegmentationFailure(i, f"{type(exc).__name__}: {exc}")

        partial: dict[int, dict[str, np.ndarray]] = {}
        pending: list[tuple[int, str, Future]] = []
        bar = tqdm(total=sum(len(v) for v in needed.values()), desc="cellpose", unit="pass",
                   disable=(not progress) if progress is not None else None, leave=False)
        max_pending = max(2, 2 * self.workers) * 4

        def collect(block: bool) -> None:
            keep = []
            for i, kind, fut in pending:
                if not block and not fut.done():
                    keep.append((i, kind, fut))
                    continue
                bar.update(1)
                if isinstance(results[i], SegmentationFailure):
                    continue
                try:
                    partial.setdefault(i, {})[kind] = fut.result()
                except Exception as exc:  # noqa: BLE001
                    if on_error == "raise":
                        raise
                    results[i] = SegmentationFailure(i, f"{type(exc).__name__}: {exc}")
                    continue
                if set(partial[i]) == needed[i]:
                    try:
                        done = self._finish(partial.pop(i), working_images.pop(i, images[i][0]), pix[i], cells)
                        if i in full_shape:  # labels back on the image's own grid
                            done = tuple(upscale_labels(lab, full_shape[i]) for lab in done)
                        results[i] = done
                    except Exception as exc:  # noqa: BLE001
                        if on_error == "raise":
                            raise
                        results[i] = SegmentationFailure(i, f"{type(exc).__name__}: {exc}")
            pending[:] = keep

        executor = ThreadPoolExecutor(max_workers=self.workers) if self.workers > 0 else None
        try:
            for (_kind, shape, rsz), items in passes.items():
                tiles = _tiles_per_image(shape[:2], rsz)
                per_batch = max(1, self.batch_size // tiles)
                for start in range(0, len(items), per_batch):
                    chunk = [it for it in items[start:start + per_batch]
                             if not isinstance(results[it[0]], SegmentationFailure)]
                    if not chunk:
                        continue
                    try:
                        flows = self._flows(np.stack([arr for _, _, arr in chunk]), rsz)
                    except Exception as exc:  # noqa: BLE001 - e.g. out of GPU memory: retry one by one
                        if len(chunk) == 1:
                            if on_error == "raise":
                                raise
                            results[chunk[0][0]] = SegmentationFailure(chunk[0][0], f"{type(exc).__name__}: {exc}")
                            continue
                        logger.warning("Cellpose batch of %d images failed (%s); retrying one by one",
                                       len(chunk), exc)
                        flows = None
                    for j, (i, kind_i, arr) in enumerate(chunk):
                        if flows is None:
                            try:
                                dP, cellprob = self._flows(arr[None], rsz)
                                dP, cellprob = dP[:, 0], cellprob[0]
                            except Exception as exc:  # noqa: BLE001
                                if on_error == "raise":
                                    raise
                                results[i] = SegmentationFailure(i, f"{type(exc).__name__}: {exc}")
                                continue
                        else:
                            dP, cellprob = flows[0][:, j], flows[1][j]
                        niter = int(200 / rsz) if rsz != 1.0 else 200
                        if executor is None:
                            fut: Future = Future()
                            try:
                                fut.set_result(self._masks(dP, cellprob, niter))
                            except Exception as exc:  # noqa: BLE001
                                fut.set_exception(exc)
                        else:
                            fut = executor.submit(self._masks, dP, cellprob, niter)
                        pending.append((i, kind_i, fut))
                    collect(block=False)
                    while len(pending) > max_pending:  # bound memory: wait for the oldest mask job
                        wait([pending[0][2]])
                        collect(block=False)
            collect(block=True)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            bar.close()
        return results

    # -- internals -------------------------------------------------------------------------------------

    def _flows(self, stack: np.ndarray, rescale: float) -> tuple[np.ndarray, np.ndarray]:
        """Network flows of a stack of same-size images, exactly as ``CellposeModel.eval`` computes them.

        Parameters
        ----------
        stack : ndarray, shape (N, H, W, C), float32
        rescale : float

        Returns
        -------
        dP : ndarray, shape (2, N, H, W), float32
        cellprob : ndarray, shape (N, H, W), float32
        """
        from cellpose import core, models, transforms

        params = {**models.normalize_default, "norm3D": False}
        x = transforms.normalize_img(stack.astype(np.float32, copy=True), **params)
        with self._lock:  # one network call at a time
            yf, _ = core.run_net(self.net, x, bsize=256 if self.model.backbone == "sam_vitl" else 384,
                                 augment=False, batch_size=self.batch_size, tile_overlap=0.1,
                                 rsz=rescale if rescale != 1.0 else None)
        if rescale != 1.0:
            yf = transforms.resize_image(yf, stack.shape[1], stack.shape[2])
        cellprob = yf[..., -1]
        dP = yf[..., -3:-1].transpose((3, 0, 1, 2))
        return dP, cellprob

    def _masks(self, dP: np.ndarray, cellprob: np.ndarray, niter: int) -> np.ndarray:
        """Masks from flows (cellpose's dynamics), int32."""
        from cellpose import dynamics

        masks = dynamics.resize_and_compute_masks(
            dP, cellprob, niter=niter, cellprob_threshold=self.cellprob_threshold,
            flow_threshold=self.flow_threshold, resize=None, min_size=self.min_size_px,
            max_size_fraction=self.max_size_fraction, device=self.device)
        return np.asarray(masks).astype(np.int32)

    def _finish(self, parts: dict[str, np.ndarray], nuclei_image: np.ndarray, pixel_size_um: float,
                cells: bool) -> tuple[np.ndarray, np.ndarray]:
        from ._api import pair_cells_nuclei
        from ._classical import ClassicalParams, _renumber, classical_cells

        if "cells" in parts:
            return pair_cells_nuclei(parts["nuclei"], parts["cells"])
        nuclei = _renumber(parts["nuclei"])
        if not cells:
            return nuclei, nuclei.copy()
        # no cytoplasm channel: grow nuclei by a fixed distance, as the classical segmenter does
        grown = classical_cells(nuclei, None, pixel_size_um=pixel_size_um,
                                params=ClassicalParams(nucleus_diameter_um=self.nucleus_diameter_um),
                                nuclei_image=nuclei_image)
        return nuclei, grown


def _as_image(image: Any, name: str) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{name} must have an integer or float dtype, got {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


def _tiles_per_image(shape: tuple[int, int], rescale: float, bsize: int = 256, overlap: float = 0.1) -> int:
    """Number of network tiles cellpose cuts from one image (as ``cellpose.core.run_net`` does)."""
    from cellpose import transforms

    ly, lx = (int(shape[0] * rescale), int(shape[1] * rescale)) if rescale != 1.0 else shape
    y1, y2, x1, x2 = transforms.get_pad_yx(ly, lx, min_size=(bsize, bsize))
    n = 1
    for L in (ly + y1 + y2, lx + x1 + x2):
        n *= 1 if L <= bsize else int(np.ceil((1.0 + 2 * overlap) * L / bsize))
    return n
