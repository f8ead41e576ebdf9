"""A stand-in for ``python -m tuner.export`` in unit tests of merges: writes a small GGUF.

``FAKE_EXPORT=fail`` in the environment: it fails as the real export does (a last
line that says why, exit status 1) after writing half a file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    for flag in ("--base", "--adapter", "--out", "--quantization", "--work"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    out = Path(args.out)
    if os.environ.get("FAKE_EXPORT") == "fail":
        out.with_name(f".{out.name}.partial").write_bytes(b"GGUF half")
        print("export failed: the converter stopped", flush=True)
        return 1
    out.write_bytes(b"GGUF" + bytes(60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
