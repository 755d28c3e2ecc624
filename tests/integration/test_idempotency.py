#!/usr/bin/env python3
"""Idempotency-Key semantics (API.md Conventions, docs/api.md Requests): replay returns the
original status and body and does nothing else; another body -> 409; rejections are
remembered; validation errors are not; keys are scoped to the route; keys survive a restart;
concurrent requests with one key make exactly one transfer."""

import os
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import Server, final_server_checks, idem_key, run_main, seed_from_env  # noqa: E402


def main(ck):
    seed_from_env()
    srv = Server()
    try:
        srv.start()
        c = srv.client()
        replays = run_before_restart(ck, srv, c)
        c.close()
        with ck.section("restart keeps keys and state"):
            a = c.new_account("USD")
            b = c.new_account("USD")
            fz = c.new_account("USD")
            c.deposit(a, "50.00")
            ck.status("freeze before restart", c.post(f"/v1/accounts/{fz}/freeze"), 200)
            p_keep = c.transfer(a, b, "10.00", pending=True).json["id"]
            p_exp = c.transfer(a, b, "5.00", pending=True, timeout_s=2).json["id"]
            p_exp_created = time.monotonic()
            before_accounts = c.all_accounts()
            before_transfers = {t: c.get(f"/v1/transfers/{t}").json for t in (p_keep, p_exp)}
            c.close()
            rc = srv.stop()
            ck.eq("SIGTERM exits 0 before restart", rc, 0)
            srv.start()
            ck.check("ready after restart", srv.wait_ready(30))
            c = srv.client()
            ck.eq("every account identical after restart", c.all_accounts(), before_accounts)
            ck.eq("pending transfers identical after restart",
                  {t: c.get(f"/v1/transfers/{t}").json for t in (p_keep, p_exp)}, before_transfers)
            ck.status("frozen account still frozen after restart", c.deposit(fz, "1.00"), 422, "account_frozen")
            r = c.post(f"/v1/transfers/{p_keep}/post", {"amount": "4.00"})
            ck.status("post a pending transfer made before the restart 200", r, 200)
            time.sleep(max(0.0, 3.0 - (time.monotonic() - p_exp_created)))
            g = c.get(f"/v1/transfers/{p_exp}")
            ck.eq("pending with timeout expires after a restart", (g.json or {}).get("status"), "voided")
            acc = c.account(a)
            ck.eq("after post + expiry: balance", acc["balance"], "46.00")
            ck.eq("after post + expiry: nothing reserved", acc["pending_debits"], "0.00")
            ck.eq("credit side after post + expiry", c.account(b)["balance"], "4.00")
            for name, (path, body, key, status, payload, watch) in replays.items():
                before = {a: c.balance(a) for a in watch}
                r = c.post(path, body, key=key)
                ck.eq(f"after restart, replay of {name}: same status", r.status, status)
                ck.eq(f"after restart, replay of {name}: same body", r.json, payload)
                ck.eq(f"after restart, replay of {name}: Idempotent-Replayed", r.headers.get("idempotent-replayed"), "true")
                ck.eq(f"after restart, replay of {name}: balances unchanged",
                      {a: c.balance(a) for a in watch}, before)
            path, body, key, status, payload, watch = replays["deposit"]
            other = dict(body, amount="99.99")
            ck.status("after restart, same key other body -> 409 idempotency_conflict",
                      c.post(path, other, key=key), 409, "idempotency_conflict")
        run_concurrent(ck, srv, c)
        ck.check("no 500 answered", not c.seen_500, "; ".join(c.seen_500[:5]))
        c.close()
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


