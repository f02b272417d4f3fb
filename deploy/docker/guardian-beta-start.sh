#!/bin/sh
# guardian-beta's container entrypoint: records the integrity baseline on first start (when the
# store does not exist yet), then watches. Argument: the config file.
set -eu
CONFIG="${1:-/var/lib/qsc/guardian-beta.toml}"
STORE="$(sed -n 's/^store *= *"\(.*\)"$/\1/p' "$CONFIG")"
[ -n "$STORE" ] || { echo "guardian-beta-start: no store = \"…\" line in $CONFIG" >&2; exit 2; }
if [ ! -f "$STORE" ]; then
    echo "guardian-beta-start: recording the baseline ($STORE)" >&2
    # Exit status 1 means findings, which a first baseline cannot have; 2 is an error.
    status=0
    /usr/local/bin/guardian-beta --config "$CONFIG" baseline init || status=$?
    [ "$status" -le 1 ] || exit "$status"
fi
exec /usr/local/bin/guardian-beta --config "$CONFIG" watch
