"""Regenerates the Python modules of every .proto under protos/.

Generated code is committed. `python -m protos.generate` rewrites it in place;
`python -m protos.generate --out DIR` writes it under DIR instead (the drift test compares the two).
Paths are relative to the repository root, so generated modules import each other as
`protos.…` and never create top-level `tensorflow` or `tensorflow_serving` packages.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"


def proto_files() -> list[pathlib.Path]:
    """Every .proto below protos/, as paths relative to the repository root, sorted."""
    return sorted(p.relative_to(REPO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: pathlib.Path) -> None:
    """Runs protoc (from grpcio-tools) over every proto file, writing modules under out_dir."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    files = proto_files()
    with_services = [f for f in files if "\nservice " in (REPO_ROOT / f).read_text()]
    out_dir.mkdir(parents=True, exist_ok=True)
    base = ["protoc", f"-I{REPO_ROOT}", f"-I{well_known}"]
    if protoc.main([*base, f"--python_out={out_dir}", f"--pyi_out={out_dir}", *map(str, files)]):
        raise RuntimeError("protoc failed on the message files")
    if with_services and protoc.main([*base, f"--grpc_python_out={out_dir}", *map(str, with_services)]):
        raise RuntimeError("protoc failed on the service files")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=REPO_ROOT)
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
