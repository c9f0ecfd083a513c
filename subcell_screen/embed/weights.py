"""SubCell weight files: cache folder, resumable download, SHA-256 verification, offline mode.

Cache folder (resolved at call time): the ``cache_dir`` argument, else ``$SUBCELL_SCREEN_MODELS``, else
``<user cache dir>/subcell_screen/models`` (platformdirs). Files keep their public names, flat in that folder
(``all_channels_MAE-CellS-ProtS-Pool.pth``, ``all_channels_MAE_MLP_classifier_seed_0.pth``, ...).

Integrity: a file's expected SHA-256 is the model card's (where published) or, failing that, the one recorded
in ``<cache>/hashes.json`` when this code first downloaded it. A file that mismatches either is refused. A file
with no known hash that is already in the cache (e.g. copied there by hand) is used.

Trust: only a match with a *published* hash (the model card's) counts as verified. A recorded hash (trust on
first download, or ``models verify --record``) only proves the file has not changed since; it lives in the same
folder as the file and proves nothing about its origin. Such files are reported as unverified
(:attr:`ModelFiles.unverified`, ``ModelFiles.provenance()``, a warning at load) and, like every weight file,
are read as plain tensors only: :func:`subcell_screen.embed.model.load_checkpoint_file` uses
``torch.load(weights_only=True)`` and never unpickles arbitrary objects, whatever the hash says.

Downloads stream to ``<cache>/.<name>.part``, resume with an HTTP ``Range`` request after a dropped connection
(or in a later process), are verified, then renamed into place; nothing is downloaded at import time.
Offline mode (argument, or ``SUBCELL_SCREEN_OFFLINE=1``) never touches the network; a missing file then
raises :class:`~subcell_screen.embed.WeightsNotFoundError` naming the file, where it was looked for and how to
get it. ``SUBCELL_SCREEN_MODELS_URL`` points downloads at a mirror with the bucket's layout.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._errors import ChecksumError, DownloadError, WeightsNotFoundError
from .registry import ModelCard, get_model_card

__all__ = [
    "ENV_CACHE",
    "ENV_OFFLINE",
    "ENV_MIRROR",
    "HASHES_FILE",
    "ModelFiles",
    "FileStatus",
    "resolve_cache_dir",
    "is_offline",
    "sha256_file",
    "recorded_hashes",
    "fetch_file",
    "ensure_model_files",
    "verify_model_files",
]

logger = logging.getLogger(__name__)

ENV_CACHE = "SUBCELL_SCREEN_MODELS"
ENV_OFFLINE = "SUBCELL_SCREEN_OFFLINE"
ENV_MIRROR = "SUBCELL_SCREEN_MODELS_URL"
HASHES_FILE = "hashes.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelFiles:
    """Local weight files of one model.

    Attributes
    ----------
    card : ModelCard
        The model.
    encoder : Path
        Encoder + pooler checkpoint.
    classifiers : tuple of Path
        Classifier checkpoints (empty when embeddings only).
    sha256 : dict
        File name -> SHA-256 (verified, recorded, or computed now for unverified files).
    verified : dict
        File name -> how it was checked: ``"card"`` (matches the published hash: the only verified state),
        ``"recorded"`` (matches the hash recorded at its first download or by ``models verify --record``),
        ``"new"`` (downloaded now, no published hash), ``"unverified"`` (no hash known) or ``"synthetic"``
        (a test checkpoint).
    """

    card: ModelCard
    encoder: Path
    classifiers: tuple[Path, ...]
    sha256: dict
    verified: dict

    def to_dict(self) -> dict[str, str]:
        """File name -> SHA-256 of the loaded files (see :meth:`provenance` for how each was checked)."""
        return dict(self.sha256)

    @property
    def unverified(self) -> tuple[str, ...]:
        """Files not matched against a published hash, in load order (encoder first)."""
        return tuple(f for f in self.sha256 if self.verified.get(f) != "card")

    def provenance(self) -> dict:
        """JSON-able provenance of the weights: for the run's ``models`` record, the run summary and reports.

        Returns
        -------
        dict
            ``{"model": name, "verified": bool, "unverified": [file, ...],
            "files": {file: {"sha256": hex, "check": how, "verified": bool}}}``; ``verified`` is True only when
            every file matched the model card's published SHA-256 (see :attr:`verified` for ``check``).
        """
        files = {f: {"sha256": str(h), "check": str(self.verified.get(f, "unverified")),
                     "verified": self.verified.get(f) == "card"} for f, h in self.sha256.items()}
        return {"model": self.card.name, "verified": not self.unverified, "unverified": list(self.unverified),
                "files": files}


@dataclass(frozen=True)
class FileStatus:
    """Result of :func:`verify_model_files` for one file.

    ``status`` is ``"ok"`` (matches the card or recorded hash), ``"unverified"`` (present, no known hash),
    ``"missing"``, ``"mismatch"`` or ``"synthetic"`` (a test checkpoint written by
    :func:`subcell_screen.embed.testing.make_tiny_checkpoint`).
    """

    model: str
    filename: str
    path: Path
    status: str
    sha256: str | None
    expected: str | None
    source: str | None


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The weights folder: argument > ``$SUBCELL_SCREEN_MODELS`` > user cache dir (not created here)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        base = Path(platformdirs.user_cache_dir("subcell_screen", appauthor=False))
    except ImportError:  # pragma: no cover - platformdirs is a dependency; minimal GPU boxes may lack it
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "subcell_screen"
    return base / "models"


def is_offline(offline: bool | None = None) -> bool:
    """Offline mode: the argument if given, else ``$SUBCELL_SCREEN_OFFLINE`` in (1, true, yes, on)."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# -- hash registry --------------------------------------------------------------------------------------------

