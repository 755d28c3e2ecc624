#!/usr/bin/env python3
"""Crash safety: repeatedly run concurrent load, kill -9 the server at a random moment, restart
it on the same data dir, and check that nothing acknowledged is lost or doubled:
  - every acknowledged transfer is readable with the same amount and accounts, and replaying
    its Idempotency-Key returns the same id without a second transfer;
  - every request whose answer was lost is resolved by replaying its key (applied exactly once
    either way);
  - every balance equals the model built from the resolved outcomes; sums are zero per currency;
  - a clean stop exits 0 and `ledgerctl verify` passes on the directory.
ITERATIONS (default 20) can be set with LEDGER_CRASH_ITERATIONS."""

import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import (CASH_ID, Server, fmt, idem_key, log, run_main, seed_from_env,  # noqa: E402
                            to_minor)

ITERATIONS = int(os.environ.get("LEDGER_CRASH_ITERATIONS", "20"))
THREADS = 6
REPLAY_SAMPLE = 150  # acknowledged requests re-sent per iteration (all are GET-checked)


class Req:
    __slots__ = ("path", "body", "key", "effects", "status", "json", "acked", "applied")

    def __init__(self, path, body, key, effects):
        self.path, self.body, self.key, self.effects = path, body, key, effects
        self.status = None
        self.json = None
        self.acked = False
        self.applied = None  # True / False once resolved


def main(ck):
    seed = seed_from_env()
    rnd = random.Random(seed)
    srv = Server()
    t_start = time.monotonic()
    try:
        srv.start()
        c = srv.client()
        accts = {"USD": [c.new_account("USD") for _ in range(5)],
                 "JPY": [c.new_account("JPY") for _ in range(3)]}
        cur_of = {a: cur for cur, ids in accts.items() for a in ids}
        model = {a: 0 for a in cur_of}
        applied_ids = {a: [] for a in cur_of}  # transfer ids expected in each history
        for a, cur in cur_of.items():
            amt = 100000 if cur == "USD" else 50000
            r = c.deposit(a, fmt(amt, cur), key=idem_key())
            if r.status != 201:
                raise AssertionError(f"setup deposit failed: {r.describe()}")
            model[a] += amt
            applied_ids[a].append(r.json["id"])
        c.close()
        rc = srv.stop()
        ck.eq("setup: clean stop exits 0", rc, 0)

        totals = {"acked": 0, "unacked": 0, "unacked_applied": 0}
        for it in range(ITERATIONS):
            if time.monotonic() - t_start > 270:
                log(f"# time budget reached after {it} iterations")
                ck.check("at least 20 iterations within the time budget", it >= 20, f"only {it}")
                break
            with ck.section(f"iteration {it + 1}"):
                iteration(ck, srv, rnd, it + 1, accts, cur_of, model, applied_ids, totals)
        log(f"# totals: {totals}")

        with ck.section("final: histories hold every applied transfer exactly once"):
            srv.start()
            srv.wait_ready(30)
            c = srv.client()
            for a in cur_of:
                h, _ = c.paginate(f"/v1/accounts/{a}/transfers", limit=1000)
                got = sorted(e["transfer"]["id"] for e in h)
                ck.eq(f"account {a}: history = applied transfers (count {len(applied_ids[a])})",
                      got, sorted(applied_ids[a]))
                ck.eq(f"account {a}: balance matches model", c.balance(a), fmt(model[a], cur_of[a]))
            ck.check("no 500 answered", not c.seen_500, c.seen_500[:3])
            c.close()
            rc = srv.stop()
            ck.eq("final: clean stop exits 0", rc, 0)
            rc, out = srv.verify()
            ck.eq("final: ledgerctl verify exits 0", rc, 0, out[-500:])
        reports = srv.sanitizer_reports()
        ck.check("no sanitizer report in any run's stderr", not reports, "; ".join(reports[:5]))
    finally:
        srv.cleanup()


