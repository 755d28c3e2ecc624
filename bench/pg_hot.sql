-- pgbench script: hot account. Every transfer debits account 1 and credits a random other
-- account; otherwise identical to bench/pg_transfer.sql. Account 1 has the lowest id, so locking
-- it first is already id order (no deadlocks).
\set d 1
\set c random(2, :naccounts)
\set seq :seq + 1
BEGIN;
UPDATE accounts SET balance = balance - 1 WHERE id = :d AND balance >= 1;
UPDATE accounts SET balance = balance + 1 WHERE id = :c;
INSERT INTO transfers (debit, credit, amount) VALUES (:d, :c, 1);
INSERT INTO idem (key) VALUES (:run::text || '-' || :client_id::text || '-' || :seq::text);
COMMIT;
