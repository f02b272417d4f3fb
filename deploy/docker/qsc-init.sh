#!/bin/sh
# qsc-init: the one-shot init of the compose stack (service `init`, cortex image, run as root).
# Idempotent: creates what is missing and rewrites the configs, so running it again after an
# upgrade or a change of the settings below is safe. Keys are made here, in the volumes, and
# never baked into an image.
#
# Volumes it expects:
#   /var/lib/qsc   the cortex's state (keys, agents file, store, audit chain, cortex.toml)
#   /state/alpha   guardian-alpha's state (channel key, outbox, guardian-alpha.toml)
#   /state/beta    guardian-beta's state (channel key, store key, baseline, heal copies, config)
#   /state/demo    the demo tree guardian-beta heals (seeded with app.conf)
#   /state/webhook the demo webhook receiver's state (its shared secret, what it accepted)
#   /state/postgres PostgreSQL's state (profile `scale`: the role's password file)
# Settings (environment):
#   QSC_HOST_ID          host id of this host's agents (required: letters, digits, . _ -)
#   QSC_HOST_CLASS       its [score.host_classes] class (default standard)
#   QSC_CHANNEL_LISTEN   cortex channel listener (default 127.0.0.1:7443)
#   QSC_API_LISTEN       cortex HTTP API (default 127.0.0.1:7080)
#   QSC_CORTEX_ADDRESS   where the agents reach the cortex (default: the channel listener,
#                        0.0.0.0 replaced by 127.0.0.1)
#   QSC_CORTEX_UID       uid the cortex runs as (default 10001, the image's user qsc)
#   QSC_COMPOSE_PROFILES the active compose profiles (comma-separated): with `demo`, the cortex's
#                        [webhook] sends to the demo receiver, signed with a generated secret
#   QSC_WEBHOOK_PORT     port of the demo receiver on 127.0.0.1 (default 9090)
#   QSC_WEBHOOK_UID      uid the demo receiver runs as (default 10002, its image's user)
#   With `scale` in QSC_COMPOSE_PROFILES the cortex runs as three replicas on NATS JetStream and
#   PostgreSQL: the `cortex` service (role "all"), `cortex-gateway` and `cortex-worker`:
#   QSC_NATS_PORT        NATS on 127.0.0.1 (default 4222)
#   QSC_PG_PORT          PostgreSQL on 127.0.0.1 (default 5432)
#   QSC_GATEWAY_LISTEN   the second gateway's channel listener (default 127.0.0.1:7444); the
#                        agents use it when the first one is down
#   QSC_POSTGRES_UID     uid PostgreSQL runs as (default 10003, its image's user)
set -eu

fail() {
    echo "qsc-init: $*" >&2
    exit 1
}

HOST_ID="${QSC_HOST_ID:-}"
CLASS="${QSC_HOST_CLASS:-standard}"
CHANNEL="${QSC_CHANNEL_LISTEN:-127.0.0.1:7443}"
API="${QSC_API_LISTEN:-127.0.0.1:7080}"
CORTEX_ADDRESS="${QSC_CORTEX_ADDRESS:-$(echo "$CHANNEL" | sed 's/^0\.0\.0\.0:/127.0.0.1:/')}"
CORTEX_UID="${QSC_CORTEX_UID:-10001}"
WEBHOOK_PORT="${QSC_WEBHOOK_PORT:-9090}"
WEBHOOK_UID="${QSC_WEBHOOK_UID:-10002}"
CORTEX=/var/lib/qsc
ALPHA=/state/alpha
BETA=/state/beta
DEMO=/state/demo
WEBHOOK=/state/webhook
POSTGRES=/state/postgres
NATS_PORT="${QSC_NATS_PORT:-4222}"
PG_PORT="${QSC_PG_PORT:-5432}"
GATEWAY="${QSC_GATEWAY_LISTEN:-127.0.0.1:7444}"
GATEWAY_ADDRESS="$(echo "$GATEWAY" | sed 's/^0\.0\.0\.0:/127.0.0.1:/')"
POSTGRES_UID="${QSC_POSTGRES_UID:-10003}"

[ -n "$HOST_ID" ] || fail "QSC_HOST_ID is not set (the host id the agents report, e.g. web-01)"
case "$HOST_ID" in
    *[!A-Za-z0-9._-]*) fail "QSC_HOST_ID '$HOST_ID' may hold only letters, digits, '.', '_' and '-'" ;;
