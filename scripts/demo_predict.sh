#!/usr/bin/env bash
# The last step of `make demo`: serve the pushed demo model with `cxr serve` and
# send one demo X-ray through `cxr predict`, with its Grad-CAM overlay.
# Production serves the same folder with TF Serving (README, "Serving").
set -euo pipefail
demo_dir=${1:-demo}
cxr=.venv/bin/cxr
# A glob, not `ls | head`: with pipefail, ls killed by SIGPIPE would fail the script.
images=("$demo_dir"/raw/covid19-radiography-database/COVID-19_Radiography_Dataset/COVID/images/*.png)
image=${images[0]}
[ -f "$image" ] || { echo "no demo image under $demo_dir/raw" >&2; exit 1; }
log="$demo_dir/serve.log"

# Port 0: the server picks a free port and prints its URL, so a busy 8501 cannot get in the way.
"$cxr" serve --model_base_path "$demo_dir/serving/cxr" --rest_api_port 0 > "$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
url=""
for _ in $(seq 240); do
  url=$(grep -o 'http://[^ ]*/v1/models/cxr' "$log" | sed 's#/v1/models/cxr##' || true)
  [ -n "$url" ] && break
  if ! kill -0 "$server" 2>/dev/null; then cat "$log" >&2; exit 1; fi
  sleep 0.5
done
[ -n "$url" ] || { echo "cxr serve did not start; see $log" >&2; exit 1; }
echo "cxr serve: $url/v1/models/cxr (log: $log)"
echo "cxr predict $image"
"$cxr" predict "$image" --url "$url" --wait 60 --explain "$demo_dir/explained"