def recorded_hashes(cache_dir: str | os.PathLike | None = None) -> dict:
    """The cache's ``hashes.json``: file name -> {sha256, url, size, recorded_at, source}."""
    path = resolve_cache_dir(cache_dir) / HASHES_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ChecksumError(f"{path}: unreadable hash registry ({exc}); fix or delete it") from exc
    if not isinstance(data, dict):
        raise ChecksumError(f"{path}: hash registry must be a JSON object")
    return data


def _update_record(cache: Path, filename: str, **fields: object) -> None:
    with _locked(cache / f".{HASHES_FILE}.lock"):
        data = recorded_hashes(cache)
        entry = dict(data.get(filename, {}))
        entry.update(fields)
        data[filename] = entry
        tmp = cache / f".{HASHES_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, cache / HASHES_FILE)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Inter-process lock (POSIX ``flock``; a no-op elsewhere)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _expected(card_sha: str | None, record: dict) -> tuple[str | None, str | None]:
    if card_sha:
        return card_sha.lower(), "card"
    if record.get("sha256") and record.get("source") != "synthetic":
        return str(record["sha256"]).lower(), "recorded"
    return None, None


def _verify_existing(path: Path, expected: str | None, how: str | None) -> str:
    """Hash ``path`` and compare with ``expected``; returns the digest (always re-hashed: ~1 s per 350 MB)."""
    digest = sha256_file(path)
    if expected and digest != expected:
        raise ChecksumError(
            f"{path}: SHA-256 {digest} does not match the {how} hash {expected}; the file is corrupt or not "
            f"the published one. Delete it and run `subcell-screen models download` again.")
    return digest


# -- download -------------------------------------------------------------------------------------------------