esac
case "$WEBHOOK_PORT" in
    '' | *[!0-9]*) fail "QSC_WEBHOOK_PORT '$WEBHOOK_PORT' is not a port number" ;;
esac
for port in "$NATS_PORT" "$PG_PORT"; do
    case "$port" in
        '' | *[!0-9]*) fail "QSC_NATS_PORT/QSC_PG_PORT '$port' is not a port number" ;;
    esac
done
for dir in "$CORTEX" "$ALPHA" "$BETA" "$DEMO" "$WEBHOOK" "$POSTGRES"; do
    [ -d "$dir" ] || fail "$dir is not mounted"
done

cortex() {
    /usr/local/bin/cortex --config "$CORTEX/cortex.toml" "$@"
}

# Writes the config of one cortex process: $1 its name (file cortex.toml or cortex-$1.toml,
# audit chain and anomaly models of its own), $2 its channel listener, $3 its API, $4 its role.
write_cortex_config() {
    name="$1"
    file="$CORTEX/cortex.toml"
    [ "$name" = main ] || file="$CORTEX/cortex-$name.toml"
    suffix=""
    [ "$name" = main ] || suffix="-$name"
    cat > "$file" <<TOML
# Written by qsc-init; every key is documented in config/cortex.example.toml.
[listen]
address = "$2"
[api]
address = "$3"
token_file = "$CORTEX/api.token"
[agents]
file = "$CORTEX/agents.toml"
[keys]
channel_key_file = "$CORTEX/channel.key"
[store]
path = "$CORTEX/cortex.db"
master_key_file = "$CORTEX/master.key"
[audit]
path = "$CORTEX/audit$suffix.db"
signing_key_file = "$CORTEX/audit-signing.key"
[anomaly]
models_dir = "$CORTEX/anomaly$suffix"
TOML
    mkdir -p "$CORTEX/anomaly$suffix"
    if scale_profile; then
        write_scale_tables "$file" "$4"
    fi
    if demo_profile; then
        write_demo_webhook "$file"
    fi
}

# True when compose profile $1 is active.
profile_active() {
    case ",${QSC_COMPOSE_PROFILES:-}," in
        *,"$1",*) return 0 ;;
    esac
    return 1
}

# The demo webhook receiver.
demo_profile() {
    profile_active demo
}

# Three cortex replicas on NATS JetStream and PostgreSQL.
scale_profile() {
    profile_active scale
}

# Prints the PostgreSQL role's password (hex), creating it on first use: one copy for the
# cortex replicas, one for the PostgreSQL container (which creates the role with it).
postgres_password() {
    if [ ! -s "$CORTEX/postgres.password" ]; then
        head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$CORTEX/postgres.password"
    fi
    cp "$CORTEX/postgres.password" "$POSTGRES/password"
    chown "$POSTGRES_UID:$POSTGRES_UID" "$POSTGRES" "$POSTGRES/password"
    chmod 0400 "$POSTGRES/password"
}

# The replica tables of config $1 with role $2: the shared PostgreSQL store and the bus.
write_scale_tables() {
    sed -i 's/^\[store\]$/[store]\nbackend = "postgres"/' "$1"
    cat >> "$1" <<TOML
[store.postgres]
url = "host=127.0.0.1 port=$PG_PORT user=qsc dbname=qsc"
password_file = "$CORTEX/postgres.password"
[bus]
kind = "nats"
url = "nats://127.0.0.1:$NATS_PORT"
[cluster]
role = "$2"
TOML
}

# Prints the demo receiver's shared secret (whsec_ and 32 random bytes in base64), creating it
# on first use, readable by the receiver only.
webhook_secret() {
    if [ ! -s "$WEBHOOK/secret" ]; then
        printf 'whsec_%s\n' "$(head -c 32 /dev/urandom | base64 -w 0)" > "$WEBHOOK/secret.new"
        chown "$WEBHOOK_UID:$WEBHOOK_UID" "$WEBHOOK/secret.new"
        chmod 0400 "$WEBHOOK/secret.new"
        mv "$WEBHOOK/secret.new" "$WEBHOOK/secret"
    fi
    cat "$WEBHOOK/secret"
}

# The cortex's [webhook] section: incidents and action results go to the demo receiver on this
# host (plain http on loopback), signed with the shared secret.
write_demo_webhook() {
    secret="$(webhook_secret)"
    case "$secret" in
        whsec_?*) ;;
        *) fail "$WEBHOOK/secret does not hold a whsec_ secret: remove it to make a new one" ;;
    esac
    cat >> "$1" <<TOML
