#!/bin/sh
# Written by `corral broker-users` from the access rule of every RPC method; do not edit.
# Makes RabbitMQ users for the farm's workers and its people's clients (see README,
# 'Broker users'). Safe to run again: it sets the passwords and permissions anew.
set -eu
VHOST="${VHOST:-/}"
WORKER_USER="${WORKER_USER:-corral-worker}"
CLIENT_USER="${CLIENT_USER:-corral-client}"
for pair in "$WORKER_USER:${WORKER_PASSWORD:?set WORKER_PASSWORD}" "$CLIENT_USER:${CLIENT_PASSWORD:?set CLIENT_PASSWORD}"; do
  user="${pair%%:*}"; password="${pair#*:}"
  rabbitmqctl add_user "$user" "$password" >/dev/null 2>&1 || rabbitmqctl change_password "$user" "$password" >/dev/null
done
rabbitmqctl set_permissions -p "$VHOST" "$WORKER_USER" '^(nameko-rpc|scheduler\.events|corral\..*|rpc\.reply-corral_(worker|pool)-.*|amq\.gen-.*|registry\.events)$' '^(nameko-rpc|scheduler\.events|corral\..*|rpc\.reply-corral_(worker|pool)-.*|amq\.gen-.*|amq\.default)$' '^(nameko-rpc|scheduler\.events|corral\..*|rpc\.reply-corral_(worker|pool)-.*|amq\.gen-.*|registry\.events)$'
rabbitmqctl set_topic_permissions -p "$VHOST" "$WORKER_USER" nameko-rpc '^(license\.acquire|license\.hold_for_worker|license\.release|license\.release_for_worker|registry\.leave_worker|registry\.list_workers|registry\.register_worker|registry\.worker_heartbeat|resource_negotiator\.free|resource_negotiator\.release|resource_negotiator\.release_for_worker|resource_negotiator\.report_host|resource_negotiator\.reserve|scheduler\.claim_task|scheduler\.finish_task|scheduler\.hand_back_task|scheduler\.renew_lease)$' '.*'
rabbitmqctl set_permissions -p "$VHOST" "$CLIENT_USER" '^(nameko-rpc|rpc\.reply-standalone_rpc_proxy-.*)$' '^(nameko-rpc|rpc\.reply-standalone_rpc_proxy-.*)$' '^(nameko-rpc|rpc\.reply-standalone_rpc_proxy-.*)$'
rabbitmqctl set_topic_permissions -p "$VHOST" "$CLIENT_USER" nameko-rpc '^(license\.get_pool|license\.list_audit|license\.list_pools|license\.remove_pool|license\.set_pool|registry\.authenticate|registry\.create_token|registry\.create_user|registry\.farm_overview|registry\.forget_workers|registry\.list_audit|registry\.list_services|registry\.list_tokens|registry\.list_users|registry\.list_workers|registry\.remove_user|registry\.revoke_token|registry\.revoked_tokens|registry\.service_heartbeat|registry\.set_worker_wanted_state|resource_negotiator\.forget_hosts|resource_negotiator\.free|resource_negotiator\.list_audit|resource_negotiator\.list_hosts|scheduler\.bulk|scheduler\.cancel_job|scheduler\.cancel_task|scheduler\.collect_result|scheduler\.farm_stats|scheduler\.forget_results|scheduler\.get_job|scheduler\.get_task|scheduler\.health|scheduler\.list_audit|scheduler\.list_jobs|scheduler\.pause_job|scheduler\.purge_jobs|scheduler\.requeue_task|scheduler\.resume_job|scheduler\.retry_job|scheduler\.retry_task|scheduler\.set_priority|scheduler\.submit_job|scheduler\.why_task)$' '.*'
