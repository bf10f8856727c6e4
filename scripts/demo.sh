#!/usr/bin/env bash
# The README demo: curate a small generated image-text WebDataset with the example DAG
# `curate_image_text_pairs`, in local mode, with a real Airflow (SQLite, a temporary
# AIRFLOW_HOME) through dag.test(), on the CPU with a tiny randomly initialised CLIP model.
# Prints where the curated dataset is and its counts. Takes a minute or two.
#   DEMO_DIR=/tmp/curator-demo bash scripts/demo.sh     # keep everything in DEMO_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
demo=${DEMO_DIR:-$(mktemp -d -t airflow-curator-demo.XXXXXX)}
mkdir -p "$demo"
demo=$(cd "$demo" && pwd)
export AIRFLOW_HOME="$demo/airflow"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER="$PWD/dags"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__CURATOR__EXECUTION=local
export CURATOR_DROPS="$demo/drops" CURATOR_CURATED="$demo/curated"
export HF_HUB_OFFLINE=1
mkdir -p "$AIRFLOW_HOME"
log="$demo/demo.log"
echo "demo folder: $demo (Airflow and step logs: $log)"

echo "1/3 migrating the Airflow database (SQLite)..."
.venv/bin/airflow db migrate >>"$log" 2>&1

echo "2/3 generating a demo dataset (4 shards x 16 records) and a tiny CLIP model..."
.venv/bin/python - "$demo" >>"$log" 2>&1 <<'EOF'
import sys

from airflow_curator.testing.dataset import write_demo_dataset
from airflow_curator.testing.models import write_tiny_models

demo = sys.argv[1]
write_demo_dataset(f"{demo}/drops/demo", shards=4, records_per_shard=16, seed=7)
write_tiny_models(f"{demo}/models")
EOF

echo "3/3 running the DAG curate_image_text_pairs (discover -> index -> annotate -> dedup ->"
echo "    save_metadata -> plan_reshard -> reshard -> commit -> report), one mapped task per shard..."
status=0
.venv/bin/python - "$demo" >>"$log" 2>&1 <<'EOF' || status=$?
import json
import sys

from airflow.models.dagbag import DagBag

demo = sys.argv[1]
bag = DagBag()
if bag.import_errors:
    sys.exit(f"DAG import errors: {bag.import_errors}")
dag = bag.get_dag("curate_image_text_pairs")
models = f"{demo}/models"
conf = {
    "dataset": f"{demo}/drops/demo",
    "output": f"{demo}/curated/demo",
    "execution": "local",
    "model": f"{models}/tiny-clip.json",
    "weights": f"{models}/tiny-clip.pt",
    "aesthetic_weights": f"{models}/tiny-aesthetic.pth",
    "nsfw_weights": f"{models}/tiny-nsfw.pth",
    "device": "cpu",
    "min_clip_score": 0.0,  # the tiny model's CLIP scores straddle 0: keeps about half
    "samples_per_shard": 10,
    "group_bytes": 1,  # one shard per mapped task, to show the mapping
    "dedup_clusters": 4,
    "dedup_eps": 1e-6,  # a tiny random model embeds every image alike: only exact copies
}
run = dag.test(run_conf=conf)
with open(f"{demo}/run.json", "w") as f:
    json.dump({"state": str(run.state), "run_id": run.run_id, "output": conf["output"]}, f)
sys.exit(0 if str(run.state) == "success" else 1)
EOF
if [ "$status" != 0 ]; then
  tail -n 40 "$log" >&2
  echo "demo failed: see $log" >&2
  exit 1
fi

.venv/bin/python - "$demo" <<'EOF'
import json
import sys

import pyarrow.parquet as pq

demo = sys.argv[1]
run = json.load(open(f"{demo}/run.json"))
out = run["output"]
manifest = json.load(open(f"{out}/_manifest.json"))
table = pq.read_table(f"{out}/00000.parquet")
print(f"\nDAG run {run['run_id']}: {run['state']}")
print(f"input:   {demo}/drops/demo (4 shards, 64 records)")
print(f"curated: {out}")
print(f"  {manifest['records']} records kept in {len(manifest['shards'])} shards"
      f" ({manifest['bytes']} bytes; tar + parquet + DALI idx each), _SUCCESS written")
cols = [c for c in ("key", "clip_score", "aesthetic_score", "nsfw_score") if c in table.column_names]
print(f"  00000.parquet columns: {', '.join(table.column_names)}")
for row in table.select(cols).slice(0, 3).to_pylist():
    print("   ", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
print(f"report:  {out}/report.html (open it in a browser: no server, no network)")
EOF
