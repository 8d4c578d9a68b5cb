#!/bin/sh
# The serving demo (`make serve-demo`): train the founding example, deploy it with
# `mesos-ensemble serve` on the embedded cluster, and answer one curl request for the first rows
# of its held-out data.  Usage: scripts/serve-demo.sh [BIN] [DIR]
#   BIN  directory holding the installed mesos-ensemble and python (default .venv/bin)
#   DIR  where the demo is written (default build/serve-demo)
set -eu
BIN=${1:-.venv/bin}
DIR=${2:-build/serve-demo}
STATE="$DIR/serve-state"

"$BIN/mesos-ensemble" train-demo "$DIR" >/dev/null
rm -f "$STATE/serve.json"
"$BIN/mesos-ensemble" serve "$DIR/job.toml" --state-dir "$STATE" &
serve=$!
trap 'kill -TERM $serve 2>/dev/null || true; wait $serve 2>/dev/null || true' EXIT INT TERM

# serve writes its gateway's address to the state directory once every member's replicas are ready.
tries=0
until [ -s "$STATE/serve.json" ]; do
    if ! kill -0 $serve 2>/dev/null; then echo "serve-demo: serve exited before it was ready" >&2; exit 1; fi
    tries=$((tries + 1))
    if [ $tries -gt 600 ]; then echo "serve-demo: serve was not ready within 120 s" >&2; exit 1; fi
    sleep 0.2
done
url=$("$BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["url"])' "$STATE/serve.json")

# The request: the first two rows of the held-out data, as {"rows": [{"f0": ..., ...}, ...]}.
body=$("$BIN/python" -c '
import csv, json, sys
with open(sys.argv[1]) as handle:
    rows = [row for _, row in zip(range(2), csv.DictReader(handle))]
print(json.dumps({"rows": [{k: float(v) for k, v in row.items() if k != "target"} for row in rows],
                  "members": True}))' "$DIR/test.csv")

echo "\$ curl -s -X POST $url/v1/predict -H 'Content-Type: application/json' -d '{\"rows\": [...2 rows...], \"members\": true}'"
curl -sS --fail-with-body -X POST "$url/v1/predict" -H 'Content-Type: application/json' -d "$body"
echo