def run_before_restart(ck, srv, c):
    replays = {}
    with ck.section("same key, same body"):
        a = c.new_account("USD")
        k = idem_key()
        r1 = c.deposit(a, "10.00", key=k)
        ck.status("first deposit 201", r1, 201)
        ck.check("first answer not marked replayed", r1.headers.get("idempotent-replayed") != "true", r1.headers)
        r2 = c.deposit(a, "10.00", key=k)
        ck.eq("replay: same status", r2.status, r1.status)
        ck.eq("replay: same body", r2.json, r1.json)
        ck.eq("replay: byte-identical body", r2.body, r1.body)
        ck.eq("replay: Idempotent-Replayed: true", r2.headers.get("idempotent-replayed"), "true")
        ck.eq("balance moved once", c.balance(a), "10.00")
        h, _ = c.paginate(f"/v1/accounts/{a}/transfers")
        ck.eq("history has exactly one entry", len(h), 1)
        replays["deposit"] = ("/v1/deposits", {"account_id": a, "amount": "10.00"}, k, 201, r1.json, [a, 1])

        r3 = c.deposit(a, "10.01", key=k)
        ck.status("same key, other body -> 409 idempotency_conflict", r3, 409, "idempotency_conflict")
        ck.eq("conflict changed nothing", c.balance(a), "10.00")
        r4 = c.deposit(a, "10.00", key=k)
        ck.eq("after a conflict the original still replays", (r4.status, r4.json), (201, r1.json))

        b = c.new_account("USD")
        k2 = idem_key()
        t1 = c.transfer(a, b, "4.00", key=k2, description="x")
        t2 = c.transfer(a, b, "4.00", key=k2, description="x")
        ck.status("transfer with key 201", t1, 201)
        ck.eq("transfer replay same body", (t2.status, t2.json), (t1.status, t1.json))
        ck.eq("transfer applied once (debit)", c.balance(a), "6.00")
        ck.eq("transfer applied once (credit)", c.balance(b), "4.00")
        ck.status("transfer same key, description changed -> 409",
                  c.transfer(a, b, "4.00", key=k2, description="y"), 409, "idempotency_conflict")
        replays["transfer"] = ("/v1/transfers", {"debit_account_id": a, "credit_account_id": b, "amount": "4.00",
                                                 "description": "x"}, k2, 201, t1.json, [a, b])

        k3 = idem_key()
        w1 = c.withdraw(b, "1.00", key=k3)
        w2 = c.withdraw(b, "1.00", key=k3)
        ck.eq("withdrawal replay same", (w2.status, w2.json), (201, w1.json))
        ck.eq("withdrawal applied once", c.balance(b), "3.00")

    with ck.section("keys are scoped to the route"):
        a = c.new_account("USD")
        k = idem_key()
        ck.status("deposit with key K 201", c.deposit(a, "5.00", key=k), 201)
        r = c.withdraw(a, "5.00", key=k)
        ck.status("withdrawal with the same key K on another route is a new request 201", r, 201)
        ck.eq("both applied", c.balance(a), "0.00")

    with ck.section("create account with key"):
        k = idem_key()
        r1 = c.post("/v1/accounts", {"currency": "EUR"}, key=k)
        r2 = c.post("/v1/accounts", {"currency": "EUR"}, key=k)
        ck.status("create account with key 201", r1, 201)
        ck.eq("replayed create returns the same account", (r2.status, r2.json), (201, r1.json))
        r3 = c.post("/v1/accounts", {"currency": "EUR"})
        ck.eq("next account id is the next one (no account made by the replay)",
              r3.json and r3.json.get("id"), r1.json["id"] + 1)
        ck.status("create account same key other body -> 409", c.post("/v1/accounts", {"currency": "GBP"}, key=k),
                  409, "idempotency_conflict")

    with ck.section("rejections are remembered, validation errors are not"):
        a = c.new_account("USD")
        b = c.new_account("USD")
        k = idem_key()
        r1 = c.transfer(a, b, "7.00", key=k)
        ck.status("transfer from empty account -> 422 insufficient_funds", r1, 422, "insufficient_funds")
        c.deposit(a, "100.00")
        r2 = c.transfer(a, b, "7.00", key=k)
        ck.eq("replay after funding returns the original 422", (r2.status, r2.json), (422, r1.json))
        ck.eq("replayed 422 marked Idempotent-Replayed", r2.headers.get("idempotent-replayed"), "true")
        ck.eq("replayed 422 moved nothing", (c.balance(a), c.balance(b)), ("100.00", "0.00"))
        replays["rejected transfer"] = ("/v1/transfers", {"debit_account_id": a, "credit_account_id": b,
                                                          "amount": "7.00"}, k, 422, r1.json, [a, b])
        k2 = idem_key()
        r = c.deposit(a, "1.001", key=k2)
        ck.status("invalid amount with key -> 400", r, 400, "invalid_amount")
        r = c.deposit(a, "1.00", key=k2)
        ck.status("same key after a 400: not remembered, new body applies 201", r, 201)
        ck.eq("balance after", c.balance(a), "101.00")
        k3 = idem_key()
        r = c.deposit(987654321, "1.00", key=k3)
        ck.status("deposit to unknown account -> 404", r, 404, "account_not_found")

    with ck.section("batch with key"):
        a = c.new_account("USD")
        b = c.new_account("USD")
        c.deposit(a, "10.00")
        k = idem_key()
        body = {"transfers": [{"debit_account_id": a, "credit_account_id": b, "amount": "1.00"},
                              {"debit_account_id": a, "credit_account_id": b, "amount": "50.00"}]}
        r1 = c.post("/v1/transfers/batch", body, key=k)
        r2 = c.post("/v1/transfers/batch", body, key=k)
        ck.status("batch with key 200", r1, 200)
        ck.eq("batch replay same", (r2.status, r2.json), (r1.status, r1.json))
        ck.eq("batch applied once", c.balance(b), "1.00")

    with ck.section("two-phase post/void with key"):
        a = c.new_account("USD")
        b = c.new_account("USD")
        c.deposit(a, "10.00")
        p = c.transfer(a, b, "5.00", pending=True).json["id"]
        k = idem_key()
        r1 = c.post(f"/v1/transfers/{p}/post", {"amount": "2.00"}, key=k)
        r2 = c.post(f"/v1/transfers/{p}/post", {"amount": "2.00"}, key=k)
        ck.status("post with key 200", r1, 200)
        ck.eq("post replay returns the same 200 (not transfer_not_pending)", (r2.status, r2.json), (200, r1.json))
        ck.eq("posted once", c.balance(b), "2.00")
    return replays


