#!/bin/sh
# `make run`: starts ledgerd in the foreground with embedded storage.
set -eu
BIN=$1
LISTEN=$2
DATA=$3
mkdir -p "$DATA"
cat <<MSG
ledgerd: starting on http://$LISTEN with data in $DATA (Ctrl-C stops it cleanly)
  Sign-in: authentication is not built yet; every request acts as the operator.
  Keep it on loopback. Try:
    curl -s -XPOST http://$LISTEN/v1/accounts -d '{"currency":"USD"}'
    curl -s -XPOST http://$LISTEN/v1/deposits -d '{"account_id":11,"amount":"100.00"}'
    curl -s http://$LISTEN/v1/accounts/11
MSG
exec "$BIN/ledgerd" --listen "$LISTEN" --data-dir "$DATA"
