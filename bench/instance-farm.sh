# Sourced by benchmarks that need many live instances: nginx processes listening on COUNT
# loopback ports from BASE, each answering every path (`/healthz` included) with a 200, so a
# registry or a gateway can hold and probe thousands of real endpoints. One process takes at
# most FARM_PORTS_A_PROCESS ports, so its listening sockets and the probe connections they
# accept stay within one process's open-file limit. Each process counts the requests it
# answered: `GET /farm-status` on any of its ports (nginx's stub_status).
#
#   start_instance_farm BASE COUNT     # needs $work (a directory), the array pids, wait_port
#   check_ports_free BASE COUNT        # fails when something listens on any of them

FARM_PORTS_A_PROCESS=${FARM_PORTS_A_PROCESS:-4000}

check_ports_free() {
  # Listening sockets only: connections in TIME-WAIT from a previous run do not stop nginx
  # (it binds with SO_REUSEADDR).
  local taken
  taken=$(ss -Htln "( sport >= :$1 and sport < :$(($1 + $2)) )" | head -1)
  [ -z "$taken" ] || { echo "a port in $1..$(($1 + $2 - 1)) is taken: $taken" >&2; return 1; }
}

# An nginx configuration: its name (for the pid and log files), then its server blocks.
farm_nginx_conf() {
  local name=$1; shift
  printf 'worker_processes 1; worker_rlimit_nofile %s; daemon off; pid %s/%s.pid;\n' "$(ulimit -n)" "$work" "$name"
  printf 'error_log %s/%s-error.log warn;\nevents { worker_connections %s; }\n' "$work" "$name" $((2 * FARM_PORTS_A_PROCESS + 1000))
  printf 'http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;\n%s\n}\n' "$*"
}

start_instance_farm() {
  local base=$1 count=$2 first last port listens
  [ "$count" -gt 0 ] || return 0
  for first in $(seq "$base" "$FARM_PORTS_A_PROCESS" $((base + count - 1))); do
    last=$((first + FARM_PORTS_A_PROCESS - 1)); [ "$last" -lt $((base + count)) ] || last=$((base + count - 1))
    listens=$(for port in $(seq "$first" "$last"); do printf 'listen 127.0.0.1:%s; ' "$port"; done)
    farm_nginx_conf "farm-$first" "server { $listens location / { return 200 \"ok\\n\"; } location = /farm-status { stub_status; } }" > "$work/farm-$first.conf"
    nginx -c "$work/farm-$first.conf" -p "$work" & pids+=($!)
  done
  wait_port $((base + count - 1))
}
