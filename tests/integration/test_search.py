#!/usr/bin/env python3
"""Transfer search and receipts (issue 4): GET /v1/transfers with every filter against a
brute-force filter of a client-side model, and GET /v1/transfers/{id}/receipt.

Dataset (seeded): accounts in 4 regions x USD/JPY/BHD owned by two customers and the admin;
~2,500 transfers of every kind (deposits, withdrawals, transfers through batches and single
requests, some by the customers themselves), two-phase ones posted in full, in part, voided,
expired by their timeout or left pending; descriptions and metadata with mixed case, non-ASCII
text and quotes; amounts over a flag rule's threshold (`--config`). Rejected requests (e.g.
insufficient funds in a batch) must never show up.

Rules (`--config`): amounts at or over 5000.00 (JPY 500000) are flagged, BHD at or over
9000.000 is held (a held deposit cleared, a held transfer confirmed, others left under review).

Queries (LEDGER_SEARCH_QUERIES, default 240 random combinations of account_id, kind, status,
region, flagged, min_amount, max_amount, from, to, q, order, limit; as the admin and as each
customer; plus targeted ones): the cursor is followed until null (short and empty pages
allowed), the ids must equal the model's matches exactly once each, newest first (creation
order) or oldest first with order=asc, every item equal to GET /v1/transfers/{id}; paging
newest first while transfers are being created returns what matched at the start. Bad
parameters -> 400. Receipts: content, HTML escaping, CSP header, digest, visibility.

Then LEDGER_SEARCH_BULK (default 106000; 0 skips it) more transfers, so that one request's
bounded scan (100,000 transfers, 20,000 descriptions) ends early: queries whose matches are
far apart get short or empty pages with a cursor and must still return every match once.
Finally the server is stopped (SIGTERM) and killed (SIGKILL), restarted each time on the same
data dir (`--snapshot-log-mb 1`: recovery from a snapshot plus the log), and the same kinds of
queries and a receipt must answer as before. Ends with `ledgerctl verify` and the sanitizer
scan. Fixed seed (LEDGER_TEST_SEED overrides)."""

import html
import math
import os
import random
import re
import sys
import tempfile
import threading
import time
from decimal import Decimal
from urllib.parse import quote

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import (CASH_ID, TIME_RE, Client, Server, final_server_checks, fmt, log,  # noqa: E402
                            run_main, seed_from_env)
from auth_helpers import FAST_ARGON2, RAISED_SIGNIN, make_key, make_user  # noqa: E402

DEFAULT_SEED = 777
N_QUERIES = int(os.environ.get("LEDGER_SEARCH_QUERIES", "240"))
CURS = ["USD", "JPY", "BHD"]
REGIONS = ["us-east", "eu-west", "ap-south", "sa-east"]
DEFAULT_REGION = "eu-west"  # config default_region; eu-west accounts are created without region
# flag rule: USD >= 5000.00, BHD >= 5000.000, JPY >= 500000 (per-currency override)
FLAG_MINOR = {"USD": 500_000, "BHD": 5_000_000, "JPY": 500_000, "CHF": 500_000}
CONFIG = f"""# test_search.py
default_region {DEFAULT_REGION}
rule big amount threshold=5000.00 threshold.JPY=500000 action=flag   # trailing comment
rule hold-bhd amount currency=BHD threshold=9000.000 action=hold
"""
HOLD_BHD = 9_000_000
BULK = int(os.environ.get("LEDGER_SEARCH_BULK", "106000"))  # > 100,000: one request's scan bound
SMALL = {"USD": (1, 30_000), "JPY": (1, 30_000), "BHD": (1, 300_000)}
BIG = {"USD": (500_000, 700_000), "JPY": (500_000, 700_000), "BHD": (5_000_000, 7_000_000)}
XSS = "XSS<script>alert(1)</script>&\"'END"

DESCRIPTIONS = [
    "Rent March", "rent MARCH 2026", "RENT", "Café Zürich", "naïve façade", "Überweisung für Müller",
    "日本円の送金", 'He said "hello"', "O'Brien's invoice", "100% <b>bold</b> & more", "💸 payout",
    "Invoice INV-2026-001", "invoice inv-2026-002", "Groceries", "gRoCeRiEs at the Corner",
    "Salary (net)", "refund: order #4471", "Zebra-42 unicorn food", "a/b\\c", "Ünïcödé Ωmega",
]
META_VALUES = ["INV-2026-001", "zürich", "Ref-ABC", 'quote"d', "x'y", "Priority HIGH", "low",
               "Café", "東京", "ORDER-4471", "n/a", "Zebra"]
META_KEYS = ["ref", "note", "Customer", "tag"]


def ascii_lower(s):
    return "".join(chr(ord(ch) + 32) if "A" <= ch <= "Z" else ch for ch in s)


def uuid7_like():
    """A well-formed UUIDv7 string the server never issued (random bits, old timestamp)."""
    import uuid
    h = "00000001" + "0000" + "7" + uuid.uuid4().hex[:3] + "8" + uuid.uuid4().hex[:3] + uuid.uuid4().hex[:12]
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def held_expected(cur, amt):
    return cur == "BHD" and amt >= HOLD_BHD


class Model:
    def __init__(self):
        self.acct = {}   # id -> dict(cur, region, owner, bal, pdr, floored)
        for cur in CURS:
            self.acct[CASH_ID[cur]] = dict(cur=cur, region="system", owner=0, bal=0, pdr=0, floored=False)
        self.tr = {}     # id -> transfer dict
        self.order = []  # ids in creation order

    def add(self, tid, kind, dr, cr, amt, status, desc=None, meta=None, created_at=None, flags=None):
        cur = self.acct[dr]["cur"]
        region = self.acct[cr]["region"] if kind == "deposit" else self.acct[dr]["region"]
        self.tr[tid] = dict(id=tid, seq=len(self.order), kind=kind, dr=dr, cr=cr, cur=cur, amt=amt, status=status,
                            desc=desc, meta=meta, region=region, created_at=created_at,
                            flag_expected=amt >= FLAG_MINOR[cur] or held_expected(cur, amt),
                            held=held_expected(cur, amt), flagged=None, posted_amt=None)
        self.order.append(tid)
        if status == "posted":
            self.acct[dr]["bal"] -= amt
            self.acct[cr]["bal"] += amt
        else:
            self.acct[dr]["pdr"] += amt

    def would_fail(self, dr, amt):
        a = self.acct[dr]
        return a["floored"] and a["bal"] - a["pdr"] - amt < 0

    def settle(self, tid, posted_amt):
        t = self.tr[tid]
        self.acct[t["dr"]]["pdr"] -= t["amt"]
        if posted_amt:
            self.acct[t["dr"]]["bal"] -= posted_amt
            self.acct[t["cr"]]["bal"] += posted_amt
            t["status"] = "posted"
            t["posted_amt"] = posted_amt
        else:
            t["status"] = "voided"


