#!/usr/bin/env bash
# Drift on the bundled ticket-triage example through the real engine, end to end:
# @1 (good) serves, its traffic becomes the pinned reference; more @1 traffic under load (four
# times as many clients at once) stays ok: latency is service health, not drift; the route is
# switched to @2 (the same tickets trained with shuffled labels) and answer.category drifts.
# Prints both `loragate drift status` tables (drift, then service) and writes the HTML reports.
#
#   bash scripts/drift_demo.sh [WORKDIR]      (about 20 minutes on 2 cores, most of it training
#                                              the demo adapters; needs loragate engine install)
# The sample sizes are small for a demo (LORAGATE_DRIFT_* below); production defaults are larger.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
WORK=$(realpath "${1:-$(mktemp -d)}")
mkdir -p "$WORK"
export LORAGATE_DATA_DIR="$WORK/data" LORAGATE_PORT="${LORAGATE_PORT:-8095}"
export LORAGATE_MANAGED_ENGINE__PORT="${LORAGATE_MANAGED_ENGINE__PORT:-8895}"
export LORAGATE_DRIFT_REFERENCE_MIN_SAMPLES=120 LORAGATE_DRIFT_MIN_SAMPLES=120
export LORAGATE_DRIFT_WINDOW_S=3600 LORAGATE_DRIFT_INTERVAL_S=5 LORAGATE_LOG_LEVEL=WARNING
COUNT="${DRIFT_DEMO_COUNT:-160}"

loragate db upgrade >/dev/null
SRE_KEY=$(loragate keys create --role sre --name drift-demo --quiet)
APP_KEY=$(loragate keys create --role app --name drift-demo --quiet)
loragate serve >"$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$LORAGATE_PORT/readyz" >/dev/null; do
  kill -0 $SERVER || { tail -20 "$WORK/serve.log"; exit 1; }
  sleep 2
done

# --out is relative to the current directory: the demo versions go into the work directory.
loragate adapters demo --out "$WORK/drift-demo" >/dev/null
loragate adapters register ticket-triage "$WORK/drift-demo/good" --changelog "good" >/dev/null
loragate adapters register ticket-triage "$WORK/drift-demo/bad" --changelog "shuffled labels" \
  >/dev/null
loragate routes sync "$WORK/drift-demo/routes.yaml" >/dev/null
loragate routes set-target ticket-triage ticket-triage@1 --key "$SRE_KEY" >/dev/null

now() { date -u +%Y-%m-%dT%H:%M:%S; }
T0=$(now)
loragate adapters demo-traffic --key "$APP_KEY" --count "$COUNT" --concurrency 4 >/dev/null
sleep 2  # records reach the database within a second
T1=$(now)
loragate drift reference ticket-triage --since "$T0" --until "$T1" --key "$SRE_KEY"
loragate adapters demo-traffic --key "$APP_KEY" --count "$COUNT" --concurrency 16 >/dev/null
sleep 2
T2=$(now)
echo "== @1 kept, under load (16 clients at once, 4 for the reference): $T1 .. $T2"
loragate drift status ticket-triage --since "$T1" --until "$T2" --key "$SRE_KEY"
loragate drift report ticket-triage --since "$T1" --until "$T2" --key "$SRE_KEY" --out "$WORK/kept.html"

loragate routes set-target ticket-triage ticket-triage@2 --key "$SRE_KEY" >/dev/null
loragate drift reference ticket-triage --since "$T0" --until "$T1" --key "$SRE_KEY"
T3=$(now)
loragate adapters demo-traffic --key "$APP_KEY" --count "$COUNT" --concurrency 4 >/dev/null
sleep 2
T4=$(now)
echo "== switched to @2: $T3 .. $T4"
loragate drift status ticket-triage --since "$T3" --until "$T4" --key "$SRE_KEY"
loragate drift report ticket-triage --since "$T3" --until "$T4" --key "$SRE_KEY" --out "$WORK/switched.html"
curl -sf -H "Authorization: Bearer $SRE_KEY" "http://127.0.0.1:$LORAGATE_PORT/metrics" \
  | grep -E '^loragate_drift_(score|status)\{.*answer\.category' || true
echo "reports: $WORK/kept.html $WORK/switched.html"
