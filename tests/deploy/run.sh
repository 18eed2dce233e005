#!/usr/bin/env bash
# Checks deploy/ (Helm chart, systemd unit, Dockerfile, Grafana dashboard)
# with Helm's own renderer and linter, systemd-analyze and the real server.
# usage: tests/deploy/run.sh path/to/stamma
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=".venv-tests"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# helm-python-sdk embeds Helm's Go library: real `helm template`/`helm lint`
# without a helm binary (none is packaged for Debian 12).
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/deploy/requirements.txt
exec "$venv/bin/python" tests/deploy/check.py "$1"
