#!/usr/bin/env bash
# One command for a whole farm on this machine: install, start RabbitMQ if needed, `corral up`.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
install_corral
ensure_rabbitmq
cd "$ROOT"
exec "$VENV/bin/corral" up "$@"