def run_concurrent(ck, srv, c):
    with ck.section("concurrent same key, same body"):
        a = c.new_account("USD")
        b = c.new_account("USD")
        c.deposit(a, "100.00")
        k = idem_key()
        n = 20
        barrier = threading.Barrier(n)
        results = [None] * n

        def worker(i):
            cl = srv.client(timeout=60)
            try:
                barrier.wait(30)
                results[i] = cl.transfer(a, b, "3.00", key=k)
            except Exception as e:  # noqa: BLE001
                results[i] = e
            finally:
                cl.close()

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(90)
        errs = [r for r in results if not hasattr(r, "status")]
        ck.check("all 20 concurrent requests answered", not errs, errs[:3])
        ok = [r for r in results if hasattr(r, "status")]
        ck.check("all answered 201", all(r.status == 201 for r in ok), [r.describe() for r in ok if r.status != 201][:3])
        ids = {r.json.get("id") for r in ok if r.status == 201 and r.json}
        ck.eq("all answers carry the same transfer id", len(ids), 1)
        ck.eq("exactly one transfer applied (debit)", c.balance(a), "97.00")
        ck.eq("exactly one transfer applied (credit)", c.balance(b), "3.00")
        h, _ = c.paginate(f"/v1/accounts/{b}/transfers")
        ck.eq("credit account history has exactly one entry", len(h), 1)

    with ck.section("concurrent same key, different bodies"):
        a = c.new_account("USD")
        b = c.new_account("USD")
        c.deposit(a, "100.00")
        k = idem_key()
        n = 20
        barrier = threading.Barrier(n)
        results = [None] * n

        def worker2(i):
            cl = srv.client(timeout=60)
            try:
                barrier.wait(30)
                results[i] = cl.transfer(a, b, f"{i + 1}.00", key=k)
            except Exception as e:  # noqa: BLE001
                results[i] = e
            finally:
                cl.close()

        ts = [threading.Thread(target=worker2, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(90)
        ok = [r for r in results if hasattr(r, "status")]
        ck.eq("all answered", len(ok), n)
        won = [(i, r) for i, r in enumerate(results) if hasattr(r, "status") and r.status == 201]
        lost = [r for r in ok if r.status == 409 and r.code == "idempotency_conflict"]
        ck.eq("exactly one 201", len(won), 1)
        ck.eq("the other 19 are 409 idempotency_conflict", len(lost), n - 1)
        if len(won) == 1:
            i, r = won[0]
            ck.eq("only the winner's amount moved", c.balance(b), f"{i + 1}.00")


if __name__ == "__main__":
    run_main(main)
