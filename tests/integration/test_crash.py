#!/usr/bin/env python3
"""Crash safety: repeatedly run concurrent load, kill -9 the server at a random moment (every 5th
round a SIGTERM instead, which must exit 0), restart
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

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import (CASH_ID, Server, fmt, idem_key, log, run_main, seed_from_env,  # noqa: E402
                            to_minor)

ITERATIONS = int(os.environ.get("LEDGER_CRASH_ITERATIONS", "20"))
THREADS = 6
REPLAY_SAMPLE = 150  # acknowledged requests re-sent per iteration (all are GET-checked)


class Req:
    """One POST of the load. kind: 'plain' (makes one history entry per customer account in
    accts), 'batch', 'pending' (a two-phase reservation: history entry, no balance effect),
    'settle' (post/void of `parent`: a settlement history entry with pending_id)."""
    __slots__ = ("path", "body", "key", "effects", "status", "json", "acked", "applied", "kind", "accts",
                 "parent", "child")

    def __init__(self, path, body, key, effects, kind="plain", accts=(), parent=None):
        self.path, self.body, self.key, self.effects = path, body, key, effects
        self.kind, self.accts, self.parent = kind, accts, parent
        self.child = None
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
        settled_ids = {a: [] for a in cur_of}  # pending ids whose post/void entry is in the history
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
                iteration(ck, srv, rnd, it + 1, accts, cur_of, model, applied_ids, settled_ids, totals)
        log(f"# totals: {totals}")

        with ck.section("final: histories hold every applied transfer exactly once"):
            srv.start()
            srv.wait_ready(30)
            c = srv.client()
            for a in cur_of:
                h, _ = c.paginate(f"/v1/accounts/{a}/transfers", limit=1000)
                got = sorted(e["transfer"]["id"] for e in h if not e["transfer"].get("pending_id"))
                ck.eq(f"account {a}: history = applied transfers (count {len(applied_ids[a])})",
                      got, sorted(applied_ids[a]))
                got = sorted(e["transfer"]["pending_id"] for e in h if e["transfer"].get("pending_id"))
                ck.eq(f"account {a}: one settlement entry per settled pending transfer ({len(settled_ids[a])})",
                      got, sorted(settled_ids[a]))
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
        return Req("/v1/deposits", {"account_id": x, "amount": fmt(amt, cur)}, key, [[(x, amt)]], accts=(x,))
    if op < 0.45:
        return Req("/v1/withdrawals", {"account_id": x, "amount": fmt(amt, cur)}, key, [[(x, -amt)]], accts=(x,))
    if op < 0.8:
        y = r_.choice([i for i in ids if i != x])
        return Req("/v1/transfers", {"debit_account_id": x, "credit_account_id": y, "amount": fmt(amt, cur)},
                   key, [[(x, -amt), (y, amt)]], accts=(x, y))
    if op < 0.9:
        y = r_.choice([i for i in ids if i != x])
        return Req("/v1/transfers", {"debit_account_id": x, "credit_account_id": y, "amount": fmt(amt, cur),
                                     "pending": True}, key, [], kind="pending", accts=(x, y))
    items, effects = [], []
    for _ in range(r_.randrange(2, 5)):
        x, y = r_.sample(ids, 2)
        amt = r_.randrange(1, 3000)
        items.append({"debit_account_id": x, "credit_account_id": y, "amount": fmt(amt, cur)})
        effects.append([(x, -amt), (y, amt)])
    return Req("/v1/transfers/batch", {"atomic": True, "transfers": items}, key, effects, kind="batch")


def make_settlement(r_, q):
    """The post (partial or full) or void of the pending transfer q just created."""
    tid = q.json["id"]
    x, y = q.accts
    cur = q.json["currency"]
    amt = to_minor(q.json["amount"], cur)
    if r_.random() < 0.3:
        s = Req(f"/v1/transfers/{tid}/void", {}, idem_key(), [], kind="settle", accts=(x, y), parent=q)
    else:
        part = r_.randrange(1, amt + 1)
        s = Req(f"/v1/transfers/{tid}/post", {"amount": fmt(part, cur)}, idem_key(), [[(x, -part), (y, part)]],
                kind="settle", accts=(x, y), parent=q)
    q.child = s
    return s


def iteration(ck, srv, rnd, n, accts, cur_of, model, applied_ids, settled_ids, totals):
    # odd rounds take checkpoints (snapshots) often, so kills also land during/after snapshots
    srv.extra_args = ["--snapshot-log-mb", "1"] if n % 2 else []
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
                while q is not None:
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
                    nxt = None
                    if q.kind == "pending" and resp.status == 201 and not stop.is_set():
                        nxt = make_settlement(r_, q)
                    q = nxt
        finally:
            cl.close()

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in ts:
        t.start()
    delay = rnd.uniform(0.2, 1.5)
    time.sleep(delay)
    graceful = n % 5 == 0  # every 5th round: SIGTERM under load instead of kill -9
    if graceful:
        rc = srv.stop(timeout=10)
        ck.eq(f"it{n}: SIGTERM under load exits 0 within 10 s", rc, 0, srv.stderr_tail(300))
    else:
        srv.kill()
    stop.set()
    for t in ts:
        t.join(60)
    ck.check(f"it{n}: load threads ended after kill", not any(t.is_alive() for t in ts))
    ck.check(f"it{n}: only 2xx/422/503 answers under load", not bad, bad[:3])
    flat = [q for lst in reqs for q in lst]
    acked = [q for q in flat if q.acked]
    unacked = [q for q in flat if not q.acked]
    log(f"# it{n}: {'SIGTERM' if graceful else 'SIGKILL'} after {delay:.2f}s, {len(acked)} acknowledged, {len(unacked)} unacknowledged")
    totals["acked"] += len(acked)
    totals["unacked"] += len(unacked)

    torn = not graceful and n % 3 == 0
    if torn:
        # a torn, unacknowledged write at the end of the log: recovery must drop it
        logs = [f for f in os.listdir(srv.data_dir) if f.endswith(".log")]
        if logs:
            path = os.path.join(srv.data_dir, sorted(logs)[-1])
            junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300)))
            with open(path, "ab") as fh:
                fh.write(junk if n % 2 else b"\0" * len(junk))
            log(f"# it{n}: appended {len(junk)} {'random' if n % 2 else 'zero'} bytes to {os.path.basename(path)}")
    if not graceful and n % 4 == 2:
        # crash again during recovery
        srv.start()
        time.sleep(rnd.uniform(0.0, 0.2))
        srv.kill()
        log(f"# it{n}: killed again right after restart")
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
        fields = ["amount", "debit_account_id", "credit_account_id", "kind", "currency"]
        if q.kind != "pending":
            fields.append("status")  # a pending transfer may have been posted/voided since
        if q.kind == "settle" and q.path.endswith("/post"):
            fields.append("posted_amount")
        for f in fields:
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
        elif r.status in (200, 201):
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

    # 2b. pending transfers left without a settlement (the thread died first): void them now
    left = []
    for q in flat:
        if q.kind == "pending" and q.applied and (q.child is None or not q.child.applied):
            if q.child is not None:
                left.append(f"settlement of {q.json.get('id')} not applied: {q.child.status} {q.child.json}")
                continue
            v = Req(f"/v1/transfers/{q.json['id']}/void", {}, idem_key(), [], kind="settle", accts=q.accts, parent=q)
            r = c.post(v.path, v.body, key=v.key)
            if r.status != 200:
                left.append(f"void of leftover pending {q.json['id']} -> {r.describe()}")
                continue
            v.applied, v.json, v.status = True, r.json, r.status
            q.child = v
            flat.append(v)
    ck.check(f"it{n}: every leftover pending transfer can be voided after restart", not left, left[:3])

    # 3. model
    for q in flat:
        if q.applied:
            for eff in q.effects:
                for a, d in eff:
                    model[a] += d
            if q.kind == "batch":
                for x, eff in zip(q.json.get("results", []), q.effects):
                    for a, _ in eff:
                        applied_ids[a].append(x.get("id"))
            elif q.kind == "settle":
                for a in q.accts:
                    settled_ids[a].append(q.parent.json.get("id"))
            else:
                for a in q.accts:
                    applied_ids[a].append(q.json.get("id"))
    diffs = []
    for a, cur in cur_of.items():
        acc = c.account(a)
        if acc["balance"] != fmt(model[a], cur):
            diffs.append(f"account {a}: {acc['balance']}, expected {fmt(model[a], cur)}")
        if to_minor(acc["pending_debits"], cur) or to_minor(acc["pending_credits"], cur):
            diffs.append(f"account {a}: reservations left {acc['pending_debits']} / {acc['pending_credits']}")
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
