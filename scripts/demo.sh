#!/usr/bin/env bash
# The main job on the built-in demo target: set up this machine, boot a throwaway lab host and
# provision the cpu-demo on it (llama.cpp serving Gemma 3 270M + Open WebUI, through the same roles,
# templates and status path as a DeepSeek-R1 host); then `ktdeploy status --deep` and a chat answer.
# The host stays up to look around (`ktdeploy lab ssh N`); `ktdeploy lab down N` removes it.
# Give a real server instead with: .venv/bin/ktdeploy provision USER@HOST (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
exec .venv/bin/ktdeploy lab demo "$@"
