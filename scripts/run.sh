#!/bin/sh
# `make run`: starts ledgerd in the foreground with embedded storage.
set -eu
BIN=$1
LISTEN=$2
DATA=$3
mkdir -p "$DATA"
cat <<MSG
ledgerd: starting on http://$LISTEN with data in $DATA (Ctrl-C stops it cleanly)
  Sign in: on a new ledger the server writes an admin API key to $DATA/bootstrap-admin-key
  (mode 0600; never printed or logged). Use it to create your admin user, then revoke it:
    KEY=\$(cat $DATA/bootstrap-admin-key)
    curl -s -H "Authorization: Bearer \$KEY" http://$LISTEN/v1/users \\
         -d '{"username":"admin","password":"choose a long one","role":"admin"}'
    curl -s http://$LISTEN/v1/sessions -d '{"username":"admin","password":"choose a long one"}'
    curl -s -XDELETE -H "Authorization: Bearer \$KEY" http://$LISTEN/v1/api-keys/1
  Or, with the server stopped: $BIN/ledgerctl --data-dir $DATA user create --username admin \\
         --password-file FILE --role admin
MSG
exec "$BIN/ledgerd" --listen "$LISTEN" --data-dir "$DATA"