def fetch_file(
    url: str,
    filename: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    offline: bool | None = None,
    force: bool = False,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool | None = None,
    model: str | None = None,
) -> tuple[Path, str, str]:
    """Return a verified local copy of one weight file, downloading it if needed.

    Parameters
    ----------
    url
        HTTPS (or HTTP) URL of the file.
    filename
        Name in the cache folder.
    cache_dir
        Cache folder (see :func:`resolve_cache_dir`).
    sha256
        Known hash (model card); otherwise the recorded hash, if any, is enforced.
    offline
        Never use the network (default from ``$SUBCELL_SCREEN_OFFLINE``).
    force
        Download again even if the file exists (the old file is replaced only after the new one verifies).
    retries
        Connection attempts; each retry resumes where the previous one stopped.
    timeout
        Socket timeout in seconds.
    progress
        Show a tqdm bar (None: only on a terminal).
    model
        Model name, for messages.

    Returns
    -------
    path, sha256, how
        Local path, its SHA-256 and how it was verified (``"card"``, ``"recorded"``, ``"new"``,
        ``"unverified"``, ``"synthetic"``).

    Raises
    ------
    WeightsNotFoundError
        Offline and the file is missing.
    ChecksumError
        The file (existing or downloaded) does not match the expected hash.
    DownloadError
        HTTP errors or repeated connection failures.
    """
    cache = resolve_cache_dir(cache_dir)
    path = cache / filename
    record = recorded_hashes(cache).get(filename, {})
    expected, how = _expected(sha256, record)

    if path.exists() and not force:
        if record.get("source") == "synthetic":
            digest = sha256_file(path)
            if record.get("sha256") and digest != record["sha256"]:
                raise ChecksumError(f"{path}: SHA-256 {digest} differs from the recorded {record['sha256']}")
            logger.warning("%s is a synthetic test checkpoint (make_tiny_checkpoint), not the published "
                           "weights", path)
            return path, digest, "synthetic"
        digest = _verify_existing(path, expected, how)
        if expected is None:
            logger.info("%s has no known SHA-256 (%s); using it unverified", path, digest)
            return path, digest, "unverified"
        return path, digest, how or "unverified"

    if is_offline(offline):
        what = f" of model {model!r}" if model else ""
        raise WeightsNotFoundError(
            f"weight file {filename!r}{what} is not in the cache folder {cache} (offline mode: "
            f"${ENV_OFFLINE} or offline=True, so nothing is downloaded). Get it with "
            f"`subcell-screen models download {model or '<model>'}` on a machine with internet access, or "
            f"download {url} into {cache}; set ${ENV_CACHE} or cache_dir to use another folder.")

    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f".{filename}.lock"):
        if path.exists() and not force:  # another process finished it while we waited
            return fetch_file(url, filename, cache_dir=cache, sha256=sha256, offline=True, model=model)
        digest, size = _download(url, cache / f".{filename}.part", retries=retries, timeout=timeout,
                                 progress=progress)
        part = cache / f".{filename}.part"
        if expected and digest != expected:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"downloaded {url} has SHA-256 {digest}, but the {how} hash of {filename} is {expected}; "
                f"refusing it (nothing was written to {path}). If the published file really changed, delete "
                f"its entry from {cache / HASHES_FILE} after checking the new file's origin.")
        os.replace(part, path)
    _update_record(cache, filename, sha256=digest, url=url, size=size,
                   recorded_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                   source="download")
    logger.info("downloaded %s (%d bytes, sha256 %s)", path, size, digest)
    return path, digest, how or "new"


def _download(url: str, part: Path, *, retries: int, timeout: float, progress: bool | None) -> tuple[str, int]:
    """Stream ``url`` into ``part`` with Range resume; returns (sha256, size)."""
    attempt = 0
    bar = None
    try:
        while True:
            attempt += 1
            have = part.stat().st_size if part.exists() else 0
            req = urllib.request.Request(url, headers={"User-Agent": "subcell_screen"})
            if have:
                req.add_header("Range", f"bytes={have}-")
            try:
                resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - URL from the model card
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and have:  # nothing left to fetch, or the part is bogus
                    total = _total_from_content_range(exc.headers.get("Content-Range"))
                    if total == have:
                        return sha256_file(part), have
                    part.unlink(missing_ok=True)
                    continue
                raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from exc
            except (OSError, http.client.HTTPException) as exc:
                if attempt >= retries:
                    raise DownloadError(f"cannot reach {url} after {attempt} attempts: {exc}") from exc
                logger.warning("download of %s failed (%s); retrying", url, exc)
                time.sleep(min(2.0 ** attempt, 10.0) * 0.1)
                continue
            with resp:
                status = getattr(resp, "status", 200)
                if status == 206:
                    start = _start_from_content_range(resp.headers.get("Content-Range"))
                    if start != have:
                        raise DownloadError(f"{url}: server resumed at byte {start}, expected {have}")
                    total = _total_from_content_range(resp.headers.get("Content-Range"))
                    mode = "ab"
                else:
                    have = 0
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    mode = "wb"
                if bar is None and _want_progress(progress):
                    from tqdm.auto import tqdm

                    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name[1:-5])
                try:
                    with open(part, mode) as out:
                        while True:
                            chunk = resp.read(_CHUNK)
                            if not chunk:
                                break
                            out.write(chunk)
                            if bar is not None:
                                bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as exc:
                    if attempt >= retries:
                        raise DownloadError(f"connection to {url} lost after {attempt} attempts: {exc}") from exc
                    logger.warning("download of %s interrupted (%s); resuming", url, exc)
                    continue
            size = part.stat().st_size
            if total is not None and size < total:
                if attempt >= retries:
                    raise DownloadError(f"{url}: got {size} of {total} bytes after {attempt} attempts; run the "
                                        "download again to resume")
                logger.warning("download of %s stopped at %d of %d bytes; resuming", url, size, total)
                continue
            if total is not None and size != total:
                part.unlink(missing_ok=True)
                raise DownloadError(f"{url}: received {size} bytes but the server announced {total}")
            return sha256_file(part), size
    finally:
        if bar is not None:
            bar.close()


