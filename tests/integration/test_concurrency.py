#!/usr/bin/env python3
"""Concurrency: 10,000 concurrent withdrawals of 2.00 from an account holding 10000.00 over 200
keep-alive connections: exactly 5,000 succeed, 5,000 are 422 insufficient_funds, the balance
ends at 0.00, sums stay zero, verify passes. Then concurrent transfers among a ring of
accounts: no balance below zero, total conserved, every 201 in the history exactly once."""

import os
import random
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import Server, final_server_checks, fmt, log, run_main, seed_from_env, to_minor  # noqa: E402

CONNECTIONS = 200
REQUESTS = 10000


def run_threads(n, target, timeout):
    ts = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + timeout
    for t in ts:
        t.join(max(0.1, deadline - time.monotonic()))
    return [t for t in ts if t.is_alive()]


def main(ck):
    rnd = random.Random(seed_from_env())
    srv = Server()
    try:
        srv.start()
        c = srv.client()
        with ck.section("10,000 concurrent withdrawals"):
            acct = c.new_account("USD")
            ck.status("deposit 10000.00", c.deposit(acct, "10000.00"), 201)
            per = REQUESTS // CONNECTIONS
            results = [[] for _ in range(CONNECTIONS)]
            barrier = threading.Barrier(CONNECTIONS)

            def worker(i):
                cl = srv.client(timeout=60)
                out = results[i]
                try:
                    try:
                        cl.connect()
                    except OSError as e:
                        out.append(("exception", f"connect: {e!r}", None))
                        barrier.abort()
                        return
                    barrier.wait(60)
                    for _ in range(per):
                        try:
                            r = cl.withdraw(acct, "2.00")
                            out.append((r.status, r.code, r.json.get("id") if r.status == 201 and r.json else None))
                        except Exception as e:  # noqa: BLE001
                            out.append(("exception", repr(e), None))
                finally:
                    cl.close()

            t0 = time.monotonic()
            stuck = run_threads(CONNECTIONS, worker, 240)
            dt = time.monotonic() - t0
            log(f"# {REQUESTS} withdrawals over {CONNECTIONS} connections in {dt:.1f}s ({REQUESTS / dt:.0f}/s)")
            ck.check("all worker threads finished", not stuck, f"{len(stuck)} still running")
            flat = [x for r in results for x in r]
            ok = [x for x in flat if x[0] == 201]
            nsf = [x for x in flat if x[0] == 422 and x[1] == "insufficient_funds"]
            other = [x for x in flat if not (x[0] == 201 or (x[0] == 422 and x[1] == "insufficient_funds"))]
            ck.eq("10,000 answers", len(flat), REQUESTS)
            ck.eq("exactly 5,000 answered 201", len(ok), 5000)
            ck.eq("exactly 5,000 answered 422 insufficient_funds", len(nsf), 5000)
            ck.check("no other answers", not other, other[:5])
            ck.eq("5,000 distinct transfer ids", len({x[2] for x in ok}), len(ok))
            a = c.account(acct)
            ck.eq("final balance '0.00'", a["balance"], "0.00")
            ck.eq("final available '0.00'", a["available"], "0.00")
            ck.status("one more withdrawal -> 422 insufficient_funds", c.withdraw(acct, "0.01"), 422, "insufficient_funds")
            hist, _ = c.paginate(f"/v1/accounts/{acct}/transfers", limit=1000)
            ck.eq("history has 5,001 entries (1 deposit + 5,000 withdrawals)", len(hist), 5001)
            ck.eq("history ids = the 201 ids + the deposit",
                  {e["transfer"]["id"] for e in hist} - {x[2] for x in ok}, {hist[-1]["transfer"]["id"]} if hist else set())
            bals = [to_minor(e["balance_after"], "USD") for e in hist]
            ck.check("balance_after never negative", all(b >= 0 for b in bals), min(bals) if bals else None)
            ck.check("balance_after steps by 2.00 (newest first)",
                     all(bals[i + 1] - bals[i] == 200 for i in range(len(bals) - 1)) and bals and bals[0] == 0,
                     bals[:5])
            sums = c.sums_by_currency()
            ck.check("sum of USD balances is zero", sums.get("USD") == 0, sums)

        with ck.section("concurrent transfers among 20 accounts"):
            n_acc = 20
            accts = [c.new_account("EUR") for _ in range(n_acc)]
            for a in accts:
                c.deposit(a, "100.00")
            total = 100 * 100 * n_acc
            per = 25
            conns = 100
            results = [[] for _ in range(conns)]
            seeds = [rnd.randrange(2**31) for _ in range(conns)]

            def worker2(i):
                r_ = random.Random(seeds[i])
                cl = srv.client(timeout=60)
                try:
                    for _ in range(per):
                        x, y = r_.sample(accts, 2)
                        amt = fmt(r_.randrange(1, 3000), "EUR")
                        try:
                            r = cl.transfer(x, y, amt)
                            results[i].append((r.status, r.code, r.json.get("id") if r.status == 201 and r.json else None))
                        except Exception as e:  # noqa: BLE001
                            results[i].append(("exception", repr(e), None))
                finally:
                    cl.close()

            stuck = run_threads(conns, worker2, 180)
            ck.check("transfer threads finished", not stuck, f"{len(stuck)} still running")
            flat = [x for r in results for x in r]
            ok = [x for x in flat if x[0] == 201]
            other = [x for x in flat if not (x[0] == 201 or (x[0] == 422 and x[1] == "insufficient_funds"))]
            ck.check("only 201 or 422 insufficient_funds", not other, other[:5])
            log(f"# {len(ok)} of {len(flat)} transfers posted")
            bal = {a: to_minor(c.balance(a), "EUR") for a in accts}
            ck.check("no account below zero", all(v >= 0 for v in bal.values()), bal)
            ck.eq("customer total conserved", sum(bal.values()), total)
            seen = []
            for a in accts:
                h, _ = c.paginate(f"/v1/accounts/{a}/transfers", limit=1000)
                seen.extend(e["transfer"]["id"] for e in h if e["transfer"]["kind"] == "transfer")
            ok_ids = [x[2] for x in ok]
            ck.eq("every posted transfer appears in exactly two histories",
                  sorted(seen), sorted(ok_ids + ok_ids))
            sums = c.sums_by_currency()
            ck.check("sums zero per currency", all(v == 0 for v in sums.values()), sums)
        ck.status("healthz after load", c.get("/healthz"), 200)
        ck.check("no 500 answered", not c.seen_500, c.seen_500[:3])
        c.close()
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run_main(main)
