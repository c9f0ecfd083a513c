"""Shared pytest fixtures. Tests never touch the network or the user's home: caches go to tmp paths.

Network guard: in the test process, every socket connection (TCP connect, UDP sendto) to an address outside
the loopback range (127.0.0.0/8, ::1) and every name lookup other than localhost / this machine's own name
(a DNS query) is refused and fails the test that tried, even if the code under test swallowed the error.
Tests marked ``network`` are exempt. The ``network_guard`` fixture gives a test the refused attempts (and lets
it clear them, for testing the guard itself).

Child processes are not patched. Ray, the one dependency that starts its own (GCS, raylet, dashboard, workers),
is kept off the network by :func:`ray_start_env` and the variables set in :func:`pytest_configure`: without
them it probes 8.8.8.8 (to pick the node address) and the cloud metadata service 169.254.169.254 (usage
stats), as ``strace -f -e trace=connect`` shows.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]

# test helper modules beside the tests (realplates.py) import by name
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
#: Set for the whole session, before anything imports ray (ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when
#: imported): the node address is 127.0.0.1 (not the interface that routes to 8.8.8.8) and usage stats are off.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


# -- network guard ----------------------------------------------------------------------------------------


class NetworkGuard:
    """Refuses non-loopback connections and name lookups in this process; records what was tried."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.enabled = True
        self._names = {"localhost", "localhost.localdomain", "ip6-localhost", socket.gethostname().lower()}

    @staticmethod
    def loopback(host: object) -> bool:
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if not isinstance(host, str):
            return False
        h = host.strip("[]").split("%")[0]
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            return h.lower() == "localhost" or h.lower().endswith(".localhost")
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback or ip.is_unspecified

    def check_address(self, family: int, address: object, what: str) -> None:
        if not self.enabled or family not in (socket.AF_INET, socket.AF_INET6):
            return  # AF_UNIX and friends never leave the machine
        host = address[0] if isinstance(address, tuple) and address else address
        if not self.loopback(host):
            self.refuse(f"{what} to {address!r}")

    def check_name(self, host: object, what: str) -> None:
        if not self.enabled or host is None:
            return
        name = host.decode(errors="replace") if isinstance(host, bytes) else str(host)
        if name.lower().rstrip(".") in self._names or self.loopback(name):
            return
        try:
            ipaddress.ip_address(name.strip("[]").split("%")[0])
            return  # a literal address: no lookup, the connect is checked
        except ValueError:
            self.refuse(f"{what}({name!r}) (a DNS query)")

    def refuse(self, what: str) -> None:
        self.attempts.append(what)
        raise NetworkBlockedError(f"tests/conftest.py network guard: {what} refused; tests make no connection "
                                  "outside the loopback range (mark a test 'network' if it truly needs one)")


class NetworkBlockedError(ConnectionRefusedError, socket.gaierror):
    """A connection or lookup the network guard refused (an OSError, as a real refusal would be)."""


GUARD = NetworkGuard()


def _install_guard() -> None:
    cls = socket.socket
    if getattr(cls.connect, "_network_guard", False):
        return
    connect, connect_ex, sendto = cls.connect, cls.connect_ex, cls.sendto
    getaddrinfo, gethostbyname, gethostbyname_ex = socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex

    def guarded_connect(self, address):
        GUARD.check_address(self.family, address, "connect")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        GUARD.check_address(self.family, address, "connect_ex")
        return connect_ex(self, address)

    def guarded_sendto(self, data, *args):
        if args:
            GUARD.check_address(self.family, args[-1], "sendto")
        return sendto(self, data, *args)

    def guarded_getaddrinfo(host, *args, **kwargs):
        GUARD.check_name(host, "getaddrinfo")
        return getaddrinfo(host, *args, **kwargs)

    def guarded_gethostbyname(host):
        GUARD.check_name(host, "gethostbyname")
        return gethostbyname(host)

    def guarded_gethostbyname_ex(host):
        GUARD.check_name(host, "gethostbyname_ex")
        return gethostbyname_ex(host)

    guarded_connect._network_guard = True  # type: ignore[attr-defined]
    cls.connect, cls.connect_ex, cls.sendto = guarded_connect, guarded_connect_ex, guarded_sendto
    socket.getaddrinfo, socket.gethostbyname = guarded_getaddrinfo, guarded_gethostbyname
    socket.gethostbyname_ex = guarded_gethostbyname_ex


