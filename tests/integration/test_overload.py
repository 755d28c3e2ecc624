#!/usr/bin/env python3
"""Back-pressure (DESIGN.md "Bounded everything"): with a tiny engine queue (--engine-queue 2)
and many concurrent writers, some requests must be refused with 503 `overloaded` and a
`Retry-After` header, never queued without bound; a refused request changed nothing, so the
final balances equal exactly the accepted transfers; a retry with the same Idempotency-Key
after a 503 succeeds once."""

import os
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import Server, final_server_checks, fmt, idem_key, run_main, to_minor  # noqa: E402

THREADS = 64
PER_THREAD = 40


def main(ck):
    srv = Server(extra_args=["--engine-queue", "2"])
    srv.start()
    c = srv.client()
    src = c.new_account("USD")
    dst = c.new_account("USD")
    c.deposit(src, "100000.00")
    results = []  # (status, code, retry_after, key)
    lock = threading.Lock()

    def worker():
        cl = srv.client()
        mine = []
        for _ in range(PER_THREAD):
            k = idem_key()
            r = cl.transfer(src, dst, "1.00", key=k)
            mine.append((r.status, r.code if r.status >= 400 else None, r.headers.get("retry-after"), k))
        cl.close()
        with lock:
            results.extend(mine)

    ts = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    ck.eq("every request answered", len(results), THREADS * PER_THREAD)
    ok = [r for r in results if r[0] == 201]
    refused = [r for r in results if r[0] == 503]
    other = [r for r in results if r[0] not in (201, 503)]
    ck.eq("only 201 or 503 answers", other, [])
    ck.check("some requests were refused with 503 (queue of 2 under 64 writers)", len(refused) > 0,
             f"201={len(ok)} 503={len(refused)}")
    ck.check("some requests were accepted", len(ok) > 0)
    ck.check("every 503 says overloaded", all(r[1] == "overloaded" for r in refused))
    ck.check("every 503 carries Retry-After", all(r[2] is not None and r[2].isdigit() for r in refused))
    ck.eq("balance = accepted transfers only", to_minor(c.balance(dst), "USD"), 100 * len(ok))
    # A refused request is safe to retry with its key: it lands exactly once.
    if refused:
        k = refused[0][3]
        r1 = c.transfer(src, dst, "1.00", key=k)
        r2 = c.transfer(src, dst, "1.00", key=k)
        ck.status("retry after 503 succeeds", r1, 201)
        ck.eq("second retry replays the same transfer", r2.json.get("id") if r2.json else None,
              r1.json.get("id") if r1.json else None)
        ck.eq("balance after the retry", c.balance(dst), fmt(100 * (len(ok) + 1), "USD"))
    c.close()
    final_server_checks(ck, srv)


if __name__ == "__main__":
    run_main(main)
