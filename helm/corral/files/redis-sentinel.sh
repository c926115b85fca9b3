#!/bin/sh
# One pod of the bundled Redis Sentinel group (values: redis.sentinel.enabled): its Redis
# ("redis-sentinel.sh redis") or its sentinel ("redis-sentinel.sh sentinel").
#
#   PEERS    every pod of the group as host:redis-port:sentinel-port, in ordinal order
#   ME       this pod's ordinal
#   SERVICE  the name the sentinels monitor the master under (REDIS_URL's /service)
#   QUORUM, DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS   the sentinels' failover settings
#   DATA_DIR, SENTINEL_DIR                        where Redis keeps its files, the sentinel its config
#
# The master is whichever pod the sentinels name; when none answers (a new group), pod 0. So a
# pod that comes back after a failover joins the new master as a replica, and a master that
# restarts before the sentinels noticed stays master.
set -eu

mode=$1
i=0
self=""
for peer in $PEERS; do
    [ "$i" = "$ME" ] && self=$peer
    i=$((i + 1))
done
[ -n "$self" ] || { echo "ME=$ME is not in PEERS" >&2; exit 2; }
self_host=${self%%:*}
rest=${self#*:}
self_redis=${rest%%:*}
self_sentinel=${rest#*:}

# "host port" of the master as most sentinels that answer know it (one that was cut off may
# not have seen the last failover), else pod 0's.
master() {
    answers=""
    for peer in $PEERS; do
        host=${peer%%:*}
        port=${peer##*:}
        answer=$(redis-cli -h "$host" -p "$port" --raw SENTINEL get-master-addr-by-name "$SERVICE" 2>/dev/null || true)
        mhost=$(echo "$answer" | sed -n 1p)
        mport=$(echo "$answer" | sed -n 2p)
        if [ -n "$mhost" ] && [ -n "$mport" ]; then
            answers="$answers$mhost $mport
"
        fi
    done
    if [ -n "$answers" ]; then
        printf %s "$answers" | sort | uniq -c | sort -rn | head -n 1 | awk '{print $2, $3}'
        return
    fi
    first=${PEERS%% *}
    rest=${first#*:}
    echo "${first%%:*} ${rest%%:*}"
}

set -- $(master)
master_host=$1
master_port=$2

if [ "$mode" = redis ]; then
    set -- --port "$self_redis" --appendonly yes --dir "$DATA_DIR" --protected-mode no \
        --replica-announce-ip "$self_host" --replica-announce-port "$self_redis" --repl-diskless-sync-delay 0
    if [ "$master_host:$master_port" != "$self_host:$self_redis" ]; then
        set -- "$@" --replicaof "$master_host" "$master_port"
    fi
    exec redis-server "$@"
fi

# The sentinel resolves hostnames once, when it reads its config: wait (bounded) for the master's.
tries=0
until getent hosts "$master_host" >/dev/null 2>&1 || [ "$tries" -ge 60 ]; do
    tries=$((tries + 1))
    sleep 1
done
conf="$SENTINEL_DIR/sentinel.conf"  # the sentinel rewrites it as the group changes
cat >"$conf" <<CONF
port $self_sentinel
dir $SENTINEL_DIR
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $self_host
sentinel announce-port $self_sentinel
sentinel monitor $SERVICE $master_host $master_port $QUORUM
sentinel down-after-milliseconds $SERVICE $DOWN_AFTER_MS
sentinel failover-timeout $SERVICE $FAILOVER_TIMEOUT_MS
sentinel parallel-syncs $SERVICE 1
CONF
exec redis-server "$conf" --sentinel
