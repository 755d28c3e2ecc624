#!/usr/bin/env python3
"""Settlements (issue 4): a randomized, seeded workload over three days of the testing clock
(`--time-offset-s 0`, then a restart on the same data dir at 86400, then 172800), checked
against a client-side model of every accepted money movement:
  - per (date, region, currency): count, volume, deposits, withdrawals, recomputed exactly in
    integer minor units from the movements the server accepted (batch results say which items
    succeeded; rejections count nothing). A movement's date is the server's: created_at of
    the transfer (history pages for batch items), the post response's updated_at for a
    two-phase post, the review's reviewed_at for a held transfer that is cleared;
  - GET /v1/settlements?date= (and region=, currency=, both, default date = today) after each
    day, for every day so far, and GET /v1/reports/settlements.csv?from=&to= (header, CRLF,
    sort order, every row);
  - balances of every account against the model, sum of balances zero per currency;
  - validation (bad date, from > to, > 366 days, missing bounds), roles (customer 403,
    auditor 200, anonymous 401);
  - clean stop, `ledgerctl verify` (recomputes settlements) exits 0, no sanitizer report.
Day 0 ends with SIGTERM, day 1 with SIGKILL (day 2 recovers by replay), day 2 with SIGTERM;
`--snapshot-log-mb 2` makes the restarts recover from a snapshot plus the log tail. A fourth
run starts the clock a few seconds before a UTC midnight (after day 2) and keeps moving money
across it: movements split by their own created_at, pendings created before midnight count
on the new day when posted after it.
Workload: LEDGER_SETTLE_TRANSFERS (default 100000) transfers, mostly through
POST /v1/transfers/batch (8190 items per request), across 3 regions x USD/JPY/BHD, plus
single deposits and withdrawals (some refused for insufficient funds), two-phase transfers
posted in full, in part, voided, posted on a later day, expired by a restart, and transfers
held by a rule (`--config`) then cleared or confirmed on the same or a later day (a client
pending transfer that is also held, a held batch item, a held deposit and withdrawal), an
idempotent repeat (counted once), a flagged transfer's review (counts nothing more), atomic
batches that abort (nothing counts; no row opened by an aborted item remains). Fixed seed
(LEDGER_TEST_SEED overrides); runs in about 11 s on the ASan+UBSan build."""

import csv
import io
import os
import random
import sys
import tempfile
import time
from datetime import date as Date, datetime, timedelta, timezone

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import (CASH_ID, TIME_RE, Client, Server, final_server_checks, fmt,  # noqa: E402
                            log, run_main, seed_from_env, to_minor)
from auth_helpers import FAST_ARGON2, RAISED_SIGNIN, make_key, make_user  # noqa: E402

N_TRANSFERS = int(os.environ.get("LEDGER_SETTLE_TRANSFERS", "100000"))
DEFAULT_SEED = 4242
BATCH_MAX = 8190
DAY_S = 86400
CURS = ["USD", "JPY", "BHD"]
# Created in this order (not alphabetical) so that a sort by region creation order shows.
REGIONS = ["us-east", "eu-west", "ap-south"]
DEFAULT_REGION = "ap-south"  # from the config file; ap-south accounts are created without region
ACCTS_PER_CELL = 3           # accounts per (region, currency)
CSV_HEADER = "date,region,currency,count,volume,deposits,withdrawals"
ROW_KEYS = {"date", "region", "currency", "count", "volume", "deposits", "withdrawals"}

# Rules: the built-in flag (JPY threshold raised so the bulk is never flagged) and a hold on
# large BHD amounts, used deliberately (bulk BHD amounts stay below 5000.000).
CONFIG = f"""# test_settlements.py
default_region {DEFAULT_REGION}
rule large-amount amount threshold=10000.00 threshold.JPY=1000000 action=flag
rule bhd-hold amount currency=BHD threshold=5000.000 action=hold
"""
HOLD_MINOR = 5_000_000  # BHD 5000.000

# Per currency, in minor units: initial deposit per account, ordinary amounts, large amounts
# (which often exceed the available balance).
INITIAL = {"USD": 300_000, "JPY": 300_000, "BHD": 1_500_000}
SMALL = {"USD": (1, 20_000), "JPY": (1, 20_000), "BHD": (1, 200_000)}
LARGE = {"USD": (100_000, 900_000), "JPY": (100_000, 900_000), "BHD": (1_000_000, 4_999_999)}


def day_of(ts):
    return ts[:10]


