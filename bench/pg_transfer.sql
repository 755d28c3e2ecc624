-- pgbench script: one ledger transfer, the same work ledgerd does per transfer:
-- debit one account, credit another, record the transfer, record the idempotency key.
-- Variables from bench/pgbench.sh: :naccounts (accounts 1..N), :run (run tag, keeps keys unique
-- across runs), :seq (per-client counter, starts at 0; pgbench keeps client variables between
-- transactions).
\set d random(1, :naccounts)
\set c random(1, :naccounts - 1)
\if :c >= :d
\set c :c + 1
\endif
\set seq :seq + 1
BEGIN;
-- Lock both rows in id order so concurrent opposite transfers cannot deadlock.
\if :d < :c
UPDATE accounts SET balance = balance - 1 WHERE id = :d AND balance >= 1;
UPDATE accounts SET balance = balance + 1 WHERE id = :c;
\else
UPDATE accounts SET balance = balance + 1 WHERE id = :c;
UPDATE accounts SET balance = balance - 1 WHERE id = :d AND balance >= 1;
\endif
INSERT INTO transfers (debit, credit, amount) VALUES (:d, :c, 1);
INSERT INTO idem (key) VALUES (:run::text || '-' || :client_id::text || '-' || :seq::text);
COMMIT;
