#!/usr/bin/env bash
# One command for the whole test suite: install, start RabbitMQ and PostgreSQL if needed, make sure
# docker-compose and systemd-analyze are there to validate the deployment files, chromium for the
# browser tests, pytest.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
install_corral
ensure_rabbitmq
ensure_postgresql
ensure_compose_validator
ensure_unit_validator
ensure_chromium
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
