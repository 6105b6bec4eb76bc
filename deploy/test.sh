#!/usr/bin/env bash
# One command for the whole test suite: install, start RabbitMQ and PostgreSQL if needed, make sure
# docker-compose is there to validate docker-compose.yml, pytest.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
install_corral
ensure_rabbitmq
ensure_postgresql
ensure_compose_validator
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
