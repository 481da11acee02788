#!/usr/bin/env bash
# Creates .venv-sdk at the repo root with the official OpenAI and Anthropic Python SDKs,
# pinned, for tests/sdk_clients.rs (which finds the interpreter via AIRBAG_SDK_PYTHON).
#
# Idempotent: a stamp file records the pinned versions; when it matches and both SDKs
# import, nothing is downloaded. Changing a pin below rebuilds the environment.
set -euo pipefail

OPENAI_VERSION="3.54.0"
ANTHROPIC_VERSION="2.12.0"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv-sdk"
python="$venv/bin/python"
stamp="$venv/airbag-sdk-stamp"
wanted="openai==$OPENAI_VERSION anthropic==$ANTHROPIC_VERSION"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]] \
  && "$python" -c 'import openai, anthropic' 2>/dev/null; then
  echo "sdk-venv: $venv already has $wanted; nothing to do"
  echo "sdk-venv: run the SDK test with AIRBAG_SDK_PYTHON=$python"
  exit 0
fi

if [[ ! -x "$python" ]]; then
  echo "sdk-venv: creating virtualenv $venv"
  python3 -m venv "$venv"
else
  echo "sdk-venv: reusing virtualenv $venv (stamp missing or different pins)"
fi

echo "sdk-venv: installing $wanted"
"$python" -m pip install --disable-pip-version-check --quiet \
  "openai==$OPENAI_VERSION" "anthropic==$ANTHROPIC_VERSION"

"$python" -c 'import openai, anthropic; print(f"sdk-venv: installed openai {openai.__version__}, anthropic {anthropic.__version__}")'
echo "$wanted" >"$stamp"
echo "sdk-venv: run the SDK test with AIRBAG_SDK_PYTHON=$python"
