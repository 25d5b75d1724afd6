"""Regenerate src/splitserve/proto/ from proto/splitserve/v1/*.proto.

    python scripts/gen_proto.py            # rewrite the committed modules
    python scripts/gen_proto.py --out DIR  # write them elsewhere (the drift test)

protoc names imports after the proto package (`from splitserve.v1 import ...`);
we ship the modules flat under `splitserve.proto`, so that import is rewritten.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUT = ROOT / "src" / "splitserve" / "proto"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    protos = sorted((PROTO_ROOT / "splitserve" / "v1").glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(PROTO_ROOT)) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "splitserve" / "v1").iterdir()):
            text = src.read_text()
            text = re.sub(r"^from splitserve\.v1 import", "from splitserve.proto import", text, flags=re.M)
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