def main(ck):
    seed = seed_from_env(DEFAULT_SEED)
    rnd = random.Random(seed)
    scratch = tempfile.mkdtemp(prefix="ledger-search-")
    cfg = os.path.join(scratch, "rules.conf")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    # a small snapshot interval: the restarts below recover from a snapshot plus the log tail
    srv = Server(scratch=scratch, extra_args=["--config", cfg, "--snapshot-log-mb", "1"] + FAST_ARGON2 + RAISED_SIGNIN)
    t0 = time.monotonic()
    try:
        srv.start()
        c = srv.client()
        m = Model()
        env = dict(rnd=rnd, srv=srv)
        with ck.section("dataset"):
            build(ck, srv, c, m, env)
            log(f"# dataset: {len(m.order)} transfers in {time.monotonic() - t0:.1f}s")
        with ck.section("model refreshed from GET /v1/transfers/{id}"):
            refresh(ck, c, m, env)
        with ck.section("targeted searches"):
            targeted(ck, srv, c, m, env)
        with ck.section("random searches"):
            t1 = time.monotonic()
            random_queries(ck, srv, c, m, env)
            log(f"# random searches: {time.monotonic() - t1:.1f}s")
        with ck.section("bad parameters"):
            bad_params(ck, srv, c, env)
        with ck.section("receipts"):
            receipts(ck, srv, c, m, env)
        if BULK:
            with ck.section(f"bulk: {BULK} more transfers, bounded scans, short pages"):
                t1 = time.monotonic()
                bulk(ck, srv, c, m, env)
                log(f"# bulk section: {time.monotonic() - t1:.1f}s")
            with ck.section("text searches at once: bounded, none lost, none left counted"):
                text_search_burst(ck, srv, c, m, env)
        # Snapshots taken while the server ran (a forked child each; the parent keeps the tails
        # of the transfer tables out of the child, MADV_DONTFORK) were all written.
        text = srv.stderr_text()
        written = re.findall(r"snapshot at seq \d+ written", text)
        failed = re.findall(r"snapshot at seq \d+ failed.*", text)
        ck.check(f"background snapshots were written ({len(written)}) and none failed", written and not failed,
                 "; ".join(failed[:3]) or "no 'snapshot ... written' line")
        with ck.section("text search rounds ending exactly at a walk's end"):
            text_rounds_edge(ck)
        for how in ("SIGTERM", "SIGKILL"):
            with ck.section(f"the same answers after a restart ({how})"):
                c = restart(ck, srv, c, m, env, how)
        ck.check("no 500 answered during the whole run", not c.seen_500 and not env["seen_500"],
                 "; ".join((c.seen_500 + env["seen_500"])[:5]))
        rc_id = env["rc"]["xss"]
        before = c.get(f"/v1/transfers/{rc_id}/receipt").body
        c.close()
        final_server_checks(ck, srv)
        with ck.section("a snapshot in another format version"):
            other_version(ck, srv, rc_id, before)
        log(f"# total {time.monotonic() - t0:.1f}s")
    finally:
        srv.cleanup()


def other_version(ck, srv, rc_id, before):
    """The newest snapshot's format digit changed ("LGDGSNP" + another digit, as an older
    ledgerd wrote it): `ledgerctl verify` passes and says it did not compare it, and the
    server starts by replaying the whole log, with the same answers."""
    snaps = sorted(f for f in os.listdir(srv.data_dir) if f.startswith("snapshot-") and f.endswith(".snap"))
    ck.check("the clean stop left a snapshot", bool(snaps), str(os.listdir(srv.data_dir)))
    if not snaps:
        return
    path = os.path.join(srv.data_dir, snaps[-1])
    with open(path, "r+b") as f:
        f.seek(7)
        f.write(b"5")
    rc, out = srv.verify()
    ck.eq("verify exits 0 with a snapshot of another format version", rc, 0, out[-300:])
    ck.check("verify says it did not compare it", "another format version" in out, out[-300:])
    srv.start()
    c = srv.client()
    ck.eq("after a restart from the whole log: the receipt is byte-identical",
          c.get(f"/v1/transfers/{rc_id}/receipt").body, before)
    c.close()
    ck.check("the server said why it replayed the whole log",
             "written in another format version" in srv.stderr_text(), srv.stderr_tail(300))
    ck.eq("server exits 0 on SIGTERM", srv.stop(timeout=30), 0, srv.stderr_tail(300))


# ---------------------------------------------------------------------------- dataset

def rand_desc(rnd):
    x = rnd.random()
    if x < 0.55:
        return None
    d = rnd.choice(DESCRIPTIONS)
    if rnd.random() < 0.5:
        d += f" #{rnd.randrange(1000)}"
    return d


def rand_meta(rnd):
    if rnd.random() < 0.7:
        return None
    keys = rnd.sample(META_KEYS, rnd.randrange(1, 4))
    return {k: rnd.choice(META_VALUES) + ("" if rnd.random() < 0.6 else f"-{rnd.randrange(100)}") for k in keys}


def build(ck, srv, c, m, env):
    rnd = env["rnd"]
    a = make_user(srv, c, "search-a")
    b = make_user(srv, c, "search-b")
    _, aud_key = make_key(c, "auditor")
    env.update(custA=a, custB=b, aud_key=aud_key, seen_500=[])
    me = c.get("/v1/me").json or {}
    owners = {"A": a.user_id, "B": b.user_id, "admin": None}
    env["owners"] = owners
    accts = {"A": [], "B": [], "admin": []}
    by_cur = {cur: [] for cur in CURS}
    for who, uid in owners.items():
        for cur in CURS:
            for _ in range(2):
                region = rnd.choice(REGIONS)
                body = {"currency": cur}
                if region != DEFAULT_REGION:
                    body["region"] = region
                if uid is not None:
                    body["owner_id"] = uid
                r = c.post("/v1/accounts", body)
                if r.status != 201:
                    raise AssertionError(f"create account failed: {r.describe()}")
                aid = r.json["id"]
                ck.eq(f"account {aid} region", r.json["region"], region)
                m.acct[aid] = dict(cur=cur, region=r.json["region"], owner=who, bal=0, pdr=0, floored=True)
                accts[who].append(aid)
                by_cur[cur].append(aid)
    env["accts"], env["by_cur"] = accts, by_cur
    log(f"# admin principal: {me}")
    clients = {"A": Client(srv.host, srv.port, token=a.token), "B": Client(srv.host, srv.port, token=b.token),
               "admin": c}
    env["clients"] = clients

    def record(r, kind, dr, cr, amt, desc=None, meta=None):
        if r.status != 201:
            raise AssertionError(f"{kind} failed: {r.describe()}")
        j = r.json
        m.add(j["id"], kind, dr, cr, amt, j["status"], desc, meta, j.get("created_at"))
        return j["id"]

    # deposits: funding, a few over the flag threshold
    for aid in [x for who in accts for x in accts[who]]:
        cur = m.acct[aid]["cur"]
        for i in range(3):
            amt = (BIG[cur][0] + rnd.randrange(1000)) if i == 0 and rnd.random() < 0.5 else rnd.randrange(*SMALL[cur]) * 20
            record(c.deposit(aid, fmt(amt, cur)), "deposit", CASH_ID[cur], aid, amt)
    held_ops(ck, c, m, env, accts, record)
    # the bulk: batches of transfers, as the admin
    pend_ids = []
    rejected = 0
    for _ in range(8):
        items, plan = [], []
        for _ in range(250):
            cur = rnd.choice(CURS)
            dr, cr = rnd.sample(by_cur[cur], 2)
            x = rnd.random()
            amt = rnd.randrange(*BIG[cur]) if x < 0.04 else rnd.randrange(*SMALL[cur])
            it = {"debit_account_id": dr, "credit_account_id": cr, "amount": fmt(amt, cur)}
            desc, meta = rand_desc(rnd), rand_meta(rnd)
            if desc is not None:
                it["description"] = desc
            if meta is not None:
                it["metadata"] = meta
            pend = rnd.random() < 0.1
            if pend:
                it["pending"] = True
            items.append(it)
            plan.append((dr, cr, amt, desc, meta, pend))
        r = c.post("/v1/transfers/batch", {"transfers": items})
        if r.status != 200:
            raise AssertionError(f"batch failed: {r.describe()}")
        for (dr, cr, amt, desc, meta, pend), res in zip(plan, r.json["results"]):
            if res.get("status") == "error":
                rejected += 1
                continue
            m.add(res["id"], "transfer", dr, cr, amt, res["status"], desc, meta)
            if pend:
                pend_ids.append(res["id"])
    log(f"# batches: {rejected} items rejected (must not be found)")
    ck.check("some batch items were rejected (so that their absence is tested)", rejected > 0, rejected)
    # singles: withdrawals (admin and customers), customer transfers, pendings with descriptions
    for i in range(90):
        who = rnd.choice(["A", "B", "admin"])
        aid = rnd.choice(accts[who])
        cur = m.acct[aid]["cur"]
        amt = rnd.randrange(*SMALL[cur])
        if m.would_fail(aid, amt):
            continue
        r = clients[who if i % 2 else "admin"].withdraw(aid, fmt(amt, cur))
        record(r, "withdrawal", aid, CASH_ID[cur], amt)
    for i in range(120):
        who = rnd.choice(["A", "B"])
        dr = rnd.choice(accts[who])
        cur = m.acct[dr]["cur"]
        cr = rnd.choice([x for x in by_cur[cur] if x != dr])
        amt = rnd.randrange(*SMALL[cur])
        if m.would_fail(dr, amt):
            continue
        desc, meta = rand_desc(rnd), rand_meta(rnd)
        kw = {}
        if desc is not None:
            kw["description"] = desc
        if meta is not None:
            kw["metadata"] = meta
        pend = i % 5 == 0
        if pend:
            kw["pending"] = True
        tid = record(clients[who].transfer(dr, cr, fmt(amt, cur), **kw), "transfer", dr, cr, amt, desc, meta)
        if pend:
            pend_ids.append(tid)
    expiring = []
    for i in range(6):
        cur = rnd.choice(CURS)
        dr, cr = rnd.sample(by_cur[cur], 2)
        amt = rnd.randrange(*SMALL[cur])
        if m.would_fail(dr, amt):
            continue
        tid = record(c.transfer(dr, cr, fmt(amt, cur), pending=True, timeout_s=1, description="expiring soon"),
                     "transfer", dr, cr, amt, "expiring soon")
        expiring.append(tid)
    # settle the pendings: full post, partial post, void, stay pending
    for tid in pend_ids:
        t = m.tr[tid]
        x = rnd.random()
        if x < 0.3:
            r = c.post(f"/v1/transfers/{tid}/post", {})
            ok = r.status == 200 and r.json.get("status") == "posted"
            if ok:
                m.settle(tid, t["amt"])
        elif x < 0.55:
            p = rnd.randrange(1, t["amt"] + 1)
            r = c.post(f"/v1/transfers/{tid}/post", {"amount": fmt(p, t["cur"])})
            ok = r.status == 200 and r.json.get("status") == "posted"
            if ok:
                m.settle(tid, p)
        elif x < 0.8:
            r = c.post(f"/v1/transfers/{tid}/void")
            ok = r.status == 200 and r.json.get("status") == "voided"
            if ok:
                m.settle(tid, 0)
        else:
            continue
        if not ok:
            ck.check(f"settle pending {tid}", False, r.describe())
    env["expiring"] = expiring
    # receipts' own transfers (made here so that they are part of every search too)
    a_usd = [x for x in accts["A"] if m.acct[x]["cur"] == "USD"][0]
    adm_usd = [x for x in accts["admin"] if m.acct[x]["cur"] == "USD"][0]
    b_bhd = [x for x in accts["B"] if m.acct[x]["cur"] == "BHD"][0]
    adm_bhd = [x for x in accts["admin"] if m.acct[x]["cur"] == "BHD"][0]
    env["rc"] = rc = {}
    for aid, amt in ((a_usd, 20_000), (adm_usd, 2_000), (adm_bhd, 10_000)):  # funds for the receipts' transfers
        cur = m.acct[aid]["cur"]
        record(c.deposit(aid, fmt(amt, cur)), "deposit", CASH_ID[cur], aid, amt)
    rc["xss"] = record(clients["A"].transfer(a_usd, adm_usd, "123.45", description=XSS, metadata={"ref": "<i>x</i>"}),
                       "transfer", a_usd, adm_usd, 12345, XSS, {"ref": "<i>x</i>"})
    uni = "Café Zürich — 日本円 💸 \"q\""
    rc["uni"] = record(c.transfer(adm_bhd, b_bhd, "1.25", description=uni), "transfer", adm_bhd, b_bhd, 1250, uni)
    rc["pending"] = record(c.transfer(adm_usd, a_usd, "7.50", pending=True), "transfer", adm_usd, a_usd, 750)
    rc["deposit"] = record(c.deposit(b_bhd, "2.5"), "deposit", CASH_ID["BHD"], b_bhd, 2500)
    rc["withdrawal"] = record(clients["B"].withdraw(b_bhd, "0.125"), "withdrawal", b_bhd, CASH_ID["BHD"], 125)
    rc["a_usd"], rc["adm_usd"], rc["b_bhd"] = a_usd, adm_usd, b_bhd
    time.sleep(2.2)  # the 1 s timeouts pass
    for cl in (clients["A"], clients["B"]):
        env["seen_500"].extend(cl.seen_500)


