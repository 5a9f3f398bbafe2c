#!/usr/bin/env bash
# Serve an `--format hf` export with vLLM and send one image request to its OpenAI endpoint.
#
# Usage: bench/serve_vllm.sh HF_EXPORT_DIR IMAGE_FILE [PORT]
# Needs a machine with a GPU, vLLM (`pip install vllm`, in its own environment: it brings
# its own torch and transformers), curl and python3. Not run yet: the development machine
# has no GPU (see README, "Serve with vLLM / SGLang").
#
# Steps: the serving check of the folder (when xtuner-llava-swap is installed), `vllm serve`
# in the background, wait until /v1/models answers, one chat completion with the image as
# an OpenAI `image_url` data URL and greedy decoding, print the reply, stop the server.
set -euo pipefail
folder="${1:?usage: $0 HF_EXPORT_DIR IMAGE_FILE [PORT]}"
image="${2:?usage: $0 HF_EXPORT_DIR IMAGE_FILE [PORT]}"
port="${3:-8000}"
test -f "$folder/config.json" || { echo "error: $folder has no config.json (an --format hf export?)" >&2; exit 1; }
test -f "$image" || { echo "error: image $image does not exist" >&2; exit 1; }
if command -v xtuner-llava-swap-convert >/dev/null; then
    xtuner-llava-swap-convert check "$folder"
fi

log="$(mktemp -t vllm-serve.XXXXXX.log)"
vllm serve "$folder" --port "$port" --served-model-name export --max-model-len 4096 \
    >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break
    kill -0 "$server" 2>/dev/null || { echo "error: vllm serve exited; its log:" >&2; tail -50 "$log" >&2; exit 1; }
    sleep 1
done

request="$(python3 - "$image" <<'PY'
import base64, json, mimetypes, sys
path = sys.argv[1]
kind = mimetypes.guess_type(path)[0] or "image/png"
url = f"data:{kind};base64," + base64.b64encode(open(path, "rb").read()).decode()
print(json.dumps({"model": "export", "temperature": 0, "max_tokens": 64, "messages": [
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                 {"type": "text", "text": "Describe the image briefly."}]}]}))
PY
)"
curl -sf "http://127.0.0.1:$port/v1/chat/completions" -H "Content-Type: application/json" \
    -d "$request" | python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'