@pytest.fixture(autouse=True)
def _no_network(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it (or a fixture it set up) tried to reach beyond loopback."""
    exempt = request.node.get_closest_marker("network") is not None
    GUARD.enabled = not exempt
    try:
        yield
    finally:
        GUARD.enabled = True
    tried, GUARD.attempts[:] = list(GUARD.attempts), []
    if tried:
        pytest.fail("network access outside loopback: " + "; ".join(tried[:5])
                    + (f" (and {len(tried) - 5} more)" if len(tried) > 5 else ""), pytrace=False)


@pytest.fixture
def network_guard() -> NetworkGuard:
    """The session's :class:`NetworkGuard` (``attempts`` lists what was refused; clear it to pass)."""
    return GUARD


@pytest.fixture(scope="session")
def ray_start_env(tmp_path_factory: pytest.TempPathFactory):
    """Context manager to wrap ``ray.init`` of a local instance in, so that Ray's processes stay off the network.

    Ray's dashboard process asks the cloud metadata service which cloud it runs on (usage_lib
    ``get_cluster_config_to_report``) even with usage stats disabled, unless ``~/ray_bootstrap_config.yaml``
    exists; so the processes Ray starts get a temp ``HOME`` holding an empty one (the test process keeps its
    own ``HOME``).
    """
    home = tmp_path_factory.mktemp("ray-home")
    (home / "ray_bootstrap_config.yaml").write_text("{}\n")

    @contextlib.contextmanager
    def env() -> Iterator[None]:
        saved = {k: os.environ.get(k) for k in (*RAY_ENV, "HOME")}
        os.environ.update(RAY_ENV)
        os.environ["HOME"] = str(home)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    return env


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Model caches and Cellpose's folder point to a temp dir; nothing is downloaded into $HOME."""
    cache = tmp_path_factory.getbasetemp() / "model-cache"
    monkeypatch.setenv("SUBCELL_SCREEN_MODELS", str(cache / "subcell"))
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(cache / "cellpose"))
    monkeypatch.setenv("SUBCELL_SCREEN_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("MPLBACKEND", "Agg")


def write_oversized_tiff(path: Path, *, height: int = 60000, width: int = 60000) -> Path:
    """A ~300-byte TIFF whose header declares ``height x width`` uint16 pixels (one zlib strip of 16x16 zeros).

    A decompression-bomb-like input: reading its pixels would allocate ``2 * height * width`` bytes.
    """
    import struct

    import numpy as np
    import tifffile

    tifffile.imwrite(path, np.zeros((16, 16), np.uint16), compression="zlib", rowsperstrip=16, metadata=None)
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        patches = [(tags[n].valueoffset, tags[n].dtype, v)
                   for n, v in (("ImageWidth", width), ("ImageLength", height), ("RowsPerStrip", height))]
    with open(path, "r+b") as fh:
        for offset, dtype, value in patches:
            fh.seek(offset)
            fh.write(struct.pack("<H" if dtype == 3 else "<I", value))
    return path


@pytest.fixture(scope="session")
def oversized_tiff():
    """:func:`write_oversized_tiff`, as a fixture (tests cannot import conftest)."""
    return write_oversized_tiff


@pytest.fixture
def data_dir() -> Path:
    """``tests/data``."""
    return DATA


@pytest.fixture
def repo_dir() -> Path:
    """Repository root."""
    return REPO


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.update(RAY_ENV)
    _install_guard()