def review(ck, c, tid, decision):
    items, _ = c.paginate("/v1/suspicious?status=open&rule=hold-bhd", limit=1000)
    e = next((x for x in items if x.get("transfer_id") == tid), None)
    if not ck.check(f"open hold-bhd entry for {tid}", e is not None):
        return False
    r = c.post(f"/v1/suspicious/{e['id']}/review", {"decision": decision})
    return ck.status(f"review {decision} of held {tid} -> 200", r, 200)


def held_ops(ck, c, m, env, accts, record):
    """Transfers held by the hold-bhd rule: a deposit cleared (posted), a transfer confirmed
    (voided), a transfer and a batch item left under review (pending)."""
    h1, h2 = [x for x in accts["admin"] if m.acct[x]["cur"] == "BHD"][:2]
    a_bhd = [x for x in accts["A"] if m.acct[x]["cur"] == "BHD"][0]
    b_bhd = [x for x in accts["B"] if m.acct[x]["cur"] == "BHD"][0]
    for _ in range(7):
        record(c.deposit(h2, "4500.000"), "deposit", CASH_ID["BHD"], h2, 4_500_000)
    d = record(c.deposit(h1, "9500.000"), "deposit", CASH_ID["BHD"], h1, 9_500_000)
    t1 = record(c.transfer(h2, a_bhd, "9000.000", description="held then confirmed"), "transfer", h2, a_bhd,
                9_000_000, "held then confirmed")
    t2 = record(c.transfer(h2, b_bhd, "9100.000", metadata={"note": "Held Open"}), "transfer", h2, b_bhd, 9_100_000,
                None, {"note": "Held Open"})
    r = c.post("/v1/transfers/batch", {"transfers": [{"debit_account_id": h2, "credit_account_id": h1,
                                                      "amount": "9200.000", "description": "held batch item"}]})
    res = ((r.json or {}).get("results") or [{}])[0]
    ck.eq("a batch item over the hold threshold -> status pending (held)", res.get("status"), "pending")
    if res.get("status") == "pending":
        m.add(res["id"], "transfer", h2, h1, 9_200_000, "pending", "held batch item")
    ck.eq("held deposit/transfers are pending", [m.tr[x]["status"] for x in (d, t1, t2)], ["pending"] * 3)
    if review(ck, c, d, "clear"):
        m.settle(d, 9_500_000)
    if review(ck, c, t1, "confirm"):
        m.settle(t1, 0)


def list_form(obj):
    """A transfer as lists render it: docs/rules.md keeps `risk` to GET /v1/transfers/{id}
    (and creation, post, void); lists carry `flags` only."""
    o = dict(obj or {})
    o.pop("risk", None)
    return o


