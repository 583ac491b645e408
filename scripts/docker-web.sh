#!/bin/sh
# The image's web server (the Dockerfile's CMD): gunicorn on 0.0.0.0:5000, with
# WEB_WORKERS workers (default 4).
set -eu
# The workers add their metrics up in this folder; a previous run's files would
# count twice.
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/dacc-metrics}"
rm -rf "$PROMETHEUS_MULTIPROC_DIR"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
# No control socket: DACC needs none, and gunicorn's default one is shared by every
# instance of the user on the host.
# The worker class and options: see dacc/serving.py and the README's "Serving".
exec gunicorn --no-control-socket --worker-class dacc.serving.Worker --threads 8 --keep-alive 5 \
    -w "${WEB_WORKERS:-4}" -b 0.0.0.0:5000 'dacc:create_app()'
