# Sourced by benchmarks that need many live instances: nginx processes listening on COUNT
# loopback ports from BASE, each answering every path (`/healthz` included) with a 200, so a
# registry or a gateway can hold and probe thousands of real endpoints. One process takes at
# most FARM_PORTS_A_PROCESS ports, so its listening sockets and the probe connections they
# accept stay within one process's open-file limit.
#
#   start_instance_farm BASE COUNT     # needs $work (a directory), the array pids, wait_port
#   check_ports_free BASE COUNT        # fails when any of them is taken

FARM_PORTS_A_PROCESS=${FARM_PORTS_A_PROCESS:-4000}

check_ports_free() {
  python3 - "$1" "$2" <<'PY'
import socket, sys
base, n = int(sys.argv[1]), int(sys.argv[2])
for port in range(base, base + n):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        sys.exit(f"port {port} is taken")
    s.close()
PY
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
    farm_nginx_conf "farm-$first" "server { $listens location / { return 200 \"ok\\n\"; } }" > "$work/farm-$first.conf"
    nginx -c "$work/farm-$first.conf" -p "$work" & pids+=($!)
  done
  wait_port $((base + count - 1))
}