def refresh(ck, c, m, env):
    """GET every transfer: created_at and flags into the model; the rest must equal it."""
    env["objs"] = objs = {}
    bad, flag_bad, rv_bad, risk_bad = [], [], [], []
    for tid in m.order:
        t = m.tr[tid]
        r = c.get(f"/v1/transfers/{tid}")
        if r.status != 200:
            bad.append((tid, r.describe()))
            continue
        j = r.json
        objs[tid] = list_form(j)
        risk = j.get("risk")
        if t["held"] or t["flag_expected"]:
            want_risk = ("hold-bhd", "hold") if t["held"] else ("big", "flag")
            if not isinstance(risk, dict) or (risk.get("rule"), risk.get("action")) != want_risk \
                    or not isinstance(risk.get("suspicious_id"), int):
                risk_bad.append((tid, risk, want_risk))
        elif risk is not None:
            risk_bad.append((tid, risk, None))
        if tid in env["expiring"] and t["status"] == "pending" and j.get("status") == "voided" and j.get("expired"):
            m.settle(tid, 0)
        want = dict(kind=t["kind"], status=t["status"], amount=fmt(t["amt"], t["cur"]), currency=t["cur"],
                    debit_account_id=t["dr"], credit_account_id=t["cr"], description=t["desc"], metadata=t["meta"])
        got = {k: j.get(k) for k in want}
        if got != want:
            bad.append((tid, got, want))
        if t["posted_amt"] is not None and j.get("posted_amount") != fmt(t["posted_amt"], t["cur"]):
            bad.append((tid, "posted_amount", j.get("posted_amount"), fmt(t["posted_amt"], t["cur"])))
        flagged = "suspicious" in (j.get("flags") or [])
        want_flags = ["suspicious", "held"] if t["held"] else ["suspicious"] if t["flag_expected"] else None
        if j.get("flags") != want_flags or (want_flags is None and "flags" in j):
            flag_bad.append((tid, t["amt"], t["cur"], j.get("flags")))
        if j.get("rules_version") != 1:
            rv_bad.append((tid, j.get("rules_version")))
        t["flagged"] = flagged
        t["created_at"] = j.get("created_at")
        if t["created_at"] is None or not TIME_RE.match(str(t["created_at"])):
            bad.append((tid, "created_at", t["created_at"]))
    ck.check(f"all {len(m.order)} transfers read back equal to the model", not bad, bad[:3])
    ck.check("flags ['suspicious'] on the transfers at or over the flag threshold, ['suspicious','held'] on held "
             "ones (also once reviewed), no key otherwise",
             not flag_bad, flag_bad[:4])
    ck.check("every transfer carries rules_version 1", not rv_bad, rv_bad[:3])
    ck.check("GET /v1/transfers/{id}: risk {suspicious_id, rule, action} on flagged/held transfers only "
             "(docs/rules.md)", not risk_bad, risk_bad[:3])
    n_flag = sum(1 for t in m.tr.values() if t["flagged"])
    ck.check("the dataset has flagged and unflagged transfers", 0 < n_flag < len(m.tr), n_flag)
    expired = [tid for tid in env["expiring"] if m.tr[tid]["status"] == "voided"]
    ck.eq("the pending transfers with timeout_s 1 are voided (expired)", len(expired), len(env["expiring"]))
    seq_sorted = sorted(m.order, key=lambda i: (m.tr[i]["created_at"], i))
    ck.check("creation order = (created_at, id) order", seq_sorted == m.order,
             next(((a, b) for a, b in zip(seq_sorted, m.order) if a != b), None))
    stats = {}
    for t in m.tr.values():
        stats[(t["kind"], t["status"])] = stats.get((t["kind"], t["status"]), 0) + 1
    log(f"# dataset by (kind, status): {sorted(stats.items())}")


# ---------------------------------------------------------------------------- query engine

def visible_to(m, who):
    if who in (None, "admin", "auditor"):
        return lambda t: True
    return lambda t: m.acct[t["dr"]]["owner"] == who or m.acct[t["cr"]]["owner"] == who


def q_matches(t, q, fold):
    ql = fold(q)
    if t["desc"] is not None and ql in fold(t["desc"]):
        return True
    return any(ql in fold(v) for v in (t["meta"] or {}).values())


def expected(m, params, who, fold=ascii_lower):
    vis = visible_to(m, who)
    out = []
    for tid in m.order:
        t = m.tr[tid]
        if not vis(t):
            continue
        if "account_id" in params and int(params["account_id"]) not in (t["dr"], t["cr"]):
            continue
        if "kind" in params and t["kind"] != params["kind"]:
            continue
        if "status" in params and t["status"] != params["status"]:
            continue
        if "region" in params and t["region"] != params["region"]:
            continue
        if "flagged" in params and t["flagged"] != (params["flagged"] == "true"):
            continue
        amount = Decimal(fmt(t["amt"], t["cur"]))
        if "min_amount" in params and amount < Decimal(params["min_amount"]):
            continue
        if "max_amount" in params and amount > Decimal(params["max_amount"]):
            continue
        if "from" in params and t["created_at"] < params["from"]:
            continue
        if "to" in params and t["created_at"] >= params["to"]:
            continue
        if "q" in params and not q_matches(t, params["q"], fold):
            continue
        out.append(tid)
    if params.get("order") != "asc":
        out.reverse()
    return out


def qs(params):
    return "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())


def follow(client, params, limit, max_pages=5000):
    """Follows next_cursor until null. Returns (ids, items, pages, problem or None)."""
    ids, items, pages, empty = [], [], 0, 0
    cursor = None
    while True:
        p = dict(params)
        if limit is not None:
            p["limit"] = limit
        if cursor is not None:
            p["cursor"] = cursor
        path = "/v1/transfers" + ("?" + qs(p) if p else "")
        r = client.get(path)
        pages += 1
        if r.status != 200 or not isinstance(r.json, dict) or not isinstance(r.json.get("data"), list):
            return ids, items, pages, f"page {pages}: {path} -> {r.describe()}"
        data = r.json["data"]
        if len(data) > (limit or 50):
            return ids, items, pages, f"page {pages} has {len(data)} items > limit {limit or 50}"
        if not data:
            empty += 1
        items.extend(data)
        ids.extend(x.get("id") for x in data)
        if "next_cursor" not in r.json:
            return ids, items, pages, f"page {pages}: no next_cursor key"
        cursor = r.json["next_cursor"]
        if cursor is None:
            return ids, items, pages, None
        if not isinstance(cursor, str) or not cursor:
            return ids, items, pages, f"page {pages}: next_cursor {cursor!r} is not a non-empty string"
        if pages >= max_pages:
            return ids, items, pages, f"more than {max_pages} pages"


def describe_diff(m, got, want):
    dup = sorted({x for x in got if got.count(x) > 1})[:3] if len(got) < 5000 else []
    gs, ws = set(got), set(want)
    extra = [x for x in got if x not in ws][:3]
    missing = [x for x in want if x not in gs][:3]

    def brief(tid):
        t = m.tr.get(tid)
        if not t:
            return f"{tid} (not in model)"
        return (f"{tid} {t['kind']}/{t['status']} {fmt(t['amt'], t['cur'])} {t['cur']} {t['dr']}->{t['cr']} "
                f"{t['region']} flagged={t['flagged']} {t['created_at']} desc={t['desc']!r} meta={t['meta']}")
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return (f"got {len(got)} want {len(want)}; first difference at {first}; duplicates {dup}; "
            f"extra {[brief(x) for x in extra]}; missing {[brief(x) for x in missing]}")


def run_query(ck, m, env, client, who, params, limit, name):
    want = expected(m, params, who)
    got, items, pages, problem = follow(client, params, limit)
    label = f"{name} [{who}] {qs(params)} limit={limit}: {len(want)} results"
    if problem:
        return ck.check(label, False, problem)
    ok = ck.check(label + f" in {pages} pages", got == want, describe_diff(m, got, want))
    objs = env["objs"]
    bulk_ids = env.get("bulk_ids", ())
    diff = [(x.get("id"), x, objs.get(x.get("id"))) for x in items
            if x.get("id") not in bulk_ids and x != objs.get(x.get("id"))]
    env["item_mismatch"].extend(diff)
    env["queries"] += 1
    env["pages"] += pages
    return ok


