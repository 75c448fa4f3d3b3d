#!/usr/bin/env bash
# The packages' own smoke test (each spec's %check; the packaging tests run it on the unpacked
# RPMs too):  smoke.sh cortex|neuron ROOT
#
# Runs the program from the tree under ROOT (a build root, or an RPM's unpacked payload) with the
# config the package ships: `--help`, then `serve` on a free loopback port until `/health` answers
# JSON, then SIGTERM, which must end it cleanly. The neuron also reports what its native extension
# was built with.
set -euo pipefail
what=${1:?usage: smoke.sh cortex|neuron ROOT}
root=${2:?usage: smoke.sh cortex|neuron ROOT}
case "$what" in
  cortex) env="$root/usr/lib/cortex"; config="$root/etc/cortex/cortex.toml" ;;
  neuron) env="$root/usr/lib/helexa-neuron"; config="$root/etc/neuron/neuron.toml" ;;
  *) echo "usage: smoke.sh cortex|neuron ROOT" >&2; exit 2 ;;
esac
python="$env/bin/python"
script="$env/bin/$what"  # run by the environment's python: its #! names the installed path
log=$(mktemp)
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -f "$log"' EXIT

"$python" "$script" --help | head -n 3
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if [ "$what" = cortex ]; then
  mport=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  export CORTEX_GATEWAY__LISTEN="127.0.0.1:$port" CORTEX_GATEWAY__METRICS_LISTEN="127.0.0.1:$mport"
  "$python" "$script" serve --config "$config" >"$log" 2>&1 &
else
  (cd "$(mktemp -d)" && "$python" -c 'from neuron import ops; print("neuron._C:", ops.build_info())')
  NEURON_HOST=127.0.0.1 "$python" "$script" serve --config "$config" --port "$port" >"$log" 2>&1 &
fi
pid=$!
for _ in $(seq 600); do
  if ! kill -0 "$pid" 2>/dev/null; then echo "error: $what serve exited:"; cat "$log"; exit 1; fi
  if health=$("$python" - "$port" <<'PY' 2>/dev/null
import json, sys, urllib.error, urllib.request
try:
    answer = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2)
except urllib.error.HTTPError as exc:  # a gateway whose neurons are all down says so with a 503
    answer = exc
print(json.dumps(json.load(answer)))
PY
  ); then break; fi
  sleep 0.1
done
[ -n "${health:-}" ] || { echo "error: no /health from $what serve in 60 s:"; cat "$log"; exit 1; }
echo "$what serve (shipped config) /health: $health"
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
pid=
[ "$status" -eq 0 ] || { echo "error: $what serve exited with $status on SIGTERM:"; cat "$log"; exit 1; }
if grep -q Traceback "$log"; then echo "error: $what serve logged a traceback:"; cat "$log"; exit 1; fi
echo "$what: smoke test passed"
