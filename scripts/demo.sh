#!/usr/bin/env bash
# Start an edge-server on the bundled model, send it frames from a device-client, stop it.
set -euo pipefail
model=${MODEL:-fmnist-split}
frames=${FRAMES:-200}
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
edge-server --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 120); do
  grep -q "listening" "$log" && break
  kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.5
done
grep "serving\|listening" "$log"
echo
echo "device-client --server 127.0.0.1:$port --model $model --frames $frames"
out=${OUT:-$(mktemp -d)}
device-client --server "127.0.0.1:$port" --model "$model" --frames "$frames" --json "$out/demo.json"
echo "(summary written to $out/demo.json)"
