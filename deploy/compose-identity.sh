#!/usr/bin/env bash
# Makes compose's secrets in `.env` beside compose.yaml, which compose reads and git ignores:
#
#   POSTGRES_PASSWORD, STRATUS_ADMIN_PASSWORD, STRATUS_SEAL_KEY   made once, never overwritten
#   STRATUS_JOIN_SECRET        made once: the registry derives every join credential from it
#   STRATUS_JOIN_<SERVICE>     each service's join credential (STRATUS_JOIN_TOKEN in compose.yaml),
#                              written again on every run, so they always match the secret
#
# Run it before the first `docker compose up` (and again after changing STRATUS_JOIN_SECRET:
# a new secret revokes every credential at once). The credentials are made by the stratus
# binary: $STRATUS_BIN, else `stratus` on the PATH, else the image (`docker build -t stratus .`
# first). The secret reaches it through the environment, never its command line. Only coreutils
# otherwise: the random values come from /dev/urandom.
#
#   deploy/compose-identity.sh && docker compose up --build
set -euo pipefail
cd "$(dirname "$0")/.."
env_file=${STRATUS_ENV_FILE:-.env}
umask 077
touch "$env_file"
chmod 600 "$env_file"

value() { sed -n "s/^$1=//p" "$env_file" | tail -n 1; }
add() { [ -n "$(value "$1")" ] || printf '%s=%s\n' "$1" "$2" >>"$env_file"; }
random_base64() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; }
random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

add POSTGRES_PASSWORD "$(random_hex 24)" # hex: it goes inside database URLs
add STRATUS_ADMIN_PASSWORD "$(random_base64 24)"
add STRATUS_SEAL_KEY "k1:$(random_base64 32)" # seals auth's secrets and the authority's keys
add STRATUS_JOIN_SECRET "$(random_base64 32)"

STRATUS_JOIN_SECRET=$(value STRATUS_JOIN_SECRET)
export STRATUS_JOIN_SECRET
if [ -n "${STRATUS_BIN:-}" ]; then
  stratus=("$STRATUS_BIN")
elif command -v stratus >/dev/null; then
  stratus=(stratus)
else
  stratus=(docker run --rm -e STRATUS_JOIN_SECRET stratus:latest)
fi
credentials=$("${stratus[@]}" identity env) || {
  echo "could not run \`${stratus[*]} identity env\` (set STRATUS_BIN, or build the image)" >&2
  exit 1
}

# The credentials replace the previous ones (everything else in the file stays as it was).
kept=$(mktemp "$env_file.XXXXXX")
grep -v -E '^STRATUS_JOIN_[A-Z0-9_]+=' "$env_file" >"$kept" || true
grep -E '^STRATUS_JOIN_SECRET=' "$env_file" >>"$kept"
printf '%s\n' "$credentials" >>"$kept"
mv "$kept" "$env_file"
echo "$env_file: $(printf '%s\n' "$credentials" | wc -l | tr -d ' ') join credentials and the system's secrets"
