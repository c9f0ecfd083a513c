"""SubCell weights: cache resolution, download with resume against a local HTTP server, checksums, offline mode."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from subcell_screen.cli import main
from subcell_screen.embed import (
    ChecksumError,
    DownloadError,
    WeightsNotFoundError,
    ensure_model_files,
    get_model_card,
    load_model,
    resolve_cache_dir,
)
from subcell_screen.embed.registry import BASE_URL
from subcell_screen.embed.testing import make_tiny_checkpoint
from subcell_screen.embed.weights import fetch_file, recorded_hashes, verify_model_files


class _Server:
    """Serves bytes at paths, with HTTP Range support and optional dropped connections."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}   # path -> bytes sent before closing, on the next full GET
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = outer.drop_after.pop(self.path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def serve_model(self, card, files: dict[str, bytes]) -> None:
        for fname, data in files.items():
            self.files["/models/" + card.url_for(fname)[len(BASE_URL):]] = data

    def path_of(self, card, fname: str) -> str:
        return "/models/" + card.url_for(fname)[len(BASE_URL):]


@pytest.fixture
def server():
    s = _Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def tiny_bytes(tmp_path_factory):
    """Bytes of a tiny rbg-ViT checkpoint (encoder, classifier) + its sidecar."""
    d = tmp_path_factory.mktemp("src")
    tc = make_tiny_checkpoint(d, "rbg/ViT-ProtS-Pool", width=32, depth=1, heads=2)
    return tc, {p.name: p.read_bytes() for p in (tc.encoder, *tc.classifiers)}


def test_cache_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBCELL_SCREEN_MODELS", str(tmp_path / "env"))
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("SUBCELL_SCREEN_MODELS")
    import platformdirs

    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda *a, **k: str(tmp_path / "user"))
    assert resolve_cache_dir() == tmp_path / "user" / "models"


def test_download_resume_verify_and_load(server, tiny_bytes, tmp_path):
    tc, files = tiny_bytes
    card = get_model_card("rbg/ViT-ProtS-Pool")
    server.serve_model(card, files)
    enc_path = server.path_of(card, card.encoder_file)
    server.drop_after[enc_path] = 1000          # first transfer dies after 1000 bytes
    cache = tmp_path / "cache"
    mf = ensure_model_files(card, cache_dir=cache, offline=False, base_url=server.url, progress=False)
    assert mf.encoder == cache / card.encoder_file and mf.encoder.read_bytes() == files[card.encoder_file]
    assert mf.classifiers[0].read_bytes() == files[card.classifier_files[0]]
    # the retry resumed at byte 1000 with a Range request
    assert (enc_path, "bytes=1000-") in server.requests
    rec = recorded_hashes(cache)
    assert rec[card.encoder_file]["sha256"] == hashlib.sha256(files[card.encoder_file]).hexdigest()
    assert rec[card.encoder_file]["source"] == "download" and mf.verified[card.encoder_file] == "new"
    assert not list(cache.glob(".*.part"))
    # second call: no network, verified against the recorded hash
    n = len(server.requests)
    mf2 = ensure_model_files(card, cache_dir=cache, offline=False, base_url=server.url)
    assert len(server.requests) == n and mf2.verified[card.encoder_file] == "recorded"
    # the downloaded tiny model loads (architecture sidecar copied by hand, as a user would)
    (cache / tc.config.name).write_text(tc.config.read_text())
    model = load_model(card.name, cache_dir=cache, offline=True, device="cpu")
    assert model.embedding_dim == 64 and model.sha256[card.encoder_file] == rec[card.encoder_file]["sha256"]


def test_resume_from_partial_file_of_an_earlier_process(server, tiny_bytes, tmp_path):
    _, files = tiny_bytes
    card = get_model_card("rbg/ViT-ProtS-Pool")
    server.serve_model(card, files)
    cache = tmp_path / "cache"
    cache.mkdir()
    data = files[card.encoder_file]
    (cache / f".{card.encoder_file}.part").write_bytes(data[:777])
    path, digest, how = fetch_file(card.url_for(card.encoder_file, base_url=server.url), card.encoder_file,
                                   cache_dir=cache, offline=False)
    assert path.read_bytes() == data and how == "new"
    assert server.requests == [(server.path_of(card, card.encoder_file), "bytes=777-")]


