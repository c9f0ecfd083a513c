"""The network guard of tests/conftest.py (issue 17 item 13): nothing leaves the loopback range."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

#: TEST-NET-1 (RFC 5737): never routed, so even a guard failure could not reach anyone.
UNROUTED = "192.0.2.1"


def test_tcp_and_udp_outside_loopback_are_refused_and_recorded(network_guard):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(ConnectionRefusedError,
                                                                               match="network guard"):
        s.connect((UNROUTED, 80))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(OSError):
        s.connect_ex((UNROUTED, 80))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(OSError):
            s.sendto(b"x", ("8.8.8.8", 53))
        with pytest.raises(OSError):
            s.connect(("169.254.169.254", 80))   # what Ray's route probe and metadata check do
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("example.com", 443)
    with pytest.raises(OSError):
        socket.gethostbyname("metadata.google.internal")
    assert len(network_guard.attempts) == 6
    assert "connect to ('192.0.2.1', 80)" in network_guard.attempts[0]
    assert "getaddrinfo('example.com')" in network_guard.attempts[4]
    network_guard.attempts.clear()


def test_a_swallowed_refusal_still_fails_the_test(network_guard):
    try:  # code under test that hides the error (urllib turns it into URLError; many callers ignore that)
        urllib.request.urlopen(f"http://{UNROUTED}/", timeout=1)
    except urllib.error.URLError:
        pass
    assert network_guard.attempts == [f"connect to ('{UNROUTED}', 80)"]  # the teardown check fails on this
    network_guard.attempts.clear()


def test_loopback_unix_sockets_and_local_names_work(network_guard):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        port = httpd.server_address[1]
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read() == b"ok"
        assert urllib.request.urlopen(f"http://localhost:{port}/", timeout=5).read() == b"ok"
    finally:
        httpd.shutdown()
        httpd.server_close()
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"hi")
        assert b.recv(2) == b"hi"
    assert socket.getaddrinfo("127.0.0.1", 80) and socket.getaddrinfo(socket.gethostname(), None)
    assert network_guard.attempts == []


def test_guard_fails_a_test_that_reaches_out(tmp_path):
    """End to end: pytest with this conftest reports a test that swallowed a refused connection as failed."""
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_reaches_out.py").write_text(
        "import socket\n"
        "def test_sneaky():\n"
        "    try:\n"
        f"        socket.create_connection(('{UNROUTED}', 80), timeout=1)\n"
        "    except OSError:\n"
        "        pass\n"
        "def test_local():\n"
        "    socket.getaddrinfo('localhost', 80)\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # the call itself passed; the guard's teardown check turns it into an error (a failed test run)
    assert "2 passed, 1 error" in out and "ERROR test_reaches_out.py::test_sneaky" in out
    assert "network access outside loopback: connect to ('192.0.2.1', 80)" in out