def _want_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    import sys

    return sys.stderr.isatty()


def _start_from_content_range(value: str | None) -> int | None:
    # "bytes 100-199/200"
    if not value or not value.startswith("bytes "):
        return None
    rng = value[6:].split("/")[0]
    return int(rng.split("-")[0]) if "-" in rng else None


def _total_from_content_range(value: str | None) -> int | None:
    if not value or "/" not in value:
        return None
    tail = value.rsplit("/", 1)[1].strip()
    return int(tail) if tail.isdigit() else None


# -- per-model helpers ----------------------------------------------------------------------------------------

def ensure_model_files(
    name: str | ModelCard,
    *,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    classifiers: bool = True,
    force: bool = False,
    base_url: str | None = None,
    progress: bool | None = None,
) -> ModelFiles:
    """Make sure a model's files are in the cache (download when allowed) and verified.

    Parameters
    ----------
    name
        Model name or card.
    cache_dir, offline, force, progress
        See :func:`fetch_file`.
    classifiers
        Also fetch the classifier files (False: embeddings only).
    base_url
        Mirror with the bucket's layout (default ``$SUBCELL_SCREEN_MODELS_URL``, else the public bucket).
    """
    card = get_model_card(name)
    base_url = base_url or os.environ.get(ENV_MIRROR) or None
    wanted = card.files if classifiers else card.files[:1]
    paths, hashes, how = [], {}, {}
    for fname in wanted:
        path, digest, verified = fetch_file(
            card.url_for(fname, base_url=base_url), fname, cache_dir=cache_dir, sha256=card.sha256_for(fname),
            offline=offline, force=force, progress=progress, model=card.name)
        paths.append(path)
        hashes[fname] = digest
        how[fname] = verified
    files = ModelFiles(card=card, encoder=paths[0], classifiers=tuple(paths[1:]), sha256=hashes, verified=how)
    loose = [f for f in files.unverified if how[f] != "synthetic"]
    if loose:
        logger.warning("model %s: %s %s no published SHA-256 (%s); read as plain tensors only and marked "
                       "unverified in the run's provenance", card.name, ", ".join(loose),
                       "has" if len(loose) == 1 else "have", ", ".join(f"{f}: {how[f]}" for f in loose))
    return files


def verify_model_files(
    name: str | ModelCard,
    *,
    cache_dir: str | os.PathLike | None = None,
    record: bool = False,
) -> list[FileStatus]:
    """Check a model's cached files against the card and recorded hashes (never downloads).

    ``record=True`` records the hash of present, unverified files (trust on first use of a hand-copied file).
    """
    card = get_model_card(name)
    cache = resolve_cache_dir(cache_dir)
    records = recorded_hashes(cache)
    out = []
    for fname in card.files:
        path = cache / fname
        rec = records.get(fname, {})
        expected, how = _expected(card.sha256_for(fname), rec)
        if not path.exists():
            out.append(FileStatus(card.name, fname, path, "missing", None, expected, how))
            continue
        digest = sha256_file(path)
        if rec.get("source") == "synthetic":
            status = "synthetic"
        elif expected is None:
            status = "unverified"
            if record:
                _update_record(cache, fname, sha256=digest, size=path.stat().st_size, source="manual",
                               recorded_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
                status, expected, how = "ok", digest, "recorded"
        else:
            status = "ok" if digest == expected else "mismatch"
        out.append(FileStatus(card.name, fname, path, status, digest, expected, how))
    return out