def minus_hours(ts, h):
    t = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc) - timedelta(hours=h)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class Model:
    """Accounts (balance, pending debits/credits, floor), settlement aggregates and the
    transfers whose date is still unknown (batch items until their created_at is read)."""

    def __init__(self):
        self.acct = {}  # id -> dict(cur, region, bal, pdr, pcr, floored)
        for cur in CURS:
            self.acct[CASH_ID[cur]] = dict(cur=cur, region="system", bal=0, pdr=0, pcr=0, floored=False)
        self.agg = {}       # (date, region, cur) -> [count, volume, deposits, withdrawals]
        self.undated = {}   # transfer id -> (region, cur, amount, kind)
        self.pending = {}   # transfer id -> dict(dr, cr, cur, amt, kind, held)
        self.dates = set()
        self.movements = 0

    def add_account(self, aid, cur, region):
        self.acct[aid] = dict(cur=cur, region=region, bal=0, pdr=0, pcr=0, floored=True)

    def available(self, aid):
        a = self.acct[aid]
        return a["bal"] - a["pdr"]

    def would_fail(self, dr, amt):
        a = self.acct[dr]
        return a["floored"] and a["bal"] - a["pdr"] - amt < 0

    def region_of(self, kind, dr, cr):
        return self.acct[cr]["region"] if kind == "deposit" else self.acct[dr]["region"]

    def count(self, date, region, cur, amt, kind):
        k = (date, region, cur)
        row = self.agg.setdefault(k, [0, 0, 0, 0])
        row[0] += 1
        row[1] += amt
        if kind == "deposit":
            row[2] += amt
        elif kind == "withdrawal":
            row[3] += amt
        self.dates.add(date)
        self.movements += 1

    def posted(self, tid, kind, dr, cr, amt, created_at=None):
        """A movement that posted at creation; created_at None = date resolved later."""
        self.acct[dr]["bal"] -= amt
        self.acct[cr]["bal"] += amt
        region, cur = self.region_of(kind, dr, cr), self.acct[dr]["cur"]
        if created_at is None:
            self.undated[tid] = (region, cur, amt, kind)
        else:
            self.count(day_of(created_at), region, cur, amt, kind)

    def reserve(self, tid, kind, dr, cr, amt, held=False):
        self.acct[dr]["pdr"] += amt
        self.acct[cr]["pcr"] += amt
        self.pending[tid] = dict(dr=dr, cr=cr, cur=self.acct[dr]["cur"], amt=amt, kind=kind, held=held)

    def settle(self, tid, posted_amt, when):
        """Post (posted_amt > 0, at `when`) or void (posted_amt 0) of a pending transfer."""
        p = self.pending.pop(tid)
        self.acct[p["dr"]]["pdr"] -= p["amt"]
        self.acct[p["cr"]]["pcr"] -= p["amt"]
        if posted_amt:
            self.acct[p["dr"]]["bal"] -= posted_amt
            self.acct[p["cr"]]["bal"] += posted_amt
            self.count(day_of(when), self.region_of(p["kind"], p["dr"], p["cr"]), p["cur"], posted_amt, p["kind"])

    def rows(self, date_from=None, date_to=None, region=None, currency=None):
        out = []
        for (d, r, c), (n, vol, dep, wd) in self.agg.items():
            if date_from is not None and d < date_from:
                continue
            if date_to is not None and d > date_to:
                continue
            if region is not None and r != region:
                continue
            if currency is not None and c != currency:
                continue
            out.append({"date": d, "region": r, "currency": c, "count": n, "volume": fmt(vol, c),
                        "deposits": fmt(dep, c), "withdrawals": fmt(wd, c)})
        out.sort(key=lambda x: (x["date"], x["region"], x["currency"]))
        return out


def row_key(x):
    return (x.get("date"), x.get("region"), x.get("currency"))


def diff_rows(got, want):
    g = {row_key(x): x for x in got}
    w = {row_key(x): x for x in want}
    out = []
    for k in sorted(set(g) | set(w), key=lambda t: tuple(str(v) for v in t)):
        if g.get(k) != w.get(k):
            out.append(f"{k}: got {g.get(k)} want {w.get(k)}")
    return "; ".join(out[:6]) + (f" (+{len(out) - 6} more)" if len(out) > 6 else "")


def main(ck):
    seed = seed_from_env(DEFAULT_SEED)
    rnd = random.Random(seed)
    log(f"# {N_TRANSFERS} transfers over 3 days (LEDGER_SETTLE_TRANSFERS)")
    scratch = tempfile.mkdtemp(prefix="ledger-settle-")
    cfg = os.path.join(scratch, "rules.conf")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    # small snapshot interval: restarts recover from a snapshot plus the log tail
    base_args = ["--config", cfg, "--snapshot-log-mb", "2"] + FAST_ARGON2 + RAISED_SIGNIN
    srv = Server(scratch=scratch, extra_args=base_args + ["--time-offset-s", "0"])
    m = Model()
    st = dict(seed=seed, rnd=rnd, cfg=cfg)
    t0 = time.monotonic()
    try:
        for day in range(3):
            srv.extra_args = base_args + ["--time-offset-s", str(day * DAY_S)]
            srv.start()
            c = srv.client()
            with ck.section(f"day {day}: workload"):
                run_day(ck, srv, c, m, st, day)
            with ck.section(f"day {day}: settlements match the model"):
                compare_all(ck, srv, c, m, st, day)
            if day == 0:
                with ck.section("validation and roles"):
                    validation(ck, srv, c, st)
            ck.check(f"day {day}: no 500 answered", not c.seen_500, "; ".join(c.seen_500[:3]))
            c.close()
            log(f"# day {day} done at {time.monotonic() - t0:.1f}s")
            log(f"# data dir: {sorted(os.listdir(srv.data_dir))}")
            if day in (0, 2):
                rc = srv.stop(timeout=30)
                ck.eq(f"day {day}: server exits 0 on SIGTERM", rc, 0, srv.stderr_tail(300))
            elif day == 1:
                srv.kill()  # day 2 starts from a crash: settlements rebuilt by replaying the log
                log("# day 1 ended with SIGKILL")
        with ck.section("a UTC midnight"):
            midnight(ck, srv, base_args, m, st)
        log(f"# data dir: {sorted(os.listdir(srv.data_dir))}")
        final_server_checks(ck, srv)
        log(f"# total {time.monotonic() - t0:.1f}s for {N_TRANSFERS} transfers")
    finally:
        srv.cleanup()


# ---------------------------------------------------------------------------- workload

