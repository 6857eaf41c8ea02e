# Sourced by bench/edge-cache.sh and bench/cache-mix.sh: the route file of a gateway in front of
# the catalog, with or without the edge cache, and an admin's token through a gateway.

# A route file: auth, the catalog's reads (with "$1" added to that route: a `cache = { ... }`
# line, or nothing) and its writes for admins.
catalog_routes() {
  cat <<TOML
[[routes]]
name = "auth"
prefix = "/auth"
service = "auth"
auth = "none"

[[routes]]
name = "catalog-read"
prefix = "/api/catalog"
methods = ["GET", "HEAD"]
service = "catalog"
$1

[[routes]]
name = "catalog-write"
prefix = "/api/catalog"
service = "catalog"
roles = ["admin"]
TOML
}

# An admin's access token, logging in through the gateway on port $1 (password
# STRATUS_ADMIN_PASSWORD, as the bench started auth with), retried while auth starts.
admin_token() {
  local token
  for _ in $(seq 1 100); do
    token=$(curl -fs -X POST "http://127.0.0.1:$1/auth/login" -H 'content-type: application/json' \
      -d "{\"email\":\"admin@stratus.local\",\"password\":\"$STRATUS_ADMIN_PASSWORD\"}" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' 2>/dev/null) && { echo "$token"; return 0; }
    sleep 0.1
  done
  echo "no admin token from the gateway on :$1" >&2
  return 1
}
