"""What the edge server warns about when its settings expose it beyond this machine (no sockets opened)."""

from splitserve.edge_server.config import ServerConfig
from splitserve.edge_server.server import exposure_warnings, is_loopback


def test_loopback_hosts():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "[::1]", "::1", "127.3.2.1"))
    assert not any(is_loopback(h) for h in ("[::]", "0.0.0.0", "10.0.0.5", "edge.example.com"))


def test_the_defaults_warn_about_plaintext_and_no_auth():
    text = " | ".join(exposure_warnings(ServerConfig()))
    assert "without TLS" in text and "any client" in text


def test_tokens_over_plaintext_and_public_metrics_warn():
    cfg = ServerConfig(host="127.0.0.1", tokens="tokens.txt", metrics_port=9100)
    text = " | ".join(exposure_warnings(cfg))
    assert "tokens are sent in plaintext" in text and "metrics on 0.0.0.0:9100" in text
    assert "beyond loopback) without TLS" not in text


def test_a_hardened_setup_is_quiet():
    cfg = ServerConfig(host="[::]", tls_cert="s.pem", tls_key="s.key", tls_client_ca="ca.pem", tokens="t",
                       metrics_port=9100, metrics_host="127.0.0.1")  # fmt: skip
    assert exposure_warnings(cfg) == []
    assert exposure_warnings(ServerConfig(host="127.0.0.1")) == []
