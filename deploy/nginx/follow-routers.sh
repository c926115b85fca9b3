#!/bin/sh
# nginx's entry point in compose: nginx in the foreground, and beside it a loop that reloads
# nginx whenever the set of `router` addresses changes.
#
# Why: open-source nginx resolves the names in an `upstream` block once, when it loads its
# config. A router that compose recreates (`docker compose up -d` after editing .env) or scales
# (`--scale router=N`) comes back on a new address, and nginx would keep sending to the old
# one (502) until restarted. A reload re-resolves the names and keeps in-flight requests
# (old workers finish them). While no router resolves (all being recreated) nothing is
# reloaded: the old config stays, and its retries cover the gap.
set -u

addresses() {
    getent ahostsv4 router 2>/dev/null | awk '{ print $1 }' | sort -u | tr '\n' ' '
}

(
    known=$(addresses)
    while sleep "${CORRAL_NGINX_FOLLOW_S:-2}"; do
        now=$(addresses)
        if [ -n "$now" ] && [ "$now" != "$known" ]; then
            echo "routers now at: $now- reloading nginx" >&2
            nginx -s reload && known=$now
        fi
    done
) &

exec nginx -g 'daemon off;'
