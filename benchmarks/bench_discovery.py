"""Discovery on a folder of many shards (metadata only): listing, pairing, footers, groups.

    .venv/bin/python benchmarks/bench_discovery.py [--shards 50000]

Tars are tiny stand-ins and every Parquet is the same small file: discovery reads only the
listing and the Parquet footers, so this measures exactly its own work. Target: seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import tool


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=50000)
    args = p.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as folder:
        buf = io.BytesIO()
        pq.write_table(pa.table({"key": [f"{i:09d}" for i in range(100)]}), buf)
        parquet = buf.getvalue()
        t0 = time.perf_counter()
        for i in range(args.shards):
            with open(os.path.join(folder, f"{i:05d}.tar"), "wb") as f:
                f.write(b"\0" * (1024 + i % 7 * 512))
            with open(os.path.join(folder, f"{i:05d}.parquet"), "wb") as f:
                f.write(parquet)
        print(f"made {args.shards} shards in {time.perf_counter() - t0:.1f}s")
        for extra in ([], ["--no-count"]):
            out = os.path.join(folder, "_result.json")
            t0 = time.perf_counter()
            subprocess.run(
                [
                    tool("airflow-curator"),
                    "discover",
                    "--dataset",
                    folder,
                    "--result-json",
                    out,
                    "--manifest",
                    os.path.join(folder, "_work", "manifest.json"),
                    *extra,
                ],
                check=True,
                stderr=subprocess.DEVNULL,
            )
            dt = time.perf_counter() - t0
            with open(out) as f:
                result = json.load(f)
            sizes = [len(json.dumps(g)) for g in result["groups"]]
            print(
                f"discover {' '.join(extra) or '(with record counts)':22s} {dt:6.2f} s  "
                f"shards={result['shards']} records={result['records']} "
                f"groups={len(result['groups'])} largest group XCom={max(sizes)} B"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
