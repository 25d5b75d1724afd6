"""The committed generated modules must match proto/ (other SDKs generate from proto/)."""

import subprocess
import sys

from conftest import ROOT


def test_generated_code_matches_proto(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)  # fmt: skip
    committed = ROOT / "src" / "splitserve" / "proto"
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == ["edge_inference_pb2.py", "edge_inference_pb2.pyi", "edge_inference_pb2_grpc.py"]
    for name in generated:
        assert (tmp_path / name).read_text() == (committed / name).read_text(), (
            f"{name} is stale: run `python scripts/gen_proto.py` and commit the result"
        )


def test_contract_has_the_designed_surface():
    from splitserve.proto import edge_inference_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["EdgeInference"]
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {
        "Stream": (True, True),
        "Infer": (False, False),
        "ListModels": (False, False),
        "GetModel": (False, False),
        "GetHead": (False, True),
        "Signal": (False, False),
    }
    statuses = set(pb.Result.Status.keys())
    assert {"OK", "DEADLINE_EXCEEDED", "INVALID_FRAME", "UNKNOWN_MODEL", "OVERLOADED", "INTERNAL"} <= statuses
