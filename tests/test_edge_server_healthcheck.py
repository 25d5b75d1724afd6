"""The container probe (python -m splitserve.edge_server.healthcheck) against real servers."""

from __future__ import annotations

import subprocess
import sys
import time

from certs import make_pki

from splitserve.edge_server.healthcheck import main as probe


def _until_healthy(server, args: list[str], timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while probe(args) != 0:
        assert server.proc.poll() is None, server.stop()
        assert time.time() < deadline, f"probe {args} never passed"
        time.sleep(0.5)


def test_probe_plaintext(start_server):
    server = start_server()
    done = subprocess.run([sys.executable, "-m", "splitserve.edge_server.healthcheck", "--port", str(server.port)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    server.stop()
    assert probe(["--port", str(server.port), "--timeout", "1"]) == 1


def test_probe_tls(start_server, tmp_path, capsys):
    pki = make_pki(tmp_path / "pki")
    server = start_server("--tls-cert", str(pki["server"]), "--tls-key", str(pki["server-key"]), wait=False)
    _until_healthy(server, ["--port", str(server.port), "--ca-cert", str(pki["ca"]), "--server-name", "localhost"])
    # what kubelet's plaintext grpc probe would see: never healthy
    assert probe(["--port", str(server.port), "--timeout", "2"]) == 1
    # a certificate not valid for the name checked, and a CA file that is not there
    tls = ["--port", str(server.port), "--ca-cert", str(pki["ca"]), "--timeout", "2"]
    assert probe([*tls, "--server-name", "other"]) == 1
    assert probe(["--port", str(server.port), "--ca-cert", str(tmp_path / "missing.crt")]) == 1
    assert "file not found" in capsys.readouterr().err
