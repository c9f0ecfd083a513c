"""Cellpose path without downloaded weights: weight resolution and its errors, strict loading from a local
file, batched inference that equals cellpose's own ``CellposeModel.eval``, per-site failures, pairing of
cells with nuclei, and the store-facing site API.

The network is built in the test: ``BlobNet`` is a Cellpose-4-compatible network (``W2`` readout, ``(y,
style)`` output) whose weights are set by hand: flows are the normalised gradient of the Gaussian-blurred
first channel and the cell probability a threshold of its lightly blurred intensity, which segments bright
blobs (nuclei) correctly. Its state dict is saved to a file and loaded back through ``load_cellpose``, so
the code path is the one real Cellpose-SAM weights take. A slow test trains a small cpsam-style network
on simulated nuclei instead.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cellpose = pytest.importorskip("cellpose")
torch = pytest.importorskip("torch")

from subcell_screen.segment import (  # noqa: E402
    CellposeSegmenter,
    CellposeWeightsError,
    SegmentationFailure,
    cellpose_models_dir,
    load_cellpose,
    match_labels,
    resolve_cellpose_weights,
    segment_cells,
    segment_nuclei,
    segment_site,
)

# -- a hand-built Cellpose 4 network ----------------------------------------------------------------------

def _gauss(sigma: float, radius: int):
    r = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    dg = r / sigma ** 2 * g  # torch convolutions are cross-correlations: this gives +d/dr of the blur
    return np.outer(g, g), np.outer(dg, g), np.outer(g, dg)


def blobnet_class():
    import torch.nn as nn
    import torch.nn.functional as F
    from cellpose.vit import BaseModel

    class BlobNet(BaseModel):
        def __init__(self, sigma: float = 4.0, radius: int = 12, threshold: float = 0.3):
            super().__init__(dtype=torch.float32)
            self.backbone = "sam_vitl"  # tiles of 256 px, like Cellpose-SAM
            self.filters = nn.Conv2d(1, 3, 2 * radius + 1, padding=radius)
            self.out = nn.Conv2d(3, 3, 1)
            self.W2 = nn.Parameter(torch.eye(3).reshape(3, 3, 1, 1), requires_grad=False)
            _, gy, gx = _gauss(sigma, radius)
            g2, _, _ = _gauss(1.0, radius)
            with torch.no_grad():
                self.filters.weight.copy_(torch.tensor(np.stack([gy, gx, g2])[:, None], dtype=torch.float32))
                self.filters.bias.zero_()
                self.out.weight.zero_()
                self.out.weight[0, 0] = self.out.weight[1, 1] = 1.0
                self.out.weight[2, 2] = 20.0
                self.out.bias.copy_(torch.tensor([0.0, 0.0, -20.0 * threshold]))

        def forward(self, x):
            f = self.filters(x[:, :1])
            g = f[:, :2]
            f = torch.cat([5 * g / torch.sqrt((g ** 2).sum(1, keepdim=True) + 1e-4), f[:, 2:]], 1)
            return F.conv_transpose2d(self.out(f), self.W2, stride=1), torch.zeros((x.shape[0], 256), device=x.device)

    return BlobNet


def synth(rng, size=(160, 200), n=10, rmin=7.0, rmax=11.0, cyto=False):
    """Non-overlapping bright ellipses on noise; with ``cyto`` a dimmer, larger halo around each."""
    from scipy import ndimage as ndi

    yy, xx = np.mgrid[: size[0], : size[1]]
    lab = np.zeros(size, np.int32)
    img = np.zeros(size, np.float32)
    halo = np.zeros(size, np.float32)
    k = 0
    for _ in range(n * 20):
        if k == n:
            break
        cy, cx = rng.uniform(15, size[0] - 15), rng.uniform(15, size[1] - 15)
        a, b = rng.uniform(rmin, rmax, 2)
        th = rng.uniform(0, np.pi)
        u = ((yy - cy) * np.cos(th) + (xx - cx) * np.sin(th)) / a
        v = (-(yy - cy) * np.sin(th) + (xx - cx) * np.cos(th)) / b
        m = u * u + v * v <= 1
        far = (yy - cy) ** 2 + (xx - cx) ** 2 <= (2.2 * max(a, b)) ** 2
        if (lab[far] > 0).any():
            continue
        k += 1
        lab[m] = k
        img[m] = rng.uniform(0.5, 1.0)
        halo[(u * u + v * v <= 2.5)] = 0.6
    img = ndi.gaussian_filter(img, 1.0) + 0.05 + rng.normal(0, 0.02, size)
    halo = ndi.gaussian_filter(halo, 1.0) + 0.05 + rng.normal(0, 0.02, size)
    out = np.clip(img * 1000, 0, None).astype(np.uint16)
    return (out, np.clip(halo * 1000, 0, None).astype(np.uint16), lab) if cyto else (out, lab)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    net = blobnet_class()()
    path = tmp_path_factory.mktemp("weights") / "blobnet.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def segmenter(weights_file) -> CellposeSegmenter:
    return load_cellpose(weights_file, device="cpu", architecture=blobnet_class(), nucleus_diameter_um=10.0,
                         cell_diameter_um=25.0, workers=2, batch_size=8)


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- weights: resolution, checks, errors -------------------------------------------------------------------

def test_missing_cpsam_error_names_file_source_and_alternative(monkeypatch, tmp_path):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "cp"))
    with pytest.raises(CellposeWeightsError) as err:
        resolve_cellpose_weights("cpsam")
    msg = str(err.value)
    assert str(tmp_path / "cp" / "cpsam") in msg
    assert f"CELLPOSE_LOCAL_MODELS_PATH={tmp_path / 'cp'}" in msg
    assert "https://huggingface.co/mouseland/cellpose-sam/resolve/main/cpsam" in msg
    assert "python -c" in msg and "cache_model_path('cpsam')" in msg
    assert '[segmentation].method = "classical"' in msg
    assert not (tmp_path / "cp").exists()  # nothing created, nothing downloaded
    monkeypatch.delenv("CELLPOSE_LOCAL_MODELS_PATH")
    assert cellpose_models_dir() == Path.home() / ".cellpose" / "models"


def test_missing_weights_fail_before_importing_cellpose(tmp_path):
    code = ("import sys; from subcell_screen.segment import load_cellpose, CellposeWeightsError\n"
            "try:\n    load_cellpose('cpsam')\nexcept CellposeWeightsError as e:\n"
            "    print('cellpose' in sys.modules, 'torch' in sys.modules, str(e).splitlines()[0])\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CELLPOSE_LOCAL_MODELS_PATH": str(tmp_path / "m")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.startswith("False False Cellpose weights 'cpsam' not found"), out.stdout + out.stderr


def test_unknown_or_cellpose3_names_and_bad_paths(tmp_path):
    with pytest.raises(CellposeWeightsError, match="unknown Cellpose model 'cpsm'"):
        load_cellpose("cpsm")  # a typo must not fall back to (or download) the default model
    with pytest.raises(CellposeWeightsError, match="Cellpose 3 model"):
        load_cellpose("cyto3")
    with pytest.raises(CellposeWeightsError, match="does not exist"):
        load_cellpose(tmp_path / "nope.pth")
    with pytest.raises(CellposeWeightsError, match="is a folder"):
        load_cellpose(tmp_path)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CellposeWeightsError, match="empty"):
        load_cellpose(tmp_path / "empty.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(CellposeWeightsError, match="cannot be read"):
        load_cellpose(tmp_path / "junk.pth", device="cpu")


def test_sha256_checked(weights_file):
    with pytest.raises(CellposeWeightsError, match="SHA-256"):
        load_cellpose(weights_file, weights_sha256="0" * 64, architecture=blobnet_class(), device="cpu")
    seg = load_cellpose(weights_file, weights_sha256=sha256(weights_file).upper(), architecture=blobnet_class(),
                        device="cpu")
    assert seg.weights_sha256.lower() == sha256(weights_file)
    assert seg.describe()["weights"] == str(weights_file.resolve())


def test_loading_is_strict(tmp_path, weights_file):
    BlobNet = blobnet_class()
    state = torch.load(weights_file, weights_only=True)
    partial = {k: v for k, v in state.items() if not k.startswith("filters")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CellposeWeightsError, match="unset"):
        load_cellpose(tmp_path / "partial.pth", architecture=BlobNet, device="cpu")
    torch.save({k: v for k, v in state.items() if k != "W2"}, tmp_path / "cp3.pth")
    with pytest.raises(CellposeWeightsError, match="not a Cellpose 4 model"):
        load_cellpose(tmp_path / "cp3.pth", architecture=BlobNet, device="cpu")
    wrong = dict(state, **{"filters.weight": torch.zeros(3, 1, 5, 5)})
    torch.save(wrong, tmp_path / "shape.pth")
    with pytest.raises(CellposeWeightsError, match="do not fit"):
        load_cellpose(tmp_path / "shape.pth", architecture=BlobNet, device="cpu")


def test_weights_from_cellpose_cache_folder(monkeypatch, tmp_path, weights_file):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "my_nuclei").write_bytes(weights_file.read_bytes())
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(folder))
    assert resolve_cellpose_weights("my_nuclei") == (folder / "my_nuclei").resolve()
    seg = load_cellpose("my_nuclei", architecture=blobnet_class(), device="cpu")
    img, truth = synth(np.random.default_rng(3), size=(96, 112), n=4)
    assert match_labels(seg.nuclei(img, pixel_size_um=0.5), truth).f1 >= 0.9


# -- inference -----------------------------------------------------------------------------------------

def reference_eval(seg: CellposeSegmenter, img: np.ndarray, channels: list[np.ndarray] | None = None,
                   diameter=None) -> np.ndarray:
    x = np.stack(channels, -1) if channels else img
    return seg.model.eval(x, channel_axis=-1 if channels else None, normalize={"normalize": True},
                          diameter=diameter, flow_threshold=seg.flow_threshold,
                          cellprob_threshold=seg.cellprob_threshold, batch_size=seg.batch_size)[0]


def test_segments_blobs_against_ground_truth(segmenter):
    rng = np.random.default_rng(0)
    for _ in range(1):
        img, truth = synth(rng)
        labels = segment_nuclei(img, pixel_size_um=0.5, method="cellpose", model=segmenter)
        assert labels.dtype == np.int32 and labels.shape == img.shape
        r = match_labels(labels, truth)
        assert r.f1 >= 0.9 and r.mean_matched_iou >= 0.8, r


def test_batched_inference_equals_cellpose_eval_and_keeps_its_defaults(segmenter):
    from cellpose import models

    defaults = dict(models.normalize_default)
    rng = np.random.default_rng(1)
    images = [synth(rng, size=(128, 144), n=6)[0] for _ in range(2)] + [synth(rng, size=(112, 128), n=5)[0]]
    out = segmenter.segment_many([(im, None) for im in images], pixel_size_um=0.5, cells=False)
    for im, (nuclei, cells) in zip(images, out):
        ref = reference_eval(segmenter, im)
        assert ref.max() >= 5
        np.testing.assert_array_equal(nuclei > 0, ref > 0)
        assert match_labels(nuclei, ref, iou_threshold=0.99).f1 == 1.0  # same objects, renumbered
        np.testing.assert_array_equal(cells, nuclei)
    assert models.normalize_default == defaults  # never a bool normalize= (it mutates cellpose's globals)


def test_rescaled_inference_equals_cellpose_eval_with_diameter(segmenter):
    rng = np.random.default_rng(2)
    img, truth = synth(rng, size=(72, 80), n=6, rmin=2.5, rmax=3.5)
    # nuclei 10 µm at 2 µm/px = 5 px: below the size-invariant range -> upscaled to 30 px
    px = 2.0
    assert segmenter.rescale_for(10.0, px) == pytest.approx(30 / 5)
    got = segmenter.segment_many([(img, None)], pixel_size_um=px, cells=False)[0][0]
    ref = reference_eval(segmenter, img, diameter=10.0 / px)
    assert ref.max() > 0
    assert match_labels(got, ref, iou_threshold=0.99).f1 == 1.0


def test_cells_from_cytoplasm_pair_with_nuclei(segmenter):
    rng = np.random.default_rng(4)
    nuc, cyto, truth = synth(rng, size=(128, 160), n=6, cyto=True)
    nuclei, cells = segment_cells(nuc, cyto, pixel_size_um=0.5, method="cellpose", model=segmenter)
    ids = np.unique(cells)[1:]
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    np.testing.assert_array_equal(np.unique(nuclei)[1:], ids)
    assert (cells[nuclei > 0] == nuclei[nuclei > 0]).all()
    assert match_labels(nuclei, truth).f1 >= 0.9
    # the cytoplasm pass sees the halos (2.5x the nucleus area): cells are larger than their nuclei
    ratio = np.bincount(cells.ravel())[1:] / np.bincount(nuclei.ravel())[1:]
    assert (ratio > 1.8).mean() >= 0.6, ratio
    # cells follow cellpose's own cell masks of [cyto, nucleus]
    ref_cells = reference_eval(segmenter, None, [cyto.astype(np.float32), nuc.astype(np.float32)])
    r = match_labels(cells, ref_cells, iou_threshold=0.9)
    assert r.tp == r.n_true >= 4  # every cell of cellpose's [cyto, nucleus] pass; orphan nuclei add cells


def test_per_image_failures_are_recorded_and_the_rest_continue(segmenter):
    rng = np.random.default_rng(5)
    good, truth = synth(rng, size=(96, 112), n=4)
    nan = good.astype(np.float32)
    nan[3, 3] = np.nan
    items = [(good, None), (nan, None), (good[None], None), (good, good[:10]), (good, None)]
    out = segmenter.segment_many(items, pixel_size_um=0.5)
    kinds = [type(o).__name__ for o in out]
    assert kinds == ["tuple", "SegmentationFailure", "SegmentationFailure", "SegmentationFailure", "tuple"]
    assert "NaN" in out[1].error and "2-D" in out[2].error and "differs" in out[3].error
    assert out[1].index == 1
    np.testing.assert_array_equal(out[0][0], out[4][0])
    with pytest.raises(ValueError, match="NaN"):
        segmenter.segment_many(items, pixel_size_um=0.5, on_error="raise")


def test_network_failure_of_a_batch_retries_image_by_image(segmenter, monkeypatch):
    rng = np.random.default_rng(6)
    images = [synth(rng, size=(96, 112), n=4)[0] for _ in range(3)]
    real = segmenter._flows

    def flaky(stack, rescale):
        if len(stack) > 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        if stack[0, 0, 0, 0] == 12345:
            raise RuntimeError("bad tile")
        return real(stack, rescale)

    monkeypatch.setattr(segmenter, "_flows", flaky)
    images[1] = images[1].copy()
    images[1][0, 0] = 12345
    out = segmenter.segment_many([(im, None) for im in images], pixel_size_um=0.5, cells=False)
    assert isinstance(out[1], SegmentationFailure) and "bad tile" in out[1].error
    assert out[0][0].max() > 0 and out[2][0].max() > 0


def test_segment_site_with_cellpose(segmenter):
    from subcell_screen.channels import preset
    from subcell_screen.io import SiteImage, SiteRecord

    nuc, cyto, truth = synth(np.random.default_rng(7), size=(128, 160), n=6, cyto=True)
    names = ("microtubules", "er", "nucleus", "protein")
    rec = SiteRecord(plate="HPA1", well="C05", site=2, channels={n: "" for n in names}, pixel_size_um=0.5,
                     reader="test")
    site = SiteImage(data=np.stack([cyto, cyto, nuc, cyto]), channel_names=names, pixel_size_um=0.5, record=rec)
    seg = segment_site(site, channel_map=preset("hpa"), method="cellpose", model=segmenter)
    assert seg.method == f"cellpose:{segmenter.name}"
    assert seg.key == ("HPA1", "C05", 2)
    assert seg.n_cells == len(np.unique(seg.cells)) - 1 >= 5
    assert match_labels(seg.nuclei, truth).f1 >= 0.9


def test_segment_sites_with_cellpose_chunks_and_failures(segmenter):
    from subcell_screen.channels import custom_channel_map
    from subcell_screen.io import SiteImage, SiteRecord
    from subcell_screen.segment import segment_sites

    cmap = custom_channel_map(channels=["DNA"], model_channels="bg", slots={"b": "DNA", "g": "DNA"},
                              nucleus="DNA")
    rng = np.random.default_rng(10)

    def site(i, img, px=0.5):
        rec = SiteRecord(plate="P", well="A01", site=i, channels={"DNA": ""}, pixel_size_um=px, reader="t")
        return SiteImage(data=img[None], channel_names=("DNA",), pixel_size_um=px, record=rec)

    imgs = [synth(rng, size=(96, 112), n=4) for _ in range(3)]
    sites = [site(1, imgs[0][0]), site(2, imgs[1][0], px=None), site(3, imgs[2][0])]
    out = list(segment_sites(iter(sites), channel_map=cmap, method="cellpose", model=segmenter, chunk_size=2))
    assert [type(o).__name__ for o in out] == ["Segmentation", "SegmentationFailure", "Segmentation"]
    assert out[1].key == ("P", "A01", 2) and "pixel size" in out[1].error
    assert [o.site for o in (out[0], out[2])] == [1, 3]
    for o, (_, truth) in zip((out[0], out[2]), (imgs[0], imgs[2])):
        assert match_labels(o.nuclei, truth).f1 >= 0.9 and o.method.startswith("cellpose:")


def test_cells_without_cytoplasm_are_grown_nuclei(segmenter):
    nuc, truth = synth(np.random.default_rng(8), size=(96, 112), n=4)
    nuclei, cells = segmenter.segment(nuc, None, pixel_size_um=0.5)
    assert (cells[nuclei > 0] == nuclei[nuclei > 0]).all()
    assert (np.bincount(cells.ravel())[1:] > np.bincount(nuclei.ravel())[1:]).all()


@pytest.mark.gpu
def test_gpu_matches_cpu(weights_file):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = load_cellpose(weights_file, device="cpu", architecture=blobnet_class())
    gpu = load_cellpose(weights_file, device="cuda", precision="fp32", architecture=blobnet_class())
    img, truth = synth(np.random.default_rng(9), size=(600, 600), n=60)
    a = cpu.nuclei(img, pixel_size_um=0.5)
    b = gpu.nuclei(img, pixel_size_um=0.5)
    assert match_labels(b, a, iou_threshold=0.9).f1 >= 0.98
    assert match_labels(b, truth).f1 >= 0.9


# -- a briefly trained cpsam-style network (slow) -----------------------------------------------------------

def tiny_cpsam_class():
    import torch.nn as nn
    import torch.nn.functional as F
    from cellpose.vit import BaseModel

    class TinyCPSAM(BaseModel):
        """Patch embedding (stride ps), a small dilated-conv token mixer, 1x1 readout, W2 unpatchify."""

        def __init__(self, ps: int = 4, d: int = 32, nout: int = 3):
            super().__init__(dtype=torch.float32)
            self.backbone, self.ps = "sam_vitl", ps
            self.patch = nn.Conv2d(3, d, ps, stride=ps)
            self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(d, d, 3, padding=r, dilation=r), nn.GELU())
                                         for r in (1, 2, 4, 8, 1)])
            self.out = nn.Conv2d(d, nout * ps * ps, 1)
            self.W2 = nn.Parameter(torch.eye(nout * ps * ps).reshape(nout * ps * ps, nout, ps, ps),
                                   requires_grad=False)

        def forward(self, x):
            x = F.conv2d(x, self.patch.weight[:, : x.shape[1]], self.patch.bias, stride=self.ps)
            for b in self.blocks:
                x = x + b(x)
            return F.conv_transpose2d(self.out(x), self.W2, stride=self.ps), torch.zeros((x.shape[0], 256), device=x.device)

    return TinyCPSAM


@pytest.mark.slow
def test_briefly_trained_network_through_the_real_path(tmp_path):
    import torch.nn.functional as F
    from cellpose import dynamics, transforms

    rng = np.random.default_rng(0)
    train = [synth(rng, size=(128, 128), n=8) for _ in range(32)]
    flows = dynamics.labels_to_flows([lab for _, lab in train], device=torch.device("cpu"))
    x = torch.from_numpy(np.stack([transforms.normalize99(im.astype(np.float32)) for im, _ in train])[:, None])
    y = torch.from_numpy(np.stack(flows).astype(np.float32))  # (n, 4, H, W): labels, prob, dy, dx
    Net = tiny_cpsam_class()
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(250):
        idx = torch.from_numpy(rng.choice(len(x), 8))
        out, _ = net(x[idx])
        loss = (F.mse_loss(out[:, :2], 5 * y[idx, 2:]) / 2
                + F.binary_cross_entropy_with_logits(out[:, 2], y[idx, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), tmp_path / "tiny_cpsam.pth")
    seg = load_cellpose(tmp_path / "tiny_cpsam.pth", architecture=Net, device="cpu")
    test = [synth(rng, size=(256, 256), n=20) for _ in range(3)]
    out = seg.segment_many([(im, None) for im, _ in test], pixel_size_um=0.5, cells=False)
    f1 = [match_labels(o[0], lab).f1 for o, (_, lab) in zip(out, test)]
    assert np.mean(f1) >= 0.8, f1