def test_checksum_mismatch_with_card_hash_is_refused(server, tiny_bytes, tmp_path):
    _, files = tiny_bytes
    card = get_model_card("ybg/MAE-CellS-ProtS-Pool")   # the one model with a published SHA-256
    server.files[server.path_of(card, card.encoder_file)] = b"not the published weights"
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match=r"ed8c22b42e1b0665.*refusing"):
        ensure_model_files(card, cache_dir=cache, offline=False, base_url=server.url, classifiers=False)
    assert not (cache / card.encoder_file).exists() and not list(cache.glob(".*.part"))
    # a cached file that mismatches the card hash is refused too
    (cache / card.encoder_file).write_bytes(b"corrupt")
    with pytest.raises(ChecksumError, match="does not match the card hash"):
        ensure_model_files(card, cache_dir=cache, offline=True, classifiers=False)


def test_recorded_hash_protects_later_downloads_and_cached_files(server, tiny_bytes, tmp_path):
    _, files = tiny_bytes
    card = get_model_card("rbg/ViT-ProtS-Pool")
    server.serve_model(card, files)
    cache = tmp_path / "cache"
    ensure_model_files(card, cache_dir=cache, offline=False, base_url=server.url)
    # the server now serves different bytes: a forced re-download is refused and the good file kept
    server.files[server.path_of(card, card.encoder_file)] = b"changed upstream"
    with pytest.raises(ChecksumError, match="recorded hash"):
        ensure_model_files(card, cache_dir=cache, offline=False, base_url=server.url, force=True)
    assert (cache / card.encoder_file).read_bytes() == files[card.encoder_file]
    # a cached file altered on disk is refused on the next load
    data = bytearray(files[card.encoder_file])
    data[-1] ^= 0xFF
    (cache / card.encoder_file).write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=card.encoder_file):
        ensure_model_files(card, cache_dir=cache, offline=True)
    statuses = {s.filename: s.status for s in verify_model_files(card, cache_dir=cache)}
    assert statuses == {card.encoder_file: "mismatch", card.classifier_files[0]: "ok"}


def test_offline_missing_file_error_names_file_place_and_remedy(server, tmp_path):
    card = get_model_card("rybg/MAE-CellS-ProtS-Pool")
    cache = tmp_path / "nowhere"
    with pytest.raises(WeightsNotFoundError) as err:
        load_model(card.name, cache_dir=cache, device="cpu")   # offline via $SUBCELL_SCREEN_OFFLINE (conftest)
    msg = str(err.value)
    assert card.encoder_file in msg and str(cache) in msg
    assert "subcell-screen models download rybg/MAE-CellS-ProtS-Pool" in msg and card.encoder_url in msg
    assert server.requests == []


def test_unknown_hash_file_in_cache_is_used_and_http_errors_surface(server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "x.pth").write_bytes(b"hand-copied")
    path, digest, how = fetch_file("http://127.0.0.1:9/never", "x.pth", cache_dir=cache, offline=False)
    assert how == "unverified" and digest == hashlib.sha256(b"hand-copied").hexdigest()
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_file(server.url + "missing.pth", "missing.pth", cache_dir=cache, offline=False)