[webhook]
queue_path = "$CORTEX/webhook-queue.sqlite"
allow_plain_http = true
[[webhook.destinations]]
name = "demo"
url = "http://127.0.0.1:$WEBHOOK_PORT/qsc"
secret = "$secret"
TOML
}

# Prints an agent's public key, creating its channel key (0600) on first use.
agent_key() {
    dir="$1"
    if [ ! -f "$dir/channel.key" ]; then
        cortex keygen --out "$dir/channel.key" | sed -n 's/^public key: *//p' > "$dir/channel.pub"
    fi
    [ -s "$dir/channel.pub" ] || fail "$dir/channel.key exists without channel.pub: remove both to make a new key"
    cat "$dir/channel.pub"
}

enroll() {
    source="$1"
    key="$2"
    if ! cortex agents list | grep -q "$key"; then
        cortex agents add --host-id "$HOST_ID" --source "$source" --class "$CLASS" --public-key "$key"
    fi
}

uplink() {
    fallbacks="[]"
    if scale_profile; then
        fallbacks="[\"$GATEWAY_ADDRESS\"]"
    fi
    cat <<TOML
[cortex]
enabled = true
address = "$CORTEX_ADDRESS"
fallback_addresses = $fallbacks
cortex_public_key = "$CORTEX_PUBLIC"
key_file = "/var/lib/qsc/channel.key"
outbox_dir = "/var/lib/qsc/outbox"
TOML
}

write_alpha_config() {
    {
        echo "# Written by qsc-init; see config/guardian-alpha.example.toml."
        echo "host_id = \"$HOST_ID\""
        echo "output = \"none\""
        echo
        uplink
    } > "$ALPHA/guardian-alpha.toml"
}

write_beta_config() {
    {
        echo "# Written by qsc-init; see config/guardian-beta.example.toml. The host's /etc is"
        echo "# mounted read-only at /host/etc; the demo tree is the only one healed (read-write)."
        echo "host_id = \"$HOST_ID\""
        echo "store = \"/var/lib/qsc/baseline.qsb\""
        echo "key_file = \"/var/lib/qsc/store.key\""
        echo "heal_dir = \"/var/lib/qsc/heal\""
        echo
        echo "[[tree]]"
        echo "path = \"/host/etc\""
        echo "exclude = [\"/host/etc/mtab\", \"/host/etc/ld.so.cache\"]"
        echo
        echo "[[tree]]"
        echo "path = \"/srv/qsc-demo\""
        echo "heal = true"
        echo
        echo "[watch]"
        echo "full_check_interval_s = 300"
        echo
        uplink
    } > "$BETA/guardian-beta.toml"
}

umask 077
write_cortex_config main "$CHANNEL" "$API" all
if scale_profile; then
    postgres_password
    # The second gateway and the worker; their APIs follow the main one's port.
    api_host="${API%:*}"
    api_port="${API##*:}"
    write_cortex_config gateway "$GATEWAY" "$api_host:$((api_port + 1))" gateway
    write_cortex_config worker "127.0.0.1:0" "$api_host:$((api_port + 2))" worker
fi
CORTEX_PUBLIC="$(cortex keygen | sed -n 's/^channel public key: *//p')"
[ -n "$CORTEX_PUBLIC" ] || fail "cortex keygen printed no channel public key"
enroll alpha "$(agent_key "$ALPHA")"
enroll beta "$(agent_key "$BETA")"
write_alpha_config
write_beta_config
if [ ! -f "$DEMO/app.conf" ]; then
    umask 022
    printf '# a protected demo config: edit me, guardian-beta puts it back\nlisten = 8080\n' > "$DEMO/app.conf"
    umask 077
fi
cortex config check > /dev/null
chown -R "$CORTEX_UID:$CORTEX_UID" "$CORTEX"
chown "$WEBHOOK_UID:$WEBHOOK_UID" "$WEBHOOK"
chmod 0700 "$CORTEX" "$ALPHA" "$BETA" "$WEBHOOK"
echo "qsc-init: host $HOST_ID enrolled (alpha and beta); cortex channel key $CORTEX_PUBLIC"
if scale_profile; then
    echo "qsc-init: three cortex replicas on NATS 127.0.0.1:$NATS_PORT and PostgreSQL 127.0.0.1:$PG_PORT"
fi
if demo_profile; then
    echo "qsc-init: the cortex sends signed alerts to the demo receiver at 127.0.0.1:$WEBHOOK_PORT"
fi