def targeted(ck, srv, c, m, env):
    env.update(item_mismatch=[], queries=0, pages=0)
    rnd = env["rnd"]
    clients = env["clients"]
    a_acct = env["accts"]["A"][0]
    run_query(ck, m, env, c, "admin", {}, 1000, "everything (limit 1000)")
    run_query(ck, m, env, c, "admin", {"order": "asc"}, 1000, "everything oldest first")
    run_query(ck, m, env, c, "admin", {}, None, "everything (default limit 50)")
    r = c.get("/v1/transfers")
    ck.eq("default page holds at most 50", len((r.json or {}).get("data", [])) <= 50, True)
    ck.check("default page: next_cursor is a string (more than 50 transfers)",
             isinstance((r.json or {}).get("next_cursor"), str), (r.json or {}).get("next_cursor"))
    run_query(ck, m, env, c, "admin", {"account_id": a_acct}, 3, "one account")
    run_query(ck, m, env, c, "admin", {"account_id": CASH_ID["USD"]}, 50, "cash:USD (deposits and withdrawals)")
    for kind in ("transfer", "deposit", "withdrawal"):
        run_query(ck, m, env, c, "admin", {"kind": kind}, 997, f"kind={kind}")
    for status in ("posted", "pending", "voided"):
        run_query(ck, m, env, c, "admin", {"status": status}, 500, f"status={status}")
    for region in REGIONS + ["system", "nowhere"]:
        run_query(ck, m, env, c, "admin", {"region": region}, 400, f"region={region}")
    run_query(ck, m, env, c, "admin", {"flagged": "true"}, 7, "flagged=true")
    run_query(ck, m, env, c, "admin", {"flagged": "false"}, 1000, "flagged=false")
    # amount bounds inclusive, exact amounts of existing transfers
    t = m.tr[rnd.choice(m.order)]
    amt = fmt(t["amt"], t["cur"])
    run_query(ck, m, env, c, "admin", {"min_amount": amt, "max_amount": amt}, 5, "min_amount = max_amount = an amount")
    run_query(ck, m, env, c, "admin", {"min_amount": "5000", "kind": "deposit"}, 5, "big deposits")
    # fractional bounds against a 0-digit currency (JPY) and a 3-digit one (BHD)
    run_query(ck, m, env, c, "admin", {"min_amount": "100.5", "max_amount": "200.25"}, 50,
              "min_amount=100.5 max_amount=200.25 (exact comparison in each currency)")
    run_query(ck, m, env, c, "admin", {"min_amount": "1.0005"}, 1000, "min_amount with 4 fraction digits")
    # time window: from inclusive, to exclusive, on exact created_at values
    ts = sorted({m.tr[x]["created_at"] for x in m.order})
    lo, hi = ts[len(ts) // 3], ts[2 * len(ts) // 3]
    run_query(ck, m, env, c, "admin", {"from": lo, "to": hi}, 7, "from/to on exact created_at values")
    run_query(ck, m, env, c, "admin", {"from": hi, "order": "asc"}, 100, "from only, asc")
    run_query(ck, m, env, c, "admin", {"to": lo}, 100, "to only")
    run_query(ck, m, env, c, "admin", {"from": "2000-01-01T00:00:00.000Z", "to": "2000-01-02T00:00:00.000Z"}, 10,
              "a window without transfers")
    # q: case-insensitive substring of description or metadata values (not keys)
    for q in ("rent", "RENT", "Rent March", "café", "Zürich", "zür", "日本", "\"hello\"", "o'brien", "<b>", "&", "%",
              "💸", "inv-2026", "ref-abc", "customer", "#", "/", "\\", "e\"d", "x'y", "Ω", "held open"):
        run_query(ck, m, env, c, "admin", {"q": q}, 25, f"q={q!r}")
    run_query(ck, m, env, c, "admin", {"q": "a" * 64}, 5, "q of 64 chars")
    run_query(ck, m, env, c, "admin", {"q": "é" * 33}, 5, "q of 33 two-byte chars (66 bytes; the spec counts chars)")
    # Unicode case folding is not specified: report what the server does
    for q in ("überweisung", "ÜBERWEISUNG", "CAFÉ", "ünïcödé ωmega"):
        got, _, _, problem = follow(c, {"q": q}, 1000)
        a_ids = expected(m, {"q": q}, "admin", ascii_lower)
        u_ids = expected(m, {"q": q}, "admin", str.lower)
        how = ("ASCII and Unicode folding agree" if got == a_ids == u_ids else "ASCII-only folding" if got == a_ids else "Unicode folding" if got == u_ids
               else f"neither ({len(got)} results; ASCII {len(a_ids)}, Unicode {len(u_ids)}; {problem})")
        log(f"# note: q={q!r} -> {how}")
        env.setdefault("fold_notes", []).append((q, how))
        ck.check(f"q={q!r} (non-ASCII case) answers either ASCII-only or Unicode case folding",
                 got in (a_ids, u_ids), how)
    # customers
    for who in ("A", "B"):
        run_query(ck, m, env, clients[who], who, {}, 6, f"customer {who}: everything visible")
        own = env["accts"][who][0]
        run_query(ck, m, env, clients[who], who, {"account_id": own, "order": "asc"}, 4, f"customer {who}: own account")
    # a customer naming someone else's account: 404 or only transfers touching their own accounts
    other = env["accts"]["B"][0]
    got, _, _, problem = follow(clients["A"], {"account_id": other}, 100)
    vis = visible_to(m, "A")
    if problem and " 404 " in problem:
        ck.check("customer A, account_id of B's account -> 404 (as for a foreign account)", True)
    else:
        ok = problem is None and all(x in m.tr and vis(m.tr[x]) and other in (m.tr[x]["dr"], m.tr[x]["cr"])
                                     for x in got)
        ck.check("customer A, account_id of B's account -> 404 or only A's transfers with that account", ok,
                 problem or got[:3])
        inter = [x for x in m.order if vis(m.tr[x]) and other in (m.tr[x]["dr"], m.tr[x]["cr"])]
        log(f"# note: customer A with B's account_id -> 200 with {len(got)} transfers "
            f"({len(inter)} of A's visible transfers touch that account)")
    aud = Client(srv.host, srv.port, token=env["aud_key"])
    run_query(ck, m, env, aud, "auditor", {"kind": "withdrawal"}, 40, "auditor sees everything")
    aud.close()
    paging_while_writing(ck, c, m, env)


def paging_while_writing(ck, c, m, env):
    """Newest first with a cursor while new transfers are created between pages: the walk
    continues below the cursor, so it returns exactly what matched when it started."""
    for params in ({}, {"kind": "deposit"}):
        want = expected(m, params, "admin")
        got, pages, cursor, new = [], 0, None, 0
        while True:
            p = dict(params, limit=37)
            if cursor:
                p["cursor"] = cursor
            r = c.get("/v1/transfers?" + qs(p))
            if r.status != 200:
                ck.status("search page while writing", r, 200)
                return
            got.extend(x["id"] for x in r.json["data"])
            pages += 1
            cursor = r.json.get("next_cursor")
            if cursor is None or pages > 500:
                break
            if pages % 5 == 1:  # a new deposit between pages
                aid = env["accts"]["admin"][pages % len(env["accts"]["admin"])]
                cur = m.acct[aid]["cur"]
                r = c.deposit(aid, fmt(1, cur))
                if r.status == 201:
                    m.add(r.json["id"], "deposit", CASH_ID[cur], aid, 1, "posted", created_at=r.json["created_at"])
                    m.tr[r.json["id"]]["flagged"] = False
                    env["objs"][r.json["id"]] = list_form(c.get(f"/v1/transfers/{r.json['id']}").json)
                    new += 1
        ck.check(f"newest-first paging ({qs(params) or 'no filter'}) with {new} deposits created meanwhile: "
                 f"exactly the {len(want)} transfers that matched at the start", got == want,
                 describe_diff(m, got, want))


def rand_time(rnd, m):
    t = m.tr[rnd.choice(m.order)]["created_at"]
    if rnd.random() < 0.3:  # one ms later: just after a created_at
        ms = int(t[20:23]) + 1
        if ms < 1000:
            t = t[:20] + f"{ms:03d}Z"
    return t


def rand_amount(rnd, m):
    x = rnd.random()
    if x < 0.4:
        t = m.tr[rnd.choice(m.order)]
        return fmt(t["amt"], t["cur"])
    if x < 0.8:
        return str(rnd.choice([1, 2, 5, 10, 50, 100, 150, 200, 250, 300, 1000, 5000, 6000]))
    return f"{rnd.randrange(1, 300)}.{rnd.randrange(100):02d}"


def rand_q(rnd, m):
    """A substring of some description or metadata value, ASCII case scrambled; or a pool word."""
    texts = [t["desc"] for t in m.tr.values() if t["desc"]] + \
            [v for t in m.tr.values() for v in (t["meta"] or {}).values()]
    if rnd.random() < 0.3:
        return rnd.choice(["rent", "INVOICE", "zebra", "gro", "CAF", "ü", "日本", "\"", "'", "&", "<", "#1",
                           "nothing-matches-this", "-2", "ref", "e"])
    s = rnd.choice(texts)
    i = rnd.randrange(len(s))
    j = min(len(s), i + rnd.randrange(1, 12))
    q = s[i:j]
    return "".join(ch.upper() if ch.isascii() and rnd.random() < 0.5 else ch for ch in q) or "a"


def random_queries(ck, srv, c, m, env):
    rnd = env["rnd"]
    clients = env["clients"]
    all_accts = [x for who in env["accts"] for x in env["accts"][who]]
    skipped = 0
    done = 0
    attempts = 0
    while done < N_QUERIES and attempts < N_QUERIES * 3:
        attempts += 1
        who = rnd.choices(["admin", "A", "B"], weights=[6, 2, 2])[0]
        p = {}
        if rnd.random() < 0.3:
            if who == "admin":
                p["account_id"] = rnd.choice(all_accts + [CASH_ID[rnd.choice(CURS)]])
            else:
                p["account_id"] = rnd.choice(env["accts"][who])
        if rnd.random() < 0.3:
            p["kind"] = rnd.choice(["transfer", "deposit", "withdrawal"])
        if rnd.random() < 0.3:
            p["status"] = rnd.choice(["posted", "pending", "voided"])
        if rnd.random() < 0.25:
            p["region"] = rnd.choice(REGIONS)
        if rnd.random() < 0.2:
            p["flagged"] = rnd.choice(["true", "false"])
        if rnd.random() < 0.2:
            p["min_amount"] = rand_amount(rnd, m)
        if rnd.random() < 0.2:
            p["max_amount"] = rand_amount(rnd, m)
        if rnd.random() < 0.2:
            p["from"] = rand_time(rnd, m)
        if rnd.random() < 0.2:
            p["to"] = rand_time(rnd, m)
        if rnd.random() < 0.35:
            p["q"] = rand_q(rnd, m)
            if expected(m, p, who, ascii_lower) != expected(m, p, who, str.lower):
                skipped += 1  # depends on Unicode case folding (not specified): not asked
                continue
        if rnd.random() < 0.4:
            p["order"] = "asc"
        keys = list(p)
        rnd.shuffle(keys)
        p = {k: p[k] for k in keys}
        n = len(expected(m, p, who))
        if rnd.random() < 0.08:
            limit = None
        elif n <= 40:
            limit = rnd.randrange(1, 8)
        else:
            limit = min(1000, rnd.randrange(math.ceil(n / 25), math.ceil(n / 8) + 1))
        run_query(ck, m, env, c if who == "admin" else clients[who], who, p, limit, f"random #{done}")
        done += 1
    log(f"# {done} random queries ({skipped} skipped: Unicode case folding), {env['queries']} queries and "
        f"{env['pages']} pages in all")
    ck.check(f"at least 200 random queries ran ({done})", done >= 200)
    mm = env["item_mismatch"]
    ck.check("every search item equals GET /v1/transfers/{id} (without `risk`, docs/rules.md)", not mm,
             f"{len(mm)} items differ, e.g. {mm[:2]}")
    for cl in (clients["A"], clients["B"]):
        env["seen_500"].extend(cl.seen_500)


def bad_params(ck, srv, c, env):
    cases = [("kind=refund", "bad kind"), ("status=done", "bad status"),
             ("status=held", "status held (not a status)"), ("flagged=yes", "flagged=yes"),
             ("flagged=1", "flagged=1"), ("min_amount=abc", "min_amount=abc"), ("min_amount=1e3", "min_amount=1e3"),
             ("min_amount=-5", "negative min_amount"), ("max_amount=1.2.3", "max_amount=1.2.3"),
             ("max_amount=%205", "max_amount with a space"), ("q=", "empty q"),
             ("q=" + "a" * 65, "q of 65 chars"), ("limit=0", "limit=0"), ("limit=1001", "limit=1001"),
             ("limit=abc", "limit=abc"), ("limit=-1", "limit=-1"), ("cursor=garbage", "bad cursor"),
             ("cursor=%21%21", "bad cursor (!!)"), ("from=yesterday", "from=yesterday"),
             ("from=2026-13-01T00:00:00.000Z", "from month 13"), ("to=2026-02-30T00:00:00.000Z", "to Feb 30"),
             ("to=garbage", "to=garbage"), ("account_id=abc", "account_id=abc"), ("account_id=-1", "account_id=-1"),
             ("account_id=0", "account_id=0")]
    codes = {}
    for query, name in cases:
        r = c.get(f"/v1/transfers?{query}")
        ck.status(f"search {name} -> 400", r, 400)
        codes.setdefault(r.code, []).append(name)
    log(f"# error codes of bad search parameters: {codes}")
    ck.check("bad search parameters answer invalid_request (spec) -- or the list endpoints' "
             "invalid_parameter / invalid_cursor / invalid_id",
             set(codes) <= {"invalid_request", "invalid_parameter", "invalid_cursor", "invalid_id", "invalid_amount"},
             codes)
    env["bad_param_codes"] = codes
    anon = srv.anon_client()
    ck.status("anonymous search -> 401", anon.get("/v1/transfers"), 401, "unauthorized")
    anon.close()


# ---------------------------------------------------------------------------- bulk

def bulk(ck, srv, c, m, env):
    """BULK CHF transfers among 4 admin accounts in region bulk-zone, 1/4 with a description,
    a needle word in 3 of them (start, middle, end), a few pending and flagged ones; then two
    withdrawals. Queries whose matches are far apart must page through short or empty pages
    and still return every match exactly once, in order."""
    rnd = env["rnd"]
    m.acct.setdefault(CASH_ID["CHF"], dict(cur="CHF", region="system", owner=0, bal=0, pdr=0, floored=False))
    accts = []
    for _ in range(4):
        r = c.post("/v1/accounts", {"currency": "CHF", "region": "bulk-zone"})
        accts.append(r.json["id"])
        m.acct[r.json["id"]] = dict(cur="CHF", region="bulk-zone", owner="admin", bal=0, pdr=0, floored=True)
    first_ts = None
    deposits = []
    for a in accts:
        r = c.deposit(a, "1000000.00")
        m.add(r.json["id"], "deposit", CASH_ID["CHF"], a, 100_000_000, r.json["status"],
              created_at=r.json["created_at"])
        m.tr[r.json["id"]]["flagged"] = "suspicious" in (r.json.get("flags") or [])
        deposits.append(r.json["id"])
        first_ts = first_ts or r.json["created_at"]
    needles = {5, BULK // 2, BULK - 7}
    flagged_at = {BULK // 5, BULK // 3, (3 * BULK) // 4}
    sent, undated = 0, []
    while sent < BULK:
        n = min(8190, BULK - sent)
        items, plan = [], []
        for k in range(sent, sent + n):
            dr, cr = rnd.sample(accts, 2)
            amt = 600_000 if k in flagged_at else rnd.randrange(1, 100)
            it = {"debit_account_id": dr, "credit_account_id": cr, "amount": fmt(amt, "CHF")}
            desc = None
            if k in needles:
                desc = f"bulk line {k} NeedLe-7Q"
            elif k % 4 == 0:
                desc = f"bulk line {k}"
            if desc:
                it["description"] = desc
            pend = k % 10007 == 3
            if pend:
                it["pending"] = True
            items.append(it)
            plan.append((dr, cr, amt, desc, pend))
        r = c.post("/v1/transfers/batch", {"transfers": items})
        if r.status != 200:
            raise AssertionError(f"bulk batch failed: {r.describe()}")
        for (dr, cr, amt, desc, pend), res in zip(plan, r.json["results"]):
            if res.get("status") == "error":
                raise AssertionError(f"bulk item refused: {res}")
            m.add(res["id"], "transfer", dr, cr, amt, res["status"], desc)
            undated.append(res["id"])
        sent += n
    for a in accts[:2]:
        r = c.withdraw(a, "1.00")
        m.add(r.json["id"], "withdrawal", a, CASH_ID["CHF"], 100, r.json["status"], created_at=r.json["created_at"])
        undated.append(r.json["id"])
    # created_at of every bulk item, from the accounts' histories
    seen = {}
    for a in accts:
        items, _ = c.paginate(f"/v1/accounts/{a}/transfers?from={quote(first_ts)}", limit=1000)
        for e in items:
            tr = e["transfer"]
            if not tr.get("pending_id"):
                seen[tr["id"]] = (tr["created_at"], tr.get("flags"))
    missing = [x for x in undated if x not in seen]
    ck.check("every bulk transfer is in its accounts' histories", not missing, missing[:3])
    for x in undated:
        if x in seen:
            t = m.tr[x]
            t["created_at"], flags = seen[x]
            t["flagged"] = "suspicious" in (flags or [])
    bad_flags = [x for x in undated if x in seen and m.tr[x]["flagged"] != m.tr[x]["flag_expected"]]
    ck.check("bulk: flagged exactly the items over the threshold", not bad_flags, bad_flags[:3])
    env["bulk_ids"] = set(undated) | set(deposits)
    env["short_pages"] = 0
    bulk_acct = accts[0]
    ts = sorted({m.tr[x]["created_at"] for x in undated if x in seen})  # distinct times
    log(f"# bulk: {len(undated)} transfers over {len(ts)} distinct created_at values")
    queries = [("admin", {"q": "needle-7q"}, 10), ("admin", {"q": "NEEDLE-7Q", "order": "asc"}, 2),
               ("admin", {"kind": "withdrawal"}, 5), ("admin", {"kind": "deposit", "region": "bulk-zone"}, 3),
               ("admin", {"status": "pending", "region": "bulk-zone", "order": "asc"}, 7),
               ("admin", {"flagged": "true", "account_id": bulk_acct}, 4), ("admin", {"flagged": "true"}, 9),
               ("admin", {"min_amount": "50.00", "max_amount": "60.00"}, 6),
               ("admin", {"from": ts[len(ts) // 3], "to": ts[(2 * len(ts)) // 3], "q": "LINE 5"}, 1000),
               ("admin", {"account_id": bulk_acct, "status": "pending"}, 1),
               ("admin", {"region": "sa-east", "kind": "transfer", "order": "asc"}, 500),
               ("admin", {"flagged": "true", "from": ts[3], "order": "asc"}, 2),
               ("admin", {"flagged": "true", "to": ts[10]}, 3),
               ("admin", {"flagged": "true", "from": ts[2], "to": ts[12], "region": "bulk-zone"}, 1),
               ("admin", {"account_id": bulk_acct, "from": ts[5], "to": ts[9]}, 1000),
               ("admin", {"account_id": bulk_acct, "q": "needle", "order": "asc"}, 1),
               ("admin", {"flagged": "false", "region": "bulk-zone", "kind": "deposit"}, 2),
               ("A", {"q": "needle"}, 3), ("B", {"kind": "deposit"}, 5), ("A", {"flagged": "true"}, 2),
               ("B", {"status": "pending", "order": "asc"}, 2)]
    for who, params, limit in queries:
        cl = c if who == "admin" else env["clients"][who]
        want = expected(m, params, who)
        got, pages, short, problem = follow_counting(cl, params, limit)
        env["short_pages"] += short
        label = f"bulk [{who}] {qs(params)} limit={limit}: {len(want)} results in {pages} pages ({short} short)"
        ck.check(label, problem is None and got == want, problem or describe_diff(m, got, want))
    log(f"# bulk: {env['short_pages']} short or empty pages with a non-null next_cursor seen")


def text_search_burst(ck, srv, c, m, env):
    """More q searches at once than the server holds candidate buffers for (32): each one
    answers 200 or 503 overloaded, never anything else; a plain write still goes through while
    they run (the engine reads no description); and once they are done, text searches are
    answered again (no buffer left counted), with the right results."""
    n = 48
    statuses, lock = [], threading.Lock()

    def one():
        cl = Client(srv.host, srv.port, token=c.token)
        r = cl.get("/v1/transfers?" + qs({"q": "nothing-has-this-text", "limit": 50}))
        cl.close()
        with lock:
            statuses.append((r.status, r.json.get("error", {}).get("code") if r.status != 200 and r.json else None))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    a = env["accts"]["A"][0]
    w = c.get(f"/v1/accounts/{a}")
    ck.check("a read answers while the text searches run", w.status == 200, w.describe())
    for t in threads:
        t.join()
    bad = [x for x in statuses if x[0] != 200 and x != (503, "overloaded")]
    ok = sum(1 for x in statuses if x[0] == 200)
    log(f"# text search burst: {ok} of {n} answered 200, {n - ok} 503 overloaded")
    ck.check(f"{n} text searches at once: each 200 or 503 overloaded", len(statuses) == n and not bad and ok > 0,
             bad[:3])
    for round_ in range(2):
        for q in ("needle-7q", "nothing-has-this-text"):
            want = expected(m, {"q": q}, "admin")
            got, pages, short, problem = follow_counting(c, {"q": q}, 50)
            ck.check(f"after the burst ({round_ + 1}): q={q!r} answers, {len(want)} results",
                     problem is None and got == want, problem or describe_diff(m, got, want))


def text_rounds_edge(ck):
    """A text search gathers candidates in rounds of 64, then 128, ... When the candidates
    left are exactly a round's room, the walk fills it and then meets its end: the search
    must stop there, not start over from the newest (which returned a match twice). One
    account with 64 described transfers (one round), one with 192 (two), one match each."""
    srv = Server(extra_args=FAST_ARGON2)
    try:
        srv.start()
        c = srv.client()
        f = c.post("/v1/accounts", {"currency": "USD"}).json["id"]
        c.deposit(f, "100000.00")
        for n in (64, 192, 65, 191):
            a = c.post("/v1/accounts", {"currency": "USD"}).json["id"]
            items = [{"debit_account_id": f, "credit_account_id": a, "amount": "0.01",
                      "description": ("zebra rent" if k == n // 2 else f"line {k}")} for k in range(n)]
            r = c.post("/v1/transfers/batch", {"transfers": items})
            ck.check(f"{n} described transfers into one account", r.status == 200, r.describe())
            for limit in (10, 1):
                got, pages, short, problem = follow_counting(c, {"q": "zebra", "account_id": a}, limit)
                ck.check(f"{n} candidates, limit {limit}: the one match, once ({pages} pages)",
                         problem is None and len(got) == 1, problem or got)
            got, _, _, problem = follow_counting(c, {"q": "line", "account_id": a}, 7)
            ck.check(f"{n} candidates: every other one matches 'line' once, in order",
                     problem is None and len(got) == n - 1 and len(set(got)) == n - 1, problem or len(got))
        c.close()
    finally:
        srv.cleanup()


def follow_counting(client, params, limit, max_pages=20000):
    ids, pages, short = [], 0, 0
    cursor = None
    while True:
        p = dict(params, limit=limit)
        if cursor is not None:
            p["cursor"] = cursor
        r = client.get("/v1/transfers?" + qs(p))
        pages += 1
        if r.status != 200:
            return ids, pages, short, f"page {pages}: {r.describe()}"
        data = r.json["data"]
        ids.extend(x["id"] for x in data)
        cursor = r.json.get("next_cursor")
        if cursor is None:
            return ids, pages, short, None
        if len(data) < limit:
            short += 1
        if pages >= max_pages:
            return ids, pages, short, "too many pages"


# ---------------------------------------------------------------------------- restarts

def restart(ck, srv, c, m, env, how):
    """Stops (SIGTERM) or kills (SIGKILL) the server, starts it on the same data dir, and asks
    the same kinds of questions: the search state (regions, flags, descriptions read from the
    log, suspicious entries) and receipts must come back identical."""
    rc_id = env["rc"]["xss"]
    before = c.get(f"/v1/transfers/{rc_id}/receipt").body
    # a cursor taken before the restart, followed after it
    cur_params = {"q": "rent", "order": "asc"}
    r = c.get("/v1/transfers?" + qs(dict(cur_params, limit=5)))
    first_ids = [x["id"] for x in (r.json or {}).get("data", [])]
    old_cursor = (r.json or {}).get("next_cursor")
    for cl in env["clients"].values():
        env["seen_500"].extend(cl.seen_500)
        cl.close()
    if c is not env["clients"]["admin"]:
        env["seen_500"].extend(c.seen_500)
    c.close()
    log(f"# data dir before {how}: {sorted(os.listdir(srv.data_dir))}")
    if how == "SIGTERM":
        ck.eq("server exits 0 on SIGTERM", srv.stop(timeout=30), 0, srv.stderr_tail(300))
    else:
        srv.kill()
    srv.start()
    c = srv.client()
    env["clients"] = {"A": Client(srv.host, srv.port, token=env["custA"].token),
                      "B": Client(srv.host, srv.port, token=env["custB"].token), "admin": c}
    after = c.get(f"/v1/transfers/{rc_id}/receipt").body
    ck.eq(f"after {how}: the receipt is byte-identical", after, before)
    if old_cursor:
        got, _, _, problem = follow(c, dict(cur_params, cursor=old_cursor), 7)
        want = expected(m, cur_params, "admin")
        ck.check(f"after {how}: a cursor from before the restart continues where it stopped",
                 problem is None and first_ids + got == want, problem or describe_diff(m, first_ids + got, want))
    env["item_mismatch"] = []
    rnd = env["rnd"]
    ts = sorted({m.tr[x]["created_at"] for x in m.order if x not in env.get("bulk_ids", ())})
    queries = [("admin", {"q": "zür"}, 7), ("admin", {"q": "NEEDLE-7q"}, 2), ("admin", {"q": "held open"}, 1),
               ("admin", {"flagged": "true", "order": "asc"}, 13), ("admin", {"status": "pending"}, 9),
               ("admin", {"region": "sa-east", "kind": "withdrawal"}, 3),
               ("admin", {"account_id": env["accts"]["A"][1], "q": "e"}, 4),
               ("admin", {"from": ts[len(ts) // 4], "to": ts[len(ts) // 2], "min_amount": "10", "max_amount": "200"}, 50),
               ("A", {"q": "rent"}, 5), ("B", {"flagged": "true"}, 3), ("A", {"status": "voided", "order": "asc"}, 2)]
    for who, params, limit in queries:
        run_query(ck, m, env, c if who == "admin" else env["clients"][who], who, params, limit, f"after {how}")
    mm = env["item_mismatch"]
    ck.check(f"after {how}: every search item equals GET /v1/transfers/{{id}} as before", not mm, mm[:2])
    for who in ("A", "B"):
        env["seen_500"].extend(env["clients"][who].seen_500)
        env["clients"][who].seen_500 = []
    return c


# ---------------------------------------------------------------------------- receipts

DIGEST_RE = re.compile(rb"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")


def receipt_checks(ck, c, m, env, tid, name):
    r = c.get(f"/v1/transfers/{tid}/receipt")
    if not ck.status(f"receipt {name}: 200", r, 200):
        return None
    ctype = r.headers.get("content-type", "")
    ck.eq(f"receipt {name}: content-type", ctype.replace(" ", "").lower(), "text/html;charset=utf-8")
    ck.check(f"receipt {name}: Content-Security-Policy default-src 'none' (docs/rules.md)",
             "default-src 'none'" in r.headers.get("content-security-policy", ""), r.headers)
    body = r.body
    text = html.unescape(body.decode("utf-8", errors="replace"))
    t = m.tr[tid]
    o = env["objs"].get(tid) or c.get(f"/v1/transfers/{tid}").json
    need = {"id": tid, "amount": fmt(t["amt"], t["cur"]), "currency": t["cur"], "status": t["status"],
            "kind": t["kind"], "created_at": o.get("created_at")}
    missing = [k for k, v in need.items() if v not in text]
    for side in ("dr", "cr"):
        if not re.search(rf"(?<![0-9]){t[side]}(?![0-9])", text):
            missing.append(f"{side} account {t[side]}")
    ck.check(f"receipt {name}: has id, amount, currency, status, kind, both account ids, created_at", not missing,
             f"missing {missing}")
    digests = DIGEST_RE.findall(body)
    ck.check(f"receipt {name}: a 64-hex digest", len(digests) >= 1, body[:300])
    ck.check(f"receipt {name}: starts like an HTML page", body.lstrip()[:15].lower().startswith((b"<!doctype", b"<html")),
             body[:60])
    return digests[0] if digests else None, body


def receipts(ck, srv, c, m, env):
    rc = env["rc"]
    clients = env["clients"]
    out = receipt_checks(ck, c, m, env, rc["xss"], "with <script> in the description")
    if out:
        _, body = out
        ck.check("receipt: <script> of the description is not in the page raw", b"<script>alert(1)</script>" not in body,
                 body[:400])
        ck.check("receipt: <script> escaped as &lt;script&gt;", b"&lt;script&gt;alert(1)&lt;/script&gt;" in body)
        seg = re.search(rb"XSS(.*?)END", body, re.S)
        ck.check("receipt: the description between XSS..END unescapes to itself",
                 seg is not None and html.unescape(seg.group(1).decode()) == XSS[3:-3], seg and seg.group(1))
        if seg:
            s = seg.group(1)
            ck.check("receipt: & escaped as &amp;", b"&amp;" in s and b"&\"" not in s and b"&'" not in s, s)
            ck.check("receipt: \" and ' escaped (&quot;/&#34; and &#39;/&#x27;/&apos;)",
                     b"\"" not in s and b"'" not in s, s)
        ck.check("receipt: metadata (if shown) is escaped too", b"<i>x</i>" not in body, body[:400])
    out = receipt_checks(ck, c, m, env, rc["uni"], "with a non-ASCII description")
    if out:
        _, body = out
        ck.check("receipt: the non-ASCII description is in the page (UTF-8 or entities)",
                 m.tr[rc["uni"]]["desc"] in html.unescape(body.decode("utf-8", errors="replace")), body[:400])
    receipt_checks(ck, c, m, env, rc["deposit"], "of a deposit (BHD)")
    receipt_checks(ck, c, m, env, rc["withdrawal"], "of a withdrawal (BHD)")
    d1 = receipt_checks(ck, c, m, env, rc["pending"], "of a pending transfer")
    d1b = receipt_checks(ck, c, m, env, rc["pending"], "of a pending transfer, again")
    if d1 and d1b:
        ck.eq("receipt digest is deterministic", d1b[0], d1[0])
    r = c.post(f"/v1/transfers/{rc['pending']}/post", {"amount": "5.00"})
    if ck.status("post the receipt's pending transfer in part -> 200", r, 200):
        m.settle(rc["pending"], 500)
        env["objs"][rc["pending"]] = list_form(c.get(f"/v1/transfers/{rc['pending']}").json)
        d2 = receipt_checks(ck, c, m, env, rc["pending"], "of the same transfer now posted")
        if d1 and d2:
            ck.check("receipt digest changes when the status changes", d1[0] != d2[0], d1[0])
    dx = receipt_checks(ck, c, m, env, rc["deposit"], "of the deposit, again")
    if d1 and dx:
        ck.check("two transfers have different digests", dx[0] != d1[0])
    # visibility
    ck.status("receipt of A's own transfer, as A -> 200", clients["A"].get(f"/v1/transfers/{rc['xss']}/receipt"), 200)
    ck.status("receipt of A's transfer (A -> admin account), as B -> 404",
              clients["B"].get(f"/v1/transfers/{rc['xss']}/receipt"), 404)
    ck.status("GET /v1/transfers/{id} of that transfer, as B -> 404 (the same visibility)",
              clients["B"].get(f"/v1/transfers/{rc['xss']}"), 404)
    ck.status("receipt of a transfer crediting B (admin -> B), as B -> 200",
              clients["B"].get(f"/v1/transfers/{rc['uni']}/receipt"), 200)
    ck.status("receipt of the admin->B transfer, as A -> 404", clients["A"].get(f"/v1/transfers/{rc['uni']}/receipt"), 404)
    aud = Client(srv.host, srv.port, token=env["aud_key"])
    ck.status("receipt as the auditor -> 200", aud.get(f"/v1/transfers/{rc['xss']}/receipt"), 200)
    aud.close()
    ck.status("receipt of an unknown (well-formed) id -> 404", c.get(f"/v1/transfers/{uuid7_like()}/receipt"), 404)
    real = rc["xss"]
    other_ms = "00000002-0000" + real[13:]
    ck.status("receipt of a real position with a wrong timestamp -> 404", c.get(f"/v1/transfers/{other_ms}/receipt"),
              404)
    beyond = real[:24] + "0000ffffffff"
    ck.status("receipt of a position past the end -> 404", c.get(f"/v1/transfers/{beyond}/receipt"), 404)
    g = c.get("/v1/transfers/not-a-uuid")
    r = c.get("/v1/transfers/not-a-uuid/receipt")
    ck.check(f"receipt of a malformed id -> 400 invalid_id like GET /v1/transfers/not-a-uuid ({g.status} {g.code})",
             (r.status, r.code) == (g.status, g.code) or r.status in (400, 404), r.describe())
    log(f"# note: malformed id: GET transfer -> {g.status} {g.code}; receipt -> {r.status} {r.code}")
    ck.status("receipt of a malformed id -> 400 (docs/api.md: malformed ids are 400 invalid_id)", r, 400, "invalid_id")
    anon = srv.anon_client()
    ck.status("anonymous receipt -> 401", anon.get(f"/v1/transfers/{real}/receipt"), 401)
    anon.close()
    ck.status("POST receipt -> 405", c.post(f"/v1/transfers/{real}/receipt", {}), 405)
    for cl in (clients["A"], clients["B"]):
        env["seen_500"].extend(cl.seen_500)
        cl.close()


if __name__ == "__main__":
    run_main(main)