def test_models_cli_list_download_verify(server, tiny_bytes, tmp_path, capsys):
    _, files = tiny_bytes
    card = get_model_card("rbg/ViT-ProtS-Pool")
    server.serve_model(card, files)
    cache = tmp_path / "cache"
    assert main(["models", "list", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.count("/MAE-CellS-ProtS-Pool") == 4 and out.count("/ViT-ProtS-Pool") == 4 and "not cached" in out
    assert main(["models", "download", "rbg/vit", "--cache-dir", str(cache), "--mirror", server.url]) == 0
    out = capsys.readouterr().out
    assert card.encoder_file in out and out.count("(new; UNVERIFIED: no published SHA-256)") == 2
    assert main(["models", "verify", "rbg/ViT-ProtS-Pool", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.count("OK") == 2 and out.count("origin is unverified") == 2
    (cache / card.classifier_files[0]).write_bytes(b"bad")
    assert main(["models", "verify", "rbg/ViT-ProtS-Pool", "--cache-dir", str(cache)]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert main(["models", "download", "nope/x", "--cache-dir", str(cache)]) == 2
    assert "unknown SubCell model 'nope/x'" in capsys.readouterr().err
    # record a hand-copied file's hash (trust on first use)
    other = get_model_card("bg/MAE-CellS-ProtS-Pool")
    (cache / other.encoder_file).write_bytes(b"copied")
    assert main(["models", "verify", "bg/MAE", "--cache-dir", str(cache), "--record"]) == 1  # classifier missing
    rec = json.loads((cache / "hashes.json").read_text())
    assert rec[other.encoder_file]["source"] == "manual"


# -- issue 17 item 1: a weights folder never runs code; files without a published hash are marked ------------

class _Payload:
    """Pickles to a call that writes ``marker`` when unpickled (what a malicious checkpoint does)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _plant_payload(cache, card, marker, *, source="download") -> None:
    """A pickle payload as ``card``'s encoder, trusted by a matching ``hashes.json`` entry (as a first download
    of a file without a published hash would record it)."""
    import torch

    from subcell_screen.embed.weights import _update_record, sha256_file

    cache.mkdir(parents=True, exist_ok=True)
    path = cache / card.encoder_file
    torch.save({"encoder.embeddings.cls_token": _Payload(marker)}, path)
    _update_record(cache, card.encoder_file, sha256=sha256_file(path), size=path.stat().st_size, source=source)


@pytest.mark.parametrize("source", ["download", "manual"])
def test_pickle_payload_with_matching_recorded_hash_never_runs(tmp_path, source):
    card = get_model_card("rbg/ViT-ProtS-Pool")
    cache, marker = tmp_path / "cache", tmp_path / "pwned.txt"
    _plant_payload(cache, card, marker, source=source)
    from subcell_screen.embed import CheckpointError

    with pytest.raises(CheckpointError, match=card.encoder_file) as err:
        load_model(card.name, cache_dir=cache, offline=True, device="cpu", classifiers=False)
    assert not marker.exists(), "unpickling the weights file ran code"
    assert "weights_only" in str(err.value) or "tensors" in str(err.value)


def test_load_checkpoint_file_never_unpickles_objects(tmp_path):
    import torch

    from subcell_screen.embed import CheckpointError
    from subcell_screen.embed.model import load_checkpoint_file

    marker = tmp_path / "pwned.txt"
    path = tmp_path / "w.pth"
    torch.save({"w": _Payload(marker)}, path)
    for trusted in (False, True):
        with pytest.raises(CheckpointError, match="w.pth"):
            load_checkpoint_file(path, trusted=trusted)
    assert not marker.exists()
    torch.save({"w": torch.ones(2)}, path)  # a plain state dict loads
    assert torch.equal(load_checkpoint_file(path)["w"], torch.ones(2))


def test_files_without_published_hash_are_marked_unverified(server, tiny_bytes, tmp_path, caplog):
    tc, files = tiny_bytes
    card = get_model_card("rbg/ViT-ProtS-Pool")   # no published SHA-256
    server.serve_model(card, files)
    cache = tmp_path / "cache"
    ensure_model_files(card, cache_dir=cache, offline=False, base_url=server.url, progress=False)
    (cache / tc.config.name).write_text(tc.config.read_text())
    with caplog.at_level("WARNING", logger="subcell_screen.embed.weights"):
        mf = ensure_model_files(card, cache_dir=cache, offline=True)   # second use: a recorded hash only
    assert mf.verified[card.encoder_file] == "recorded"
    assert mf.unverified == (card.encoder_file, card.classifier_files[0])
    prov = mf.provenance()
    assert prov["model"] == card.name and prov["verified"] is False
    assert prov["unverified"] == [card.encoder_file, card.classifier_files[0]]
    assert prov["files"][card.encoder_file] == {
        "sha256": hashlib.sha256(files[card.encoder_file]).hexdigest(), "check": "recorded", "verified": False}
    assert any("no published SHA-256" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    json.dumps(prov)
    model = load_model(card.name, cache_dir=cache, offline=True, device="cpu")
    assert model.files.provenance() == prov


def test_card_hash_is_the_only_verified_check(tmp_path):
    from subcell_screen.embed.weights import ModelFiles

    card = get_model_card("ybg/MAE-CellS-ProtS-Pool")
    mf = ModelFiles(card=card, encoder=tmp_path / card.encoder_file, classifiers=(), sha256={card.encoder_file: "a"},
                    verified={card.encoder_file: "card"})
    assert mf.unverified == () and mf.provenance()["verified"] is True
    assert mf.provenance()["files"][card.encoder_file]["verified"] is True