def make_request(r_, accts, cur_of):
    cur = "USD" if r_.random() < 0.7 else "JPY"
    ids = accts[cur]
    x = r_.choice(ids)
    amt = r_.randrange(1, 5000)
    op = r_.random()
    key = idem_key()
    if op < 0.3:
        return Req("/v1/deposits", {"account_id": x, "amount": fmt(amt, cur)}, key, [[(x, amt)]])
    if op < 0.5:
        return Req("/v1/withdrawals", {"account_id": x, "amount": fmt(amt, cur)}, key, [[(x, -amt)]])
    if op < 0.9:
        y = r_.choice([i for i in ids if i != x])
        return Req("/v1/transfers", {"debit_account_id": x, "credit_account_id": y, "amount": fmt(amt, cur)},
                   key, [[(x, -amt), (y, amt)]])
    items, effects = [], []
    for _ in range(r_.randrange(2, 5)):
        x, y = r_.sample(ids, 2)
        amt = r_.randrange(1, 3000)
        items.append({"debit_account_id": x, "credit_account_id": y, "amount": fmt(amt, cur)})
        effects.append([(x, -amt), (y, amt)])
    return Req("/v1/transfers/batch", {"atomic": True, "transfers": items}, key, effects)


def iteration(ck, srv, rnd, n, accts, cur_of, model, applied_ids, totals):
    srv.start()
    reqs = [[] for _ in range(THREADS)]
    stop = threading.Event()
    seeds = [rnd.randrange(2**31) for _ in range(THREADS)]
    bad = []

    def worker(i):
        r_ = random.Random(seeds[i])
        cl = srv.client(timeout=30)
        try:
            while not stop.is_set():
                q = make_request(r_, accts, cur_of)
                reqs[i].append(q)
                try:
                    resp = cl.post(q.path, q.body, key=q.key)
                except Exception:  # noqa: BLE001 - connection died: the outcome is unknown
                    return
                q.status, q.json = resp.status, resp.json
                if resp.status in (200, 201, 422):
                    q.acked = True
                elif resp.status == 503:
                    q.acked = False  # outcome unknown by contract; resolved by replay below
                else:
                    bad.append(f"{q.path} {q.body} -> {resp.describe()}")
                    q.acked = False
        finally:
            cl.close()

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in ts:
        t.start()
    delay = rnd.uniform(0.2, 1.5)
    time.sleep(delay)
    srv.kill()
    stop.set()
    for t in ts:
        t.join(60)
    ck.check(f"it{n}: load threads ended after kill", not any(t.is_alive() for t in ts))
    ck.check(f"it{n}: only 2xx/422/503 answers under load", not bad, bad[:3])
    flat = [q for lst in reqs for q in lst]
    acked = [q for q in flat if q.acked]
    unacked = [q for q in flat if not q.acked]
    log(f"# it{n}: killed after {delay:.2f}s, {len(acked)} acknowledged, {len(unacked)} unacknowledged")
    totals["acked"] += len(acked)
    totals["unacked"] += len(unacked)

    srv.start()
    ck.check(f"it{n}: ready after restart", srv.wait_ready(30))
    c = srv.client()

    # 1. acknowledged: present exactly as answered; replay returns the same answer
    missing, wrong = [], []
    for q in acked:
        if q.path == "/v1/transfers/batch":
            res = (q.json or {}).get("results", [])
            posted = [x for x in res if x.get("status") == "posted"]
            q.applied = len(posted) == len(q.effects)
            if posted and not q.applied:
                wrong.append(f"atomic batch partly posted: {q.json}")
            for x, item in zip(res, q.body["transfers"]):
                if x.get("status") == "posted":
                    g = c.get(f"/v1/transfers/{x.get('id')}")
                    if g.status != 200:
                        missing.append(f"batch item {x.get('id')} -> {g.describe()}")
                    elif (g.json.get("amount"), g.json.get("debit_account_id"), g.json.get("credit_account_id")) != \
                            (item["amount"], item["debit_account_id"], item["credit_account_id"]):
                        wrong.append(f"batch item {x.get('id')}: {g.json} vs {item}")
            continue
        if q.status == 422:
            q.applied = False
            continue
        q.applied = True
        tid = (q.json or {}).get("id")
        g = c.get(f"/v1/transfers/{tid}")
        if g.status != 200:
            missing.append(f"{q.path} {q.body} acked id {tid} -> {g.describe()}")
            continue
        t = g.json
        exp = q.json
        for f in ("amount", "debit_account_id", "credit_account_id", "kind", "status", "currency"):
            if t.get(f) != exp.get(f):
                wrong.append(f"{tid}.{f}: after restart {t.get(f)!r}, acknowledged {exp.get(f)!r}")
    ck.check(f"it{n}: every acknowledged transfer present after kill -9 ({len(acked)})", not missing, missing[:3])
    ck.check(f"it{n}: acknowledged transfers unchanged after restart", not wrong, wrong[:3])

    mism = []
    for q in rnd.sample(acked, min(REPLAY_SAMPLE, len(acked))):
        r = c.post(q.path, q.body, key=q.key)
        if r.status != q.status or r.json != q.json:
            mism.append(f"{q.path} key {q.key}: acked {q.status} {q.json}, replay {r.describe()}")
    ck.check(f"it{n}: replaying acknowledged keys returns the original answers", not mism, mism[:3])

    # 2. unacknowledged: resolve by replay
    unres = []
    for q in unacked:
        r = c.post(q.path, q.body, key=q.key)
        if q.path == "/v1/transfers/batch":
            if r.status != 200:
                unres.append(f"batch replay -> {r.describe()}")
                continue
            res = r.json.get("results", [])
            posted = [x for x in res if x.get("status") == "posted"]
            q.applied = len(posted) == len(q.effects)
            if posted and not q.applied:
                unres.append(f"atomic batch partly posted on replay: {r.json}")
            q.json, q.status = r.json, r.status
        elif r.status == 201:
            q.applied, q.json, q.status = True, r.json, r.status
        elif r.status == 422 and r.code == "insufficient_funds":
            q.applied = False
        else:
            unres.append(f"{q.path} {q.body} replay -> {r.describe()}")
            continue
        if q.applied:
            totals["unacked_applied"] += 1
        r2 = c.post(q.path, q.body, key=q.key)
        if (r2.status, r2.json) != (r.status, r.json):
            unres.append(f"second replay differs: {r.describe()} vs {r2.describe()}")
    ck.check(f"it{n}: every unacknowledged request resolves by replay ({len(unacked)})", not unres, unres[:3])

    # 3. model
    for q in flat:
        if q.applied:
            for eff in q.effects:
                for a, d in eff:
                    model[a] += d
            if q.path == "/v1/transfers/batch":
                for x, eff in zip(q.json.get("results", []), q.effects):
                    for a, _ in eff:
                        applied_ids[a].append(x.get("id"))
            else:
                for a, _ in q.effects[0]:
                    applied_ids[a].append(q.json.get("id"))
    diffs = []
    for a, cur in cur_of.items():
        got = c.balance(a)
        if got != fmt(model[a], cur):
            diffs.append(f"account {a}: {got}, expected {fmt(model[a], cur)}")
    ck.check(f"it{n}: balances equal the resolved model", not diffs, diffs)
    ck.check(f"it{n}: no customer balance below zero", all(model[a] >= 0 for a in model))
    sums = c.sums_by_currency()
    ck.check(f"it{n}: sums zero per currency", all(v == 0 for v in sums.values()), sums)
    cash = {cur: to_minor(c.balance(CASH_ID[cur]), cur) for cur in accts}
    ck.check(f"it{n}: cash accounts mirror the customers",
             all(cash[cur] == -sum(model[a] for a in ids) for cur, ids in accts.items()), cash)
    ck.check(f"it{n}: no 500 answered", not c.seen_500, c.seen_500[:3])
    c.close()
    rc = srv.stop()
    ck.eq(f"it{n}: clean stop exits 0", rc, 0)
    rc, out = srv.verify()
    ck.eq(f"it{n}: ledgerctl verify exits 0", rc, 0, out[-400:])


if __name__ == "__main__":
    run_main(main)
