"""Why a TLS connection fails, in words: untrusted certificate, wrong name, client certificate missing or refused."""

import socket
import ssl
import threading

import pytest
from certs import make_pki
from conftest import free_port

from splitserve.device_client.channel import ChannelSettings, explain_tls_failure


class TLSServer:
    """A real TLS listener on loopback with the test PKI's server certificate."""

    def __init__(self, pki, require_client_cert: bool) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(pki["server"], pki["server-key"])
        if require_client_cert:
            self.ctx.load_verify_locations(pki["ca"])
            self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(2)
                    tls.sendall(b"x")
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


@pytest.fixture
def server(pki):
    s = TLSServer(pki, require_client_cert=True)
    yield s
    s.close()


def _explain(server, **kw):
    return explain_tls_failure(ChannelSettings(target=f"127.0.0.1:{server.port}", tls=True, **kw), timeout=5)


def test_untrusted_server_certificate(server, pki):
    why = _explain(server, client_cert=str(pki["client"]), client_key=str(pki["client-key"]))
    assert "not trusted" in why and "--ca-cert" in why


def test_name_mismatch(server, pki):
    why = _explain(server, ca_cert=str(pki["ca"]), client_cert=str(pki["client"]), client_key=str(pki["client-key"]),
                   server_name="edge.example.org")  # fmt: skip
    assert "not valid for the name 'edge.example.org'" in why


def test_client_certificate_missing_and_refused(server, pki):
    assert "requires a client certificate" in _explain(server, ca_cert=str(pki["ca"]))
    why = _explain(server, ca_cert=str(pki["ca"]), client_cert=str(pki["rogue"]), client_key=str(pki["rogue-key"]))
    assert "refused this client certificate" in why


def test_a_good_handshake_and_no_listener(server, pki):
    ok = _explain(server, ca_cert=str(pki["ca"]), client_cert=str(pki["client"]), client_key=str(pki["client-key"]))
    assert "handshake succeeds" in ok
    closed = explain_tls_failure(ChannelSettings(target=f"127.0.0.1:{free_port()}", tls=True), timeout=2)
    assert "no TCP connection" in closed


def test_unreadable_tls_files(tmp_path):
    why = explain_tls_failure(ChannelSettings(target="127.0.0.1:1", tls=True, ca_cert=str(tmp_path / "nope.pem")))
    assert "cannot use the TLS files" in why


def test_the_client_says_why_it_cannot_connect(server, pki):
    """device-client against a server that wants a client certificate, without one: one line that says so."""
    import subprocess

    from conftest import BIN

    proc = subprocess.run(
        [str(BIN / "device-client"), "--server", f"127.0.0.1:{server.port}", "--model", "fmnist-split", "--frames",
         "2", "--tls", "--ca-cert", str(pki["ca"]), "--connect-timeout", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "requires a client certificate" in proc.stderr and "Traceback" not in proc.stderr