def midnight(ck, srv, base_args, m, st):
    """Restart with the clock a few seconds before a UTC midnight (later than day 2: the
    engine's clock never goes back) and keep moving money across it: each movement counts on
    the day of its own created_at (or post time); a pending created before midnight and
    posted after it counts on the new day."""
    rnd = st["rnd"]
    now = time.time()
    e = now + 2 * DAY_S
    mid = (int(e) // DAY_S + 1) * DAY_S
    if mid - e < 30:
        mid += DAY_S
    offset = int(mid - now) - 4
    srv.extra_args = base_args + ["--time-offset-s", str(offset)]
    srv.start()
    c = srv.client()
    st["day_first_ts"] = None
    accts = st["accts"]
    before, crossed_at, pend_before = None, None, []
    t_end = time.monotonic() + 20
    while time.monotonic() < t_end:
        a = rnd.choice(accts["all"])
        cur = m.acct[a]["cur"]
        r = c.deposit(a, fmt(rnd.randrange(1, 1000), cur))
        if r.status != 201:
            raise AssertionError(f"deposit failed: {r.describe()}")
        ts = r.json["created_at"]
        st["day_first_ts"] = st["day_first_ts"] or ts
        m.posted(r.json["id"], "deposit", CASH_ID[cur], a, to_minor(r.json["amount"], cur), ts)
        before = before or day_of(ts)
        if day_of(ts) == before:
            cur = rnd.choice(CURS)
            dr, cr = rnd.sample(accts["by_cur"][cur], 2)
            amt = rnd.randrange(*SMALL[cur])
            if not m.would_fail(dr, amt):
                r = c.transfer(dr, cr, fmt(amt, cur), pending=True)
                if r.status == 201:
                    m.reserve(r.json["id"], "transfer", dr, cr, amt)
                    pend_before.append(r.json["id"])
        elif crossed_at is None:
            crossed_at = time.monotonic()
        items, plan = make_batch(rnd, m, accts, 40)
        r = c.post("/v1/transfers/batch", {"transfers": items})
        for (dr, cr, cur, amt, pend), res in zip(plan, (r.json or {}).get("results", [])):
            if res.get("status") == "posted":
                m.posted(res["id"], "transfer", dr, cr, amt)
            elif res.get("status") == "pending":
                m.reserve(res["id"], "transfer", dr, cr, amt)
                st["leftover"].append(res["id"])
        if crossed_at is not None and time.monotonic() - crossed_at > 1.5:
            break
        time.sleep(0.05)
    ck.check("the workload ran across a UTC midnight of the testing clock", crossed_at is not None,
             f"started on {before}, offset {offset}")
    crossed = 0
    for tid in pend_before:
        r = c.post(f"/v1/transfers/{tid}/post", {})
        if r.status == 200 and day_of(r.json.get("updated_at", "")) != day_of(r.json.get("created_at", "")):
            crossed += 1
        if r.status == 200:
            m.settle(tid, m.pending[tid]["amt"], r.json.get("updated_at") or r.json.get("created_at"))
        else:
            ck.status(f"post {tid} after midnight", r, 200)
    ck.check("pending transfers created before midnight were posted after it", crossed > 0 or crossed_at is None,
             f"{crossed} of {len(pend_before)}")
    resolve_dates(ck, c, m, st, 3)
    compare_all(ck, srv, c, m, st, 3)
    ck.check("midnight: no 500 answered", not c.seen_500, "; ".join(c.seen_500[:3]))
    c.close()


def run_day(ck, srv, c, m, st, day):
    rnd = st["rnd"]
    if day == 0:
        setup(ck, srv, c, m, st)
    else:
        ck.eq(f"day {day}: GET /v1/rules keeps version 1 after the restart",
              (c.get("/v1/rules").json or {}).get("version"), 1)
        expire_check(ck, c, m, st, day)
    st["day_first_ts"] = None

    def note_ts(ts):
        if st["day_first_ts"] is None:
            st["day_first_ts"] = ts

    accts = st["accts"]
    # --- single deposits (the first request of the day fixes the day's history window)
    for i in range(27 if day == 0 else 10):
        a = accts["all"][i] if day == 0 else rnd.choice(accts["all"])
        cur = m.acct[a]["cur"]
        amt = INITIAL[cur] if day == 0 else rnd.randrange(*SMALL[cur]) * 10
        r = c.deposit(a, fmt(amt, cur))
        if r.status != 201:
            raise AssertionError(f"deposit failed: {r.describe()}")
        note_ts(r.json["created_at"])
        m.posted(r.json["id"], "deposit", CASH_ID[cur], a, amt, r.json["created_at"])
    if day == 0:
        held_setup(ck, c, m, st)
    # --- single withdrawals: some too large -> 422, nothing counted
    refused = 0
    for _ in range(12):
        a = rnd.choice(accts["all"])
        cur = m.acct[a]["cur"]
        amt = rnd.randrange(*SMALL[cur]) if rnd.random() < 0.7 else m.available(a) + rnd.randrange(1, 1000)
        if cur == "BHD":
            amt = min(amt, HOLD_MINOR - 1)
        r = c.withdraw(a, fmt(amt, cur))
        if m.would_fail(a, amt):
            refused += 1
            ck.status(f"day {day}: withdrawal above the available balance -> 422 insufficient_funds", r, 422,
                      "insufficient_funds")
            continue
        if r.status != 201:
            raise AssertionError(f"withdrawal failed: {r.describe()}")
        m.posted(r.json["id"], "withdrawal", a, CASH_ID[cur], amt, r.json["created_at"])
    # --- two-phase singles (pendings of an earlier day first: posted or voided today)
    settle_leftovers(ck, c, m, st, day)
    two_phase_singles(ck, c, m, st, day)
    # --- held transfers: reviews due today
    held_day(ck, c, m, st, day)
    # --- the bulk: batches
    budget = N_TRANSFERS // 3 - 60  # the singles above are about 60 a day
    batch_pendings = []
    mism, accepted, rejected, sent = 0, 0, 0, 0
    tb = time.monotonic()
    while sent < budget:
        n = min(BATCH_MAX, budget - sent)
        items, plan = make_batch(rnd, m, accts, n)
        r = c.post("/v1/transfers/batch", {"transfers": items})
        if r.status != 200 or len((r.json or {}).get("results", [])) != n:
            raise AssertionError(f"batch of {n} failed: {r.describe()}")
        for it, (dr, cr, cur, amt, pend), res in zip(items, plan, r.json["results"]):
            predicted_fail = m.would_fail(dr, amt)
            if res.get("status") == "error":
                rejected += 1
                if not predicted_fail:
                    mism += 1
                    if mism <= 3:
                        log(f"# unexpected batch error {res} for {it}")
                continue
            if predicted_fail or res.get("status") != ("pending" if pend else "posted"):
                mism += 1
                if mism <= 3:
                    log(f"# unexpected batch result {res} for {it} (available {m.available(dr)})")
            accepted += 1
            if res.get("status") == "pending":
                m.reserve(res["id"], "transfer", dr, cr, amt)
                batch_pendings.append(res["id"])
            else:
                m.posted(res["id"], "transfer", dr, cr, amt)
        sent += n
    log(f"# day {day}: {sent} batch items in {time.monotonic() - tb:.1f}s: {accepted} accepted, "
        f"{rejected} rejected")
    ck.eq(f"day {day}: every batch item's outcome matches a sequential model (insufficient funds "
          f"exactly where the available balance is short)", mism, 0)
    ck.check(f"day {day}: the workload had both accepted and rejected batch items", accepted > 0 and rejected > 0,
             f"{accepted} accepted, {rejected} rejected")
    # atomic batches: one that fails (nothing counts), one that succeeds
    atomic_batches(ck, c, m, accts, day, rnd)
    if day == 2:
        atomic_abort_new_rows(ck, c, m)
    # the batch pendings: post full, post part, void, leave for tomorrow
    for tid in batch_pendings:
        x = rnd.random()
        if x < 0.35:
            post(ck, c, m, tid, None)
        elif x < 0.6:
            post(ck, c, m, tid, rnd.randrange(1, m.pending[tid]["amt"] + 1))
        elif x < 0.8:
            void(ck, c, m, tid)
        else:
            st["leftover"].append(tid)
    resolve_dates(ck, c, m, st, day)


def setup(ck, srv, c, m, st):
    rnd = st["rnd"]
    r = c.get("/v1/rules")
    ck.status("GET /v1/rules 200", r, 200)
    ck.eq("rule set from --config: version 1", (r.json or {}).get("version"), 1)
    ck.eq("rule set from --config: default_region", (r.json or {}).get("default_region"), DEFAULT_REGION)
    accts = {"all": [], "by_cur": {cur: [] for cur in CURS}}
    for region in REGIONS:
        for cur in CURS:
            for _ in range(ACCTS_PER_CELL):
                body = {"currency": cur}
                if region != DEFAULT_REGION:
                    body["region"] = region
                r = c.post("/v1/accounts", body)
                if r.status != 201:
                    raise AssertionError(f"create account failed: {r.describe()}")
                aid = r.json["id"]
                accts["all"].append(aid)
                accts["by_cur"][cur].append(aid)
                m.add_account(aid, cur, r.json["region"])
    got = {m.acct[a]["region"] for a in accts["all"]}
    ck.eq("accounts created without region take the config's default_region", got, set(REGIONS))
    # the account used for held BHD movements (kept out of the bulk)
    r = c.post("/v1/accounts", {"currency": "BHD", "region": "us-east"})
    st["bhd_rich"] = r.json["id"]
    m.add_account(st["bhd_rich"], "BHD", "us-east")
    st["accts"] = accts
    st["leftover"] = []  # pending ids to settle on a later day
    st["timeout_pending"] = None
    st["held"] = {}
    st["cust"] = make_user(srv, c, "settle-cust")
    _, key = make_key(c, "auditor")
    st["auditor_key"] = key


def held_setup(ck, c, m, st):
    """Day 0: fund bhd_rich below the hold threshold, make three held transfers."""
    rich = st["bhd_rich"]
    for _ in range(7):
        r = c.deposit(rich, "4000.000")
        ck.status("BHD deposit 4000.000 (below the hold threshold) 201 posted", r, 201)
        ck.eq("BHD deposit 4000.000 not held", (r.json or {}).get("status"), "posted")
        m.posted(r.json["id"], "deposit", CASH_ID["BHD"], rich, 4_000_000, r.json["created_at"])
    dst = st["accts"]["by_cur"]["BHD"]
    for name, amt, credit in (("h-clear-day0", 6_000_000, dst[0]), ("h-clear-day1", 5_000_000, dst[4]),
                              ("h-confirm-day1", 7_500_000, dst[7])):
        r = c.transfer(rich, credit, fmt(amt, "BHD"))
        ck.status(f"held transfer {name} -> 201", r, 201)
        t = r.json or {}
        ck.eq(f"held transfer {name}: status pending", t.get("status"), "pending")
        ck.eq(f"held transfer {name}: flags suspicious+held", t.get("flags"), ["suspicious", "held"])
        m.reserve(t["id"], "transfer", rich, credit, amt, held=True)
        st["held"][name] = t["id"]
    # a client two-phase transfer that a rule also holds: the review clears the hold, the
    # client posts it (tomorrow): it counts on the post's day, with the posted amount
    r = c.transfer(rich, dst[2], "6500.000", pending=True)
    t = r.json or {}
    ck.eq("pending:true over the hold threshold: status pending, flags suspicious+held",
          (r.status, t.get("status"), t.get("flags")), (201, "pending", ["suspicious", "held"]))
    if r.status == 201:
        m.reserve(t["id"], "transfer", rich, dst[2], 6_500_000, held=True)
        st["held"]["h-client-pending"] = t["id"]
        ck.status("client post of its held pending transfer under review -> 422 under_review",
                  c.post(f"/v1/transfers/{t['id']}/post", {}), 422, "under_review")
        e = suspicious_entry(c, t["id"])
        r = c.post(f"/v1/suspicious/{e['id']}/review", {"decision": "clear"}) if e else None
        ck.check("clearing the hold of a client pending transfer leaves it pending (nothing counted)",
                 r is not None and r.status == 200 and (r.json.get("transfer") or {}).get("status") == "pending",
                 r.describe() if r is not None else "no entry")
        st["leftover_posts"] = [(t["id"], 6_000_000)]  # posted in part on day 1
    # an idempotent repeat counts once
    usd = st["accts"]["by_cur"]["USD"][3]
    key = "settle-idem-1"
    r1 = c.deposit(usd, "12.34", key=key)
    r2 = c.deposit(usd, "12.34", key=key)
    ck.check("idempotent deposit repeat: same id, Idempotent-Replayed", r1.status == 201 and r2.status == 201
             and r1.json.get("id") == r2.json.get("id") and r2.headers.get("idempotent-replayed") == "true",
             f"{r1.describe()} / {r2.describe()}")
    if r1.status == 201:
        m.posted(r1.json["id"], "deposit", CASH_ID["USD"], usd, 1234, r1.json["created_at"])
    r = c.post(f"/v1/transfers/{st['held']['h-clear-day1']}/post", {})
    ck.status("post of a held transfer under review -> 422 under_review", r, 422, "under_review")
    r = c.post(f"/v1/transfers/{st['held']['h-clear-day1']}/void")
    ck.status("void of a held transfer under review -> 422 under_review", r, 422, "under_review")
    # a flagged transfer is posted at once and counts normally
    usd = st["accts"]["by_cur"]["USD"][0]
    r = c.deposit(usd, "10000.00")
    ck.eq("USD deposit of exactly 10000.00 is flagged and posted",
          ((r.json or {}).get("status"), (r.json or {}).get("flags")), ("posted", ["suspicious"]))
    if r.status == 201:
        m.posted(r.json["id"], "deposit", CASH_ID["USD"], usd, 1_000_000, r.json["created_at"])
        st["flagged_deposit"] = r.json["id"]


def suspicious_entry(c, tid):
    items, _ = c.paginate("/v1/suspicious?status=open&rule=bhd-hold", limit=1000)
    for e in items:
        if e.get("transfer_id") == tid:
            return e
    return None


def review(ck, c, m, tid, decision, label):
    e = suspicious_entry(c, tid)
    if not ck.check(f"{label}: open suspicious entry for the held transfer", e is not None, tid):
        return
    r = c.post(f"/v1/suspicious/{e['id']}/review", {"decision": decision})
    ck.status(f"{label}: review {decision} -> 200", r, 200)
    j = r.json or {}
    want = "posted" if decision == "clear" else "voided"
    ck.eq(f"{label}: the transfer is {want}", (j.get("transfer") or {}).get("status"), want)
    when = j.get("reviewed_at") or (j.get("transfer") or {}).get("updated_at")
    ck.check(f"{label}: reviewed_at is a time", TIME_RE.match(str(when)), j)
    if r.status == 200:
        m.settle(tid, m.pending[tid]["amt"] if decision == "clear" else 0, when)


def held_day(ck, c, m, st, day):
    h = st["held"]
    rich = st["bhd_rich"]
    if day == 0:
        review(ck, c, m, h["h-clear-day0"], "clear", "held transfer cleared on day 0")
    elif day == 1:
        for tid, amt in st.get("leftover_posts", []):
            if tid in m.pending:
                post(ck, c, m, tid, amt)
                ck.eq("the client's once-held pending transfer, posted in part on day 1",
                      (c.get(f"/v1/transfers/{tid}").json or {}).get("status"), "posted")
        # reviewing a flagged (not held) transfer changes only the entry: nothing counts again
        fid = st.get("flagged_deposit")
        if fid:
            items, _ = c.paginate("/v1/suspicious?status=open&rule=large-amount", limit=1000)
            e = next((x for x in items if x.get("transfer_id") == fid), None)
            r = c.post(f"/v1/suspicious/{e['id']}/review", {"decision": "confirm"}) if e else None
            ck.check("confirming a flagged (posted) deposit: 200, the transfer stays posted",
                     r is not None and r.status == 200 and (r.json.get("transfer") or {}).get("status") == "posted",
                     r.describe() if r is not None else "no entry")
        review(ck, c, m, h["h-clear-day1"], "clear", "held transfer cleared on day 1")
        review(ck, c, m, h["h-confirm-day1"], "confirm", "held transfer confirmed on day 1")
        # a held deposit (cleared tomorrow) and a held withdrawal at exactly the threshold
        credit = st["accts"]["by_cur"]["BHD"][5]
        r = c.deposit(credit, "7000.000")
        ck.eq("BHD deposit 7000.000 is held (pending)", (r.json or {}).get("status"), "pending")
        if r.status == 201:
            m.reserve(r.json["id"], "deposit", CASH_ID["BHD"], credit, 7_000_000, held=True)
            h["h-deposit-day2"] = r.json["id"]
        open_before = len(c.paginate("/v1/suspicious?status=open", limit=1000)[0])
        items = [{"debit_account_id": rich, "credit_account_id": st["accts"]["by_cur"]["BHD"][1], "amount": "5500.000"},
                 {"debit_account_id": st["accts"]["by_cur"]["BHD"][1], "credit_account_id": rich,
                  "amount": fmt(m.available(st["accts"]["by_cur"]["BHD"][1]) + 1, "BHD")}]
        r = c.post("/v1/transfers/batch", {"atomic": True, "transfers": items})
        ck.eq("atomic batch with a held item and a failing item: every item error",
              [it.get("status") for it in (r.json or {}).get("results", [])], ["error", "error"])
        ck.eq("the aborted atomic batch left no suspicious entry",
              len(c.paginate("/v1/suspicious?status=open", limit=1000)[0]), open_before)
        r = c.post("/v1/transfers/batch", {"transfers": [
            {"debit_account_id": rich, "credit_account_id": st["accts"]["by_cur"]["BHD"][1], "amount": "5500.000"}]})
        res = ((r.json or {}).get("results") or [{}])[0]
        ck.eq("a batch item over the hold threshold is held (pending)", res.get("status"), "pending")
        if res.get("status") == "pending":
            m.reserve(res["id"], "transfer", rich, st["accts"]["by_cur"]["BHD"][1], 5_500_000, held=True)
            h["h-batch-day2"] = res["id"]
        r = c.withdraw(rich, "5000.000")
        ck.eq("BHD withdrawal of exactly 5000.000 is held (pending)", (r.json or {}).get("status"), "pending")
        if r.status == 201:
            m.reserve(r.json["id"], "withdrawal", rich, CASH_ID["BHD"], HOLD_MINOR, held=True)
            review(ck, c, m, r.json["id"], "clear", "held withdrawal cleared on day 1")
    elif day == 2:
        if "h-deposit-day2" in h:
            review(ck, c, m, h["h-deposit-day2"], "clear", "held deposit (day 1) cleared on day 2")
        if "h-batch-day2" in h:
            review(ck, c, m, h["h-batch-day2"], "clear", "held batch item (day 1) cleared on day 2")


def post(ck, c, m, tid, amt):
    r = c.post(f"/v1/transfers/{tid}/post", {} if amt is None else {"amount": fmt(amt, m.pending[tid]["cur"])})
    if r.status != 200:
        ck.status(f"post {tid} -> 200", r, 200)
        return
    j = r.json
    full = m.pending[tid]["amt"]
    want = full if amt is None else amt
    if j.get("status") != "posted" or to_minor(j.get("posted_amount", "0"), m.pending[tid]["cur"]) != want \
            or not TIME_RE.match(str(j.get("updated_at"))):
        ck.check(f"post {tid}: status posted, posted_amount, updated_at", False, r.describe())
    m.settle(tid, want, j.get("updated_at") or j.get("created_at"))


def void(ck, c, m, tid):
    r = c.post(f"/v1/transfers/{tid}/void")
    if r.status != 200 or (r.json or {}).get("status") != "voided":
        ck.status(f"void {tid} -> 200 voided", r, 200)
        return
    m.settle(tid, 0, None)


def settle_leftovers(ck, c, m, st, day):
    rnd = st["rnd"]
    left, st["leftover"] = st["leftover"], []
    if day == 2:
        keep = left[: len(left) // 4]  # stay pending at the end: never counted
        left = left[len(left) // 4:]
        st["leftover"] = keep
    for tid in left:
        x = rnd.random()
        if x < 0.4:
            post(ck, c, m, tid, None)
        elif x < 0.75:
            post(ck, c, m, tid, rnd.randrange(1, m.pending[tid]["amt"] + 1))
        else:
            void(ck, c, m, tid)
    log(f"# day {day}: {len(left)} pendings of an earlier day settled")


def two_phase_singles(ck, c, m, st, day):
    rnd = st["rnd"]
    for i in range(8):
        cur = rnd.choice(CURS)
        dr, cr = rnd.sample(st["accts"]["by_cur"][cur], 2)
        amt = rnd.randrange(*SMALL[cur])
        if m.would_fail(dr, amt):
            continue
        r = c.transfer(dr, cr, fmt(amt, cur), pending=True)
        if r.status != 201 or r.json.get("status") != "pending":
            raise AssertionError(f"pending transfer failed: {r.describe()}")
        tid = r.json["id"]
        m.reserve(tid, "transfer", dr, cr, amt)
        if i < 2:
            post(ck, c, m, tid, None)
        elif i < 4:
            post(ck, c, m, tid, rnd.randrange(1, amt + 1))
        elif i < 6:
            void(ck, c, m, tid)
        else:
            st["leftover"].append(tid)
    if day == 0:
        # a pending transfer with a 1 h timeout: the restart at +24 h finds it expired
        cur = "USD"
        dr, cr = st["accts"]["by_cur"][cur][1], st["accts"]["by_cur"][cur][2]
        r = c.transfer(dr, cr, "1.23", pending=True, timeout_s=3600)
        ck.status("pending transfer with timeout_s 3600 -> 201", r, 201)
        if r.status == 201:
            m.reserve(r.json["id"], "transfer", dr, cr, 123)
            st["timeout_pending"] = r.json["id"]


def expire_check(ck, c, m, st, day):
    tid = st.get("timeout_pending")
    if not tid or tid not in m.pending:
        return
    deadline = time.monotonic() + 15
    j = {}
    while time.monotonic() < deadline:
        j = c.get(f"/v1/transfers/{tid}").json or {}
        if j.get("status") != "pending":
            break
        time.sleep(0.2)
    ck.eq(f"day {day}: the day-0 pending transfer with a 1 h timeout is voided (expired) after the restart",
          (j.get("status"), j.get("expired")), ("voided", True))
    if j.get("status") == "voided":
        m.settle(tid, 0, None)


def make_batch(rnd, m, accts, n):
    items, plan = [], []
    by_cur = accts["by_cur"]
    for _ in range(n):
        cur = CURS[rnd.randrange(3)]
        x = rnd.random()
        pend = False
        if x < 0.01:  # from cash:<CUR>: a transfer (not a deposit), region "system"
            dr, cr = CASH_ID[cur], by_cur[cur][rnd.randrange(len(by_cur[cur]))]
            amt = rnd.randrange(*SMALL[cur]) * 5
        elif x < 0.02:  # to cash:<CUR>: a transfer (not a withdrawal), the debit's region
            dr, cr = by_cur[cur][rnd.randrange(len(by_cur[cur]))], CASH_ID[cur]
            amt = rnd.randrange(*SMALL[cur])
        else:
            dr, cr = rnd.sample(by_cur[cur], 2)
            amt = rnd.randrange(*(LARGE[cur] if x > 0.97 else SMALL[cur]))
            pend = x < 0.025
        it = {"debit_account_id": dr, "credit_account_id": cr, "amount": fmt(amt, cur)}
        if pend:
            it["pending"] = True
        if x < 0.1 and x > 0.09:
            it["currency"] = cur
        items.append(it)
        plan.append((dr, cr, cur, amt, pend))
    return items, plan


def atomic_batches(ck, c, m, accts, day, rnd):
    cur = "USD"
    a, b, d = accts["by_cur"][cur][:3]
    items = [{"debit_account_id": a, "credit_account_id": b, "amount": "0.01"},
             {"debit_account_id": b, "credit_account_id": d, "amount": fmt(m.available(b) + 100, cur)}]
    r = c.post("/v1/transfers/batch", {"atomic": True, "transfers": items})
    res = (r.json or {}).get("results", [])
    ck.eq(f"day {day}: failing atomic batch: every item error",
          [x.get("status") for x in res], ["error", "error"])
    amt = min(m.available(a), 500)
    if amt <= 0:
        return
    items = [{"debit_account_id": a, "credit_account_id": b, "amount": fmt(amt, cur)},
             {"debit_account_id": b, "credit_account_id": d, "amount": fmt(amt, cur)}]
    r = c.post("/v1/transfers/batch", {"atomic": True, "transfers": items})
    res = (r.json or {}).get("results", [])
    ok = ck.eq(f"day {day}: atomic batch: every item posted", [x.get("status") for x in res], ["posted", "posted"])
    if ok:
        m.posted(res[0]["id"], "transfer", a, b, amt)
        m.posted(res[1]["id"], "transfer", b, d, amt)


def atomic_abort_new_rows(ck, c, m):
    """An atomic batch whose first items would open new settlement rows (a currency and a
    region never used before) and whose last item fails: no row may remain, not even empty."""
    x = c.post("/v1/accounts", {"currency": "KWD", "region": "zz-fresh"}).json["id"]
    y = c.post("/v1/accounts", {"currency": "KWD", "region": "zz-fresh"}).json["id"]
    m.add_account(x, "KWD", "zz-fresh")
    m.add_account(y, "KWD", "zz-fresh")
    items = [{"debit_account_id": CASH_ID["KWD"], "credit_account_id": x, "amount": "5.000"},
             {"debit_account_id": x, "credit_account_id": y, "amount": "1.000"},
             {"debit_account_id": x, "credit_account_id": y, "amount": "4.001"}]
    r = c.post("/v1/transfers/batch", {"atomic": True, "transfers": items})
    res = (r.json or {}).get("results", [])
    ck.eq("atomic batch opening new rows then failing: every item error",
          [it.get("status") for it in res], ["error", "error", "error"])
    r = c.get("/v1/settlements?currency=KWD")
    ck.eq("no KWD settlement row after the aborted atomic batch", (r.json or {}).get("data"), [])
    r = c.get("/v1/settlements?region=zz-fresh")
    ck.eq("no zz-fresh settlement row after the aborted atomic batch", (r.json or {}).get("data"), [])


def resolve_dates(ck, c, m, st, day):
    """created_at of today's batch items from the histories of every customer account."""
    t = time.monotonic()
    start = minus_hours(st["day_first_ts"], 1)
    seen = {}
    bad = []
    for a in st["accts"]["all"]:
        items, _ = c.paginate(f"/v1/accounts/{a}/transfers?from={start}", limit=1000)
        for e in items:
            tr = e.get("transfer", {})
            if tr.get("pending_id"):
                continue
            tid, ts = tr.get("id"), tr.get("created_at")
            if tid in seen and seen[tid] != ts:
                bad.append((tid, seen[tid], ts))
            seen[tid] = ts
    ck.check(f"day {day}: a transfer has one created_at in both accounts' histories", not bad, bad[:3])
    missing = []
    for tid, (region, cur, amt, kind) in list(m.undated.items()):
        ts = seen.get(tid)
        if ts is None:
            missing.append(tid)
            continue
        m.count(day_of(ts), region, cur, amt, kind)
        del m.undated[tid]
    ck.check(f"day {day}: every accepted batch item is in its accounts' histories", not missing,
             f"{len(missing)} missing, e.g. {missing[:3]}")
    log(f"# day {day}: {len(seen)} created_at read from histories in {time.monotonic() - t:.1f}s")


# ---------------------------------------------------------------------------- checks

def check_settlement_page(ck, name, r, want):
    if not ck.status(f"{name}: 200", r, 200):
        return
    data = (r.json or {}).get("data")
    if not ck.check(f"{name}: data is a list", isinstance(data, list), r.describe()):
        return
    shapes = [x for x in data if set(x) != ROW_KEYS or not isinstance(x.get("count"), int)]
    ck.check(f"{name}: rows have exactly the documented fields, count a number", not shapes, shapes[:2])
    got_sorted = sorted(data, key=lambda x: (str(x.get("date")), str(x.get("region")), str(x.get("currency"))))
    ck.check(f"{name}: rows equal the model ({len(want)} rows)", got_sorted == want, diff_rows(data, want))
    ck.check(f"{name}: sorted by region then currency", data == got_sorted,
             [row_key(x) for x in data][:8])


def compare_all(ck, srv, c, m, st, day):
    dates = sorted(m.dates)
    today = max(dates)
    for d in dates:
        want = m.rows(d, d)
        check_settlement_page(ck, f"day {day}: GET /v1/settlements?date={d}", c.get(f"/v1/settlements?date={d}"), want)
        for region in REGIONS + ["system"]:
            r = c.get(f"/v1/settlements?date={d}&region={region}")
            check_settlement_page(ck, f"day {day}: settlements date={d} region={region}", r,
                                  m.rows(d, d, region=region))
        for cur in CURS:
            r = c.get(f"/v1/settlements?date={d}&currency={cur}")
            check_settlement_page(ck, f"day {day}: settlements date={d} currency={cur}", r, m.rows(d, d, currency=cur))
        region, cur = st["rnd"].choice(REGIONS), st["rnd"].choice(CURS)
        r = c.get(f"/v1/settlements?date={d}&region={region}&currency={cur}")
        check_settlement_page(ck, f"day {day}: settlements date={d} region={region} currency={cur}", r,
                              m.rows(d, d, region=region, currency=cur))
    r1 = c.get("/v1/settlements")
    r2 = c.get(f"/v1/settlements?date={today}")
    ck.check(f"day {day}: GET /v1/settlements without date = today ({today}, the testing clock)",
             r1.status == 200 and r1.json == r2.json, f"{r1.describe()[:200]} vs {r2.describe()[:200]}")
    ck.eq(f"day {day}: settlements of an unknown region are empty",
          (c.get(f"/v1/settlements?date={today}&region=nowhere").json or {}).get("data"), [])
    ck.eq(f"day {day}: settlements of a day without movements are empty",
          (c.get("/v1/settlements?date=2001-01-01").json or {}).get("data"), [])
    check_csv(ck, f"day {day}: CSV {dates[0]}..{today}", c, dates[0], today, m.rows(dates[0], today))
    if day == 2:
        check_csv(ck, f"CSV of the middle day {dates[1]}..{dates[1]}", c, dates[1], dates[1], m.rows(dates[1], dates[1]))
        d0 = Date.fromisoformat(dates[0])
        wide_from, wide_to = (d0 - timedelta(days=200)).isoformat(), (d0 + timedelta(days=165)).isoformat()
        check_csv(ck, f"CSV over 366 days {wide_from}..{wide_to}", c, wide_from, wide_to, m.rows())
        check_csv(ck, "CSV of days without movements", c, "2001-01-01", "2001-01-31", [])
    check_balances(ck, c, m, st, day)
    log(f"# day {day}: {m.movements} movements counted, {len(m.agg)} settlement rows, "
        f"{len(m.pending)} pending")


def check_csv(ck, name, c, d_from, d_to, want):
    r = c.get(f"/v1/reports/settlements.csv?from={d_from}&to={d_to}")
    if not ck.status(f"{name}: 200", r, 200):
        return
    ctype = r.headers.get("content-type", "")
    ck.eq(f"{name}: content-type", ctype.replace(" ", "").lower(), "text/csv;charset=utf-8")
    body = r.body.decode("utf-8", errors="replace")
    lines = body.split("\r\n")
    ck.check(f"{name}: every line ends with CRLF (no bare LF, ends with CRLF)",
             body.endswith("\r\n") and not any("\n" in ln or "\r" in ln for ln in lines), repr(body[:120]))
    ck.eq(f"{name}: header line", lines[0], CSV_HEADER)
    rows = list(csv.reader(io.StringIO(body, newline="")))
    got = [tuple(x) for x in rows[1:]]
    exp = [(x["date"], x["region"], x["currency"], str(x["count"]), x["volume"], x["deposits"], x["withdrawals"])
           for x in want]
    ck.eq(f"{name}: {len(exp)} rows", len(got), len(exp))
    ck.check(f"{name}: every row equals the model", sorted(got) == sorted(exp),
             f"missing {sorted(set(exp) - set(got))[:3]} extra {sorted(set(got) - set(exp))[:3]}")
    ck.check(f"{name}: rows sorted by date, region, currency", got == sorted(got, key=lambda t: t[:3]),
             [t[:3] for t in got][:6])


def check_balances(ck, c, m, st, day):
    bad = []
    for aid, a in m.acct.items():
        if aid in CASH_ID.values():
            continue
        g = c.account(aid)
        want = (fmt(a["bal"], a["cur"]), fmt(a["pdr"], a["cur"]), fmt(a["pcr"], a["cur"]))
        got = (g["balance"], g["pending_debits"], g["pending_credits"])
        if got != want:
            bad.append((aid, got, want))
    ck.check(f"day {day}: every customer account's balance and reservations equal the model", not bad, bad[:4])
    for cur in CURS:
        g = c.account(CASH_ID[cur])
        ck.eq(f"day {day}: cash:{cur} balance equals the model", g["balance"], fmt(m.acct[CASH_ID[cur]]["bal"], cur))
    sums = c.sums_by_currency()
    ck.check(f"day {day}: sum of all balances is zero per currency", all(v == 0 for v in sums.values()),
             {k: v for k, v in sums.items() if v})


def validation(ck, srv, c, st):
    for bad in ("2026-13-01", "2026-02-30", "20261122", "yesterday", "2026-1-5", "2026-11-31"):
        ck.status(f"settlements date={bad} -> 400", c.get(f"/v1/settlements?date={bad}"), 400)
    csv_path = "/v1/reports/settlements.csv"
    ck.status("CSV without from/to -> 400", c.get(csv_path), 400)
    ck.status("CSV without to -> 400", c.get(f"{csv_path}?from=2026-01-01"), 400)
    ck.status("CSV without from -> 400", c.get(f"{csv_path}?to=2026-01-01"), 400)
    ck.status("CSV from > to -> 400", c.get(f"{csv_path}?from=2026-01-02&to=2026-01-01"), 400)
    ck.status("CSV bad from -> 400", c.get(f"{csv_path}?from=2026-02-30&to=2026-03-01"), 400)
    ck.status("CSV bad to -> 400", c.get(f"{csv_path}?from=2026-01-01&to=garbage"), 400)
    ck.status("CSV from = to (1 day) -> 200", c.get(f"{csv_path}?from=2026-01-01&to=2026-01-01"), 200)
    ck.status("CSV 366 days (2024-01-01..2024-12-31) -> 200", c.get(f"{csv_path}?from=2024-01-01&to=2024-12-31"), 200)
    ck.status("CSV 366 days (2025-01-01..2026-01-01) -> 200", c.get(f"{csv_path}?from=2025-01-01&to=2026-01-01"), 200)
    ck.status("CSV 368 days (2025-01-01..2026-01-03) -> 400", c.get(f"{csv_path}?from=2025-01-01&to=2026-01-03"), 400)
    ck.status("CSV 10 years -> 400", c.get(f"{csv_path}?from=2016-01-01&to=2026-01-01"), 400)
    r = c.get(f"{csv_path}?from=2025-01-01&to=2026-01-02")  # 367 days inclusive
    ck.status("CSV 367 days inclusive (2025-01-01..2026-01-02) -> 400 ('at most 366 days')", r, 400)
    cust = Client(srv.host, srv.port, token=st["cust"].token)
    ck.status("customer GET /v1/settlements -> 403", cust.get("/v1/settlements"), 403, "forbidden")
    ck.status("customer GET /v1/settlements?date= -> 403", cust.get("/v1/settlements?date=2026-01-01"), 403)
    ck.status("customer GET settlements.csv -> 403", cust.get(f"{csv_path}?from=2026-01-01&to=2026-01-02"), 403,
              "forbidden")
    cust.close()
    aud = Client(srv.host, srv.port, token=st["auditor_key"])
    r = aud.get("/v1/settlements")
    ck.status("auditor GET /v1/settlements -> 200", r, 200)
    ck.status("auditor GET settlements.csv -> 200", aud.get(f"{csv_path}?from=2026-01-01&to=2026-01-02"), 200)
    aud.close()
    anon = srv.anon_client()
    ck.status("anonymous GET /v1/settlements -> 401", anon.get("/v1/settlements"), 401, "unauthorized")
    ck.status("anonymous GET settlements.csv -> 401", anon.get(f"{csv_path}?from=2026-01-01&to=2026-01-02"), 401)
    anon.close()
    ck.status("POST /v1/settlements -> 405", c.post("/v1/settlements", {}), 405)


if __name__ == "__main__":
    run_main(main)
