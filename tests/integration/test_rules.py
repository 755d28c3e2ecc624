#!/usr/bin/env python3
"""Risk rules, suspicious activity and rule reloads (issue 4), against the real server.

Servers, each with its own `--config FILE` in a scratch dir:
  A  amount (USD/JPY/BHD/KWD/CHF, `threshold.JPY=`/`threshold.BHD=` overrides, `currency=`)
     and blocklist (debit side, credit side) rules, one of each action; deposits, withdrawals,
     batches (non-atomic and atomic), two-phase + hold; the review flow and GET /v1/suspicious
     (filters, pagination, order), 8 concurrent reviews of one entry (exactly one wins),
     Idempotency-Key replays, roles (customer 403, auditor reads only), audit events.
  V  velocity: `count=N` (N pass, N+1 fires), `amount=X` (== X passes, > X fires),
     `amount.JPY=`, the 2 s window edge, rejected transfers do not count, pending ones do,
     deposits (debit is a system account) do not count, withdrawals do; batch items count
     toward each other (an aborted atomic batch does not); 20 concurrent transfers never sum
     past `amount=`; the windows survive a restart.
  N  new_account: young account fires at the threshold, one minor unit under does not, the
     credit side and system debit accounts never fire, after `age=` nothing fires.
  R  reload: POST /v1/rules/reload (new version, changed:false for identical content, bad files
     -> 422 invalid_rules with the line number, old rules stay; 1024 blocklisted ids allowed,
     1025 not), SIGHUP, an idempotent replay of a rejection after the rules changed, restart on
     the same data dir (version, flags, entries survive, a held transfer still clears), verify.
  L  reload under load: client threads post transfers while another thread alternates the file
     between two rule sets; every outcome must match the set its `rules_version` names.
  D  no --config: the built-in rule `large-amount` flags 10,000.00 and not 9,999.99.
Each server ends with the common checks: exit 0 on SIGTERM, `ledgerctl verify` exit 0, no
sanitizer report."""

import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import (TIME_RE, Client, Server, final_server_checks, fmt, log, run_main,  # noqa: E402
                            seed_from_env, to_minor)
from auth_helpers import FAST_ARGON2, RAISED_SIGNIN, make_user, sign_in  # noqa: E402

ADMIN_ACTOR = "api_key:1"  # the bootstrap admin key, as the audit trail names it (test_auth.py)
ENTRY_FIELDS = {"id", "transfer_id", "rule", "rules_version", "action", "status", "amount", "currency",
                "debit_account_id", "credit_account_id", "created_at", "reviewed_by", "reviewed_at"}
ABSENT = "<absent>"
FIRST_ACCOUNT_ID = 11  # ids 1..10 are the cash:<CUR> system accounts (docs/api.md)


# ---------------------------------------------------------------- helpers

def write_config(path, text):
    """Replaces the file atomically, so a reload never reads half a file."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def rules_server(scratch, name, text, extra=()):
    """A started Server whose --config file (scratch/name.conf) holds `text`."""
    d = os.path.join(scratch, name)
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(d, "rules.conf")
    write_config(cfg, text)
    srv = Server(extra_args=["--config", cfg] + list(extra), scratch=d)
    srv.config_path = cfg
    srv.start()
    return srv


def tget(t, key):
    return t.get(key, ABSENT) if isinstance(t, dict) else ABSENT


def err_of(r):
    j = r.json if r is not None else None
    if isinstance(j, dict) and isinstance(j.get("error"), dict):
        return j["error"]
    return {}


class Book:
    """What a server's GET /v1/suspicious must hold: transfer id -> expected entry fields."""

    def __init__(self):
        self.by_tid = {}

    def add(self, t, rule, action, version):
        self.by_tid[t["id"]] = {"rule": rule, "action": action, "status": "open", "rules_version": version,
                                "amount": t.get("amount"), "currency": t.get("currency"),
                                "debit_account_id": t.get("debit_account_id"),
                                "credit_account_id": t.get("credit_account_id")}

    def view(self, keys=("rule", "action", "status", "rules_version")):
        return {tid: tuple(e[k] for k in keys) for tid, e in self.by_tid.items()}


def expect(ck, label, r, want, rule=None, version=1, book=None, kind=None, client_pending=False):
    """Checks one judged request. want: 'none' | 'flag' | 'hold' | 'reject'.
    Returns the created transfer (dict) or None."""
    if want == "reject":
        ck.status(f"{label}: 422 rule_rejected", r, 422, "rule_rejected")
        e = err_of(r)
        ck.eq(f"{label}: error.rule and error.rules_version", (e.get("rule"), e.get("rules_version")),
              (rule, version))
        ck.check(f"{label}: error has a message", isinstance(e.get("message"), str) and e.get("message"), e)
        return None
    if not ck.status(f"{label}: 201", r, 201):
        return None
    t = r.json or {}
    status = "pending" if (want == "hold" or client_pending) else "posted"
    flags = {"none": ABSENT, "flag": ["suspicious"], "hold": ["suspicious", "held"]}[want]
    ck.eq(f"{label}: (status, flags, rules_version)",
          (tget(t, "status"), tget(t, "flags"), tget(t, "rules_version")), (status, flags, version))
    if kind is not None:
        ck.eq(f"{label}: kind", tget(t, "kind"), kind)
    if want in ("flag", "hold") and book is not None and "id" in t:
        book.add(t, rule, want, version)
    return t


def bal(c, acct):
    a = c.account(acct)
    return (a["balance"], a["pending_debits"], a["pending_credits"], a["available"])


def history_len(c, acct):
    return len(c.paginate(f"/v1/accounts/{acct}/transfers")[0])


def entries(c, query=""):
    """Every entry of GET /v1/suspicious?query, following next_cursor (limit 1000)."""
    path = "/v1/suspicious" + (("?" + query) if query else "")
    return c.paginate(path, limit=1000)[0]


def entry_of(c, tid):
    for e in entries(c):
        if e.get("transfer_id") == tid:
            return e
    return None


def review(c, entry_id, decision, key=None, body=None):
    return c.post(f"/v1/suspicious/{entry_id}/review", {"decision": decision} if body is None else body, key=key)


def rules_view(c):
    r = c.get("/v1/rules")
    if r.status != 200 or not isinstance(r.json, dict):
        return r, None, None
    return r, r.json.get("version"), [(x.get("id"), x.get("type"), x.get("action")) for x in r.json.get("rules", [])]


def create_accounts(ck, c, label, specs):
    """Creates accounts in order; checks they got the predicted ids FIRST_ACCOUNT_ID, ... (the
    config files name them before the server starts). Returns the ids."""
    ids = []
    for cur, fields in specs:
        ids.append(c.new_account(cur, **fields))
    ck.eq(f"{label}: accounts got the predicted ids", ids, list(range(FIRST_ACCOUNT_ID, FIRST_ACCOUNT_ID + len(ids))))
    return ids


def item(d, cr, amt, **kw):
    x = {"debit_account_id": d, "credit_account_id": cr, "amount": amt}
    x.update(kw)
    return x


def no_500(ck, label, clients):
    seen = [s for c in clients for s in c.seen_500]
    ck.check(f"{label}: no 500 answered", not seen, "; ".join(seen[:3]))


# ---------------------------------------------------------------- server A: amount + blocklist

A_BLF, A_BLH, A_BLR1, A_BLR2 = 11, 12, 13, 14
CONFIG_A = f"""# test_rules.py server A: amount and blocklist rules, one of each action
default_region eu-west   # for accounts created without a region

rule amt-flag amount threshold=100.00 threshold.JPY=10000 threshold.BHD=2.500 action=flag
rule amt-hold amount threshold=50.00 currency=EUR action=hold
rule amt-reject amount threshold=70.00 currency=GBP action=reject
   # blocklists, on either side of a transfer
rule bl-flag blocklist accounts={A_BLF} action=flag
rule bl-hold blocklist accounts={A_BLH} action=hold
rule bl-reject blocklist accounts={A_BLR1},{A_BLR2} action=reject
"""
A_RULES = [("amt-flag", "amount", "flag"), ("amt-hold", "amount", "hold"), ("amt-reject", "amount", "reject"),
           ("bl-flag", "blocklist", "flag"), ("bl-hold", "blocklist", "hold"), ("bl-reject", "blocklist", "reject")]


def part_a(ck, scratch):
    srv = rules_server(scratch, "A", CONFIG_A, FAST_ARGON2 + RAISED_SIGNIN)
    c = srv.client()
    book = Book()
    st = {"reviews": 0}
    try:
        with ck.section("A: accounts, GET /v1/rules, default_region"):
            create_accounts(ck, c, "A", [("USD", {"allow_overdraft": True})] * 4)
            r, ver, rules = rules_view(c)
            ck.status("A: GET /v1/rules 200", r, 200)
            ck.eq("A: rules version 1 on a fresh ledger", ver, 1)
            ck.eq("A: rules in file order (id, type, action)", rules, A_RULES)
            ck.eq("A: default_region from the file", (r.json or {}).get("default_region"), "eu-west")
            src, dst = {}, {}
            for cur in ("USD", "JPY", "BHD", "KWD", "CHF", "EUR", "GBP"):
                src[cur] = c.new_account(cur, allow_overdraft=True)
                dst[cur] = c.new_account(cur)
            ck.eq("A: an account created without a region gets default_region", c.account(dst["USD"])["region"],
                  "eu-west")
            r = c.create_account("USD", region="us-east")
            ck.eq("A: an explicit region is kept", (r.json or {}).get("region"), "us-east")
        part_a_amounts(ck, c, book, src, dst)
        part_a_blocklist(ck, c, book, src, dst)
        part_a_deposits(ck, c, book, src, dst)
        part_a_hold_review(ck, c, book, st)
        part_a_reject_balances(ck, c)
        part_a_batch(ck, c, book, src, dst)
        part_a_listing(ck, c, book)
        part_a_review_flagged(ck, c, book, src, dst, st)
        part_a_roles(ck, srv, c, book, st)
        part_a_audit(ck, c, st)
        no_500(ck, "A", [c])
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


def part_a_amounts(ck, c, book, src, dst):
    with ck.section("A: amount rule boundaries per currency"):
        cases = [  # currency, amount, want, rule
            ("USD", "99.99", "none", None), ("USD", "100.00", "flag", "amt-flag"), ("USD", "100.01", "flag", "amt-flag"),
            ("JPY", "9999", "none", None), ("JPY", "10000", "flag", "amt-flag"),
            ("BHD", "2.499", "none", None), ("BHD", "2.500", "flag", "amt-flag"),
            # no override: threshold=100.00 in major units for every currency
            ("KWD", "99.999", "none", None), ("KWD", "100.000", "flag", "amt-flag"),
            ("CHF", "99.99", "none", None), ("CHF", "100.00", "flag", "amt-flag"),
            # hold and reject only for their currency=
            ("EUR", "49.99", "none", None), ("EUR", "50.00", "hold", "amt-hold"),
            ("GBP", "69.99", "none", None), ("GBP", "70.00", "reject", "amt-reject"),
            ("USD", "50.00", "none", None), ("USD", "70.00", "none", None),
            ("JPY", "100", "none", None), ("BHD", "99.999", "flag", "amt-flag"),
            # several rules fire: the most severe action wins
            ("EUR", "100.00", "hold", "amt-hold"), ("GBP", "100.00", "reject", "amt-reject"),
        ]
        for cur, amt, want, rule in cases:
            r = c.transfer(src[cur], dst[cur], amt)
            expect(ck, f"A: {cur} {amt} -> {want}{' ' + rule if rule else ''}", r, want, rule, 1, book)


def part_a_blocklist(ck, c, book, src, dst):
    with ck.section("A: blocklist, debit side and credit side, every action"):
        s, d = src["USD"], dst["USD"]
        for acct, want, rule in ((A_BLF, "flag", "bl-flag"), (A_BLH, "hold", "bl-hold"),
                                 (A_BLR1, "reject", "bl-reject"), (A_BLR2, "reject", "bl-reject")):
            expect(ck, f"A: blocklisted {acct} as debit -> {want}", c.transfer(acct, d, "1.00"), want, rule, 1, book)
            expect(ck, f"A: blocklisted {acct} as credit -> {want}", c.transfer(s, acct, "1.00"), want, rule, 1, book)
        # several rules of different actions fire at once
        expect(ck, "A: amount flag + blocklist flag -> recorded rule is the first in file order",
               c.transfer(A_BLF, d, "100.00"), "flag", "amt-flag", 1, book)
        expect(ck, "A: amount flag + blocklist hold -> hold by bl-hold", c.transfer(s, A_BLH, "100.00"),
               "hold", "bl-hold", 1, book)
        expect(ck, "A: amount flag + blocklist reject -> reject by bl-reject", c.transfer(s, A_BLR1, "100.00"),
               "reject", "bl-reject", 1, book)
        expect(ck, "A: an unlisted pair -> nothing", c.transfer(s, d, "1.00"), "none")


def part_a_deposits(ck, c, book, src, dst):
    with ck.section("A: deposits and withdrawals are judged"):
        d = dst["USD"]
        expect(ck, "A: deposit USD 99.99 -> nothing", c.deposit(d, "99.99"), "none", kind="deposit")
        expect(ck, "A: deposit USD 100.00 -> flag", c.deposit(d, "100.00"), "flag", "amt-flag", 1, book, "deposit")
        expect(ck, "A: withdrawal USD 99.99 -> nothing", c.withdraw(d, "99.99"), "none", kind="withdrawal")
        expect(ck, "A: withdrawal USD 100.00 -> flag", c.withdraw(d, "100.00"), "flag", "amt-flag", 1, book,
               "withdrawal")
        before = bal(c, dst["GBP"])
        expect(ck, "A: deposit GBP 70.00 -> reject", c.deposit(dst["GBP"], "70.00"), "reject", "amt-reject")
        ck.eq("A: rejected deposit changed nothing", bal(c, dst["GBP"]), before)
        e = c.new_account("EUR")
        expect(ck, "A: deposit EUR 50.00 -> held", c.deposit(e, "50.00"), "hold", "amt-hold", 1, book, "deposit")
        ck.eq("A: held deposit: (balance, pending_debits, pending_credits, available)", bal(c, e),
              ("0.00", "0.00", "50.00", "0.00"))
        expect(ck, "A: deposit into a flag-blocklisted account -> flag", c.deposit(A_BLF, "1.00"), "flag", "bl-flag",
               1, book, "deposit")
        expect(ck, "A: withdrawal from a flag-blocklisted account -> flag", c.withdraw(A_BLF, "1.00"), "flag",
               "bl-flag", 1, book, "withdrawal")
        expect(ck, "A: deposit into a reject-blocklisted account -> reject", c.deposit(A_BLR1, "1.00"), "reject",
               "bl-reject")
        expect(ck, "A: withdrawal from a reject-blocklisted account -> reject", c.withdraw(A_BLR2, "1.00"), "reject",
               "bl-reject")


def part_a_hold_review(ck, c, book, st):
    with ck.section("A: hold -> review clear / confirm, balances at each step"):
        h, hd = c.new_account("EUR"), c.new_account("EUR")
        for i in range(3):
            expect(ck, f"A: funding deposit EUR 40.00 #{i + 1} -> nothing", c.deposit(h, "40.00"), "none")
        ck.eq("A: before the hold: debit account", bal(c, h), ("120.00", "0.00", "0.00", "120.00"))
        ck.eq("A: before the hold: credit account", bal(c, hd), ("0.00", "0.00", "0.00", "0.00"))
        t1 = expect(ck, "A: EUR 50.00 -> held", c.transfer(h, hd, "50.00"), "hold", "amt-hold", 1, book)
        ck.eq("A: after the hold: debit balance unchanged, available reduced", bal(c, h),
              ("120.00", "50.00", "0.00", "70.00"))
        ck.eq("A: after the hold: credit account", bal(c, hd), ("0.00", "0.00", "50.00", "0.00"))
        if t1 is None:
            return
        g = c.get(f"/v1/transfers/{t1['id']}")
        ck.eq("A: GET held transfer: (status, flags, rules_version)",
              (tget(g.json, "status"), tget(g.json, "flags"), tget(g.json, "rules_version")),
              ("pending", ["suspicious", "held"], 1))
        ck.status("A: post a held transfer under review -> 422 under_review",
                  c.post(f"/v1/transfers/{t1['id']}/post", {}), 422, "under_review")
        ck.status("A: post a held transfer (partial amount) under review -> 422 under_review",
                  c.post(f"/v1/transfers/{t1['id']}/post", {"amount": "10.00"}), 422, "under_review")
        ck.status("A: void a held transfer under review -> 422 under_review",
                  c.post(f"/v1/transfers/{t1['id']}/void"), 422, "under_review")
        ck.eq("A: the refused post/void changed nothing", bal(c, h), ("120.00", "50.00", "0.00", "70.00"))
        e1 = entry_of(c, t1["id"])
        ck.check("A: the held transfer has a suspicious entry", e1 is not None)
        if e1 is None:
            return
        ck.eq("A: the entry: (rule, action, status, reviewed_by, reviewed_at)",
              (e1.get("rule"), e1.get("action"), e1.get("status"), e1.get("reviewed_by"), e1.get("reviewed_at")),
              ("amt-hold", "hold", "open", None, None))
        r = review(c, e1["id"], "clear")
        ck.status("A: review clear -> 200", r, 200)
        if r.status == 200:
            st["reviews"] += 1
            book.by_tid[t1["id"]]["status"] = "cleared"
        j = r.json or {}
        ck.eq("A: clear answer: (id, transfer_id, status)", (j.get("id"), j.get("transfer_id"), j.get("status")),
              (e1["id"], t1["id"], "cleared"))
        ck.eq("A: clear answer: reviewed_by the admin key", j.get("reviewed_by"), ADMIN_ACTOR)
        ck.check("A: clear answer: reviewed_at is a time", TIME_RE.match(str(j.get("reviewed_at"))), j.get("reviewed_at"))
        tr = j.get("transfer") or {}
        ck.eq("A: clear answer: the transfer is posted", (tr.get("id"), tr.get("status")), (t1["id"], "posted"))
        ck.eq("A: after clear: debit account", bal(c, h), ("70.00", "0.00", "0.00", "70.00"))
        ck.eq("A: after clear: credit account", bal(c, hd), ("50.00", "0.00", "0.00", "50.00"))
        ck.eq("A: GET the cleared transfer: status posted", tget(c.get(f"/v1/transfers/{t1['id']}").json, "status"),
              "posted")
        r = review(c, e1["id"], "clear")
        ck.status("A: second review (clear) -> 409 already_reviewed", r, 409, "already_reviewed")
        r = review(c, e1["id"], "confirm")
        ck.status("A: second review (confirm) -> 409 already_reviewed", r, 409, "already_reviewed")
        ck.eq("A: the 409s changed nothing", (bal(c, h), bal(c, hd)),
              (("70.00", "0.00", "0.00", "70.00"), ("50.00", "0.00", "0.00", "50.00")))
        ck.status("A: post a cleared (posted) transfer -> 422 transfer_not_pending",
                  c.post(f"/v1/transfers/{t1['id']}/post", {}), 422, "transfer_not_pending")

        t2 = expect(ck, "A: EUR 60.00 -> held", c.transfer(h, hd, "60.00"), "hold", "amt-hold", 1, book)
        ck.eq("A: after the second hold: debit account", bal(c, h), ("70.00", "60.00", "0.00", "10.00"))
        ck.eq("A: after the second hold: credit account", bal(c, hd), ("50.00", "0.00", "60.00", "50.00"))
        if t2 is None:
            return
        e2 = entry_of(c, t2["id"])
        ck.check("A: the second held transfer has an entry", e2 is not None)
        if e2 is None:
            return
        ck.status("A: unknown entry id -> 404 not_found", review(c, 987654321, "clear"), 404, "not_found")
        ck.status("A: bad decision -> 400 invalid_request", review(c, e2["id"], "maybe"), 400, "invalid_request")
        ck.status("A: decision as a number -> 400 invalid_request", review(c, e2["id"], None, body={"decision": 1}),
                  400, "invalid_request")
        ck.status("A: no decision -> 400 invalid_request", review(c, e2["id"], None, body={}), 400, "invalid_request")
        # docs/api.md: an unknown field is 400 unknown_field on every route.
        ck.status("A: unknown field -> 400 unknown_field",
                  review(c, e2["id"], None, body={"decision": "clear", "note": "x"}), 400, "unknown_field")
        ck.eq("A: the refused reviews left the entry open", (entry_of(c, t2["id"]) or {}).get("status"), "open")
        r = review(c, e2["id"], "confirm")
        ck.status("A: review confirm -> 200", r, 200)
        if r.status == 200:
            st["reviews"] += 1
            book.by_tid[t2["id"]]["status"] = "confirmed"
        j = r.json or {}
        ck.eq("A: confirm answer: (status, transfer.status)", (j.get("status"), (j.get("transfer") or {}).get("status")),
              ("confirmed", "voided"))
        ck.eq("A: after confirm: reservation released", bal(c, h), ("70.00", "0.00", "0.00", "70.00"))
        ck.eq("A: after confirm: credit account", bal(c, hd), ("50.00", "0.00", "0.00", "50.00"))
        ck.status("A: post a confirmed (voided) transfer -> 422 transfer_not_pending",
                  c.post(f"/v1/transfers/{t2['id']}/post", {}), 422, "transfer_not_pending")
        ck.status("A: review a confirmed entry -> 409 already_reviewed", review(c, e2["id"], "clear"), 409,
                  "already_reviewed")

        # a client two-phase transfer that a rule holds: stays pending with its timeout, is held
        t3 = expect(ck, "A: pending:true EUR 55.00 -> held", c.transfer(h, hd, "55.00", pending=True, timeout_s=3600),
                    "hold", "amt-hold", 1, book, client_pending=True)
        if t3 is not None:
            ck.eq("A: the held client pending transfer keeps its timeout_s", t3.get("timeout_s"), 3600)
            ck.status("A: void it while under review -> 422 under_review", c.post(f"/v1/transfers/{t3['id']}/void"),
                      422, "under_review")
        ck.eq("A: its reservation", bal(c, h), ("70.00", "55.00", "0.00", "15.00"))
        hc, hcd = c.new_account("EUR"), c.new_account("EUR")
        expect(ck, "A: fund EUR 40.00 #1", c.deposit(hc, "40.00"), "none")
        expect(ck, "A: fund EUR 40.00 #2", c.deposit(hc, "40.00"), "none")
        t5 = expect(ck, "A: EUR 50.00 -> held (for concurrent reviews)", c.transfer(hc, hcd, "50.00"), "hold",
                    "amt-hold", 1, book)
        e5 = entry_of(c, t5["id"]) if t5 else None
        if e5 is not None:
            outs = []
            barrier = threading.Barrier(8)

            def reviewer(i):
                cl = Client(c.host, c.port, token=c.token)
                try:
                    barrier.wait(10)
                    dec = "clear" if i % 2 == 0 else "confirm"
                    r = review(cl, e5["id"], dec)
                    outs.append((dec, r.status, r.code, r.json))
                except Exception as e:  # noqa: BLE001
                    outs.append((None, "exception", repr(e), None))
                finally:
                    cl.close()

            ts = [threading.Thread(target=reviewer, args=(i,), daemon=True) for i in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            wins = [o for o in outs if o[1] == 200]
            ck.eq("A: 8 concurrent reviews of one entry: one 200, seven 409 already_reviewed",
                  (len(wins), len([o for o in outs if o[1:3] == (409, "already_reviewed")])), (1, 7))
            if len(wins) == 1:
                st["reviews"] += 1
                dec = wins[0][0]
                book.by_tid[t5["id"]]["status"] = "cleared" if dec == "clear" else "confirmed"
                ck.eq(f"A: the winning {dec}: balances follow it", (bal(c, hc), bal(c, hcd)),
                      ((("30.00", "0.00", "0.00", "30.00"), ("50.00", "0.00", "0.00", "50.00")) if dec == "clear" else
                       (("80.00", "0.00", "0.00", "80.00"), ("0.00", "0.00", "0.00", "0.00"))))
        t4 = expect(ck, "A: pending:true EUR 10.00 -> pending, no rule", c.transfer(h, hd, "10.00", pending=True),
                    "none", client_pending=True)
        if t4 is not None:
            r = c.post(f"/v1/transfers/{t4['id']}/post", {})
            ck.status("A: a pending transfer no rule held posts normally", r, 200)


def part_a_reject_balances(ck, c):
    with ck.section("A: reject leaves everything unchanged"):
        g, gd = c.new_account("GBP"), c.new_account("GBP")
        expect(ck, "A: GBP deposit 60.00 #1", c.deposit(g, "60.00"), "none")
        expect(ck, "A: GBP deposit 60.00 #2", c.deposit(g, "60.00"), "none")
        before = (bal(c, g), bal(c, gd), history_len(c, g), history_len(c, gd))
        expect(ck, "A: GBP 70.00 -> reject", c.transfer(g, gd, "70.00"), "reject", "amt-reject")
        expect(ck, "A: GBP 70.00 pending:true -> reject", c.transfer(g, gd, "70.00", pending=True), "reject",
               "amt-reject")
        after = (bal(c, g), bal(c, gd), history_len(c, g), history_len(c, gd))
        ck.eq("A: balances and histories unchanged by the rejects", after, before)
        ck.eq("A: debit account still 120.00", bal(c, g), ("120.00", "0.00", "0.00", "120.00"))


def part_a_batch(ck, c, book, src, dst):
    with ck.section("A: batch items are judged one by one"):
        u, ud = src["USD"], dst["USD"]
        items = [item(u, ud, "99.99"), item(u, ud, "100.00"), item(src["GBP"], dst["GBP"], "70.00"),
                 item(src["EUR"], dst["EUR"], "50.00"), item(u, A_BLR1, "1.00"), item(u, A_BLF, "1.00")]
        want = [("posted", "none", None), ("posted", "flag", "amt-flag"), ("error", "reject", "amt-reject"),
                ("pending", "hold", "amt-hold"), ("error", "reject", "bl-reject"), ("posted", "flag", "bl-flag")]
        bkey = "k-" + uuid.uuid4().hex
        r = c.post("/v1/transfers/batch", {"transfers": items}, key=bkey)
        ck.status("A: non-atomic batch 200", r, 200)
        res = (r.json or {}).get("results", [])
        r2 = c.post("/v1/transfers/batch", {"transfers": items}, key=bkey)
        ck.eq("A: the batch replayed with its Idempotency-Key -> the original answer (rule ids included)",
              (r2.status, r2.body, r2.headers.get("idempotent-replayed")), (r.status, r.body, "true"))
        ck.eq("A: batch statuses", [x.get("status") for x in res], [w[0] for w in want])
        for i, (x, (status, w, rule)) in enumerate(zip(res, want)):
            if w == "reject":
                e = x.get("error") or {}
                ck.eq(f"A: batch item {i}: error (code, rule)", (e.get("code"), e.get("rule")), ("rule_rejected", rule))
                continue
            if "id" not in x:
                ck.check(f"A: batch item {i} has an id", False, x)
                continue
            g = c.get(f"/v1/transfers/{x['id']}")
            expect(ck, f"A: batch item {i} read back", _as201(g), w, rule, 1, book)
        before = (bal(c, u), bal(c, ud), bal(c, dst["GBP"]))
        r = c.post("/v1/transfers/batch", {"atomic": True, "transfers": [item(u, ud, "1.00"), item(u, ud, "100.00"),
                                                                         item(src["GBP"], dst["GBP"], "70.00")]})
        ck.status("A: atomic batch with a rejected item 200", r, 200)
        res = (r.json or {}).get("results", [])
        ck.eq("A: atomic: all error", [x.get("status") for x in res], ["error", "error", "error"])
        ck.eq("A: atomic: (code, rule) of each item", [((x.get("error") or {}).get("code"), (x.get("error") or {}).get("rule"))
                                                        for x in res],
              [("batch_aborted", None), ("batch_aborted", None), ("rule_rejected", "amt-reject")])
        ck.eq("A: atomic abort changed nothing", (bal(c, u), bal(c, ud), bal(c, dst["GBP"])), before)
        r = c.post("/v1/transfers/batch", {"atomic": True, "transfers": [item(u, ud, "100.00"),
                                                                         item(src["EUR"], dst["EUR"], "50.00"),
                                                                         item(u, ud, "1.00")]})
        res = (r.json or {}).get("results", [])
        ck.eq("A: atomic batch with flag and hold items: statuses", [x.get("status") for x in res],
              ["posted", "pending", "posted"])
        for i, (w, rule) in enumerate((("flag", "amt-flag"), ("hold", "amt-hold"), ("none", None))):
            if i < len(res) and "id" in res[i]:
                expect(ck, f"A: atomic batch item {i} read back", _as201(c.get(f"/v1/transfers/{res[i]['id']}")),
                       w, rule, 1, book)


class _As201:
    """A GET /v1/transfers/{id} answer seen as the 201 of its creation (for expect())."""

    def __init__(self, r):
        self.status = 201 if r.status == 200 else r.status
        self.json = r.json
        self.code = r.code
        self._r = r

    def describe(self):
        return self._r.describe()


def _as201(r):
    return _As201(r)


def part_a_listing(ck, c, book):
    with ck.section("A: GET /v1/suspicious lists every entry, filters, pagination"):
        full = entries(c)
        ids = [e.get("id") for e in full]
        ck.eq("A: no entry twice", len(set(ids)), len(ids))
        got = {e.get("transfer_id"): (e.get("rule"), e.get("action"), e.get("status"), e.get("rules_version"))
               for e in full}
        exp = book.view()
        ck.eq("A: entries == the flagged/held transfers (no entry for rejects or clean ones)",
              sorted(got.items()), sorted(exp.items()))
        missing = [sorted(ENTRY_FIELDS - set(e)) for e in full if not ENTRY_FIELDS <= set(e)]
        ck.eq("A: every entry has every documented field", missing, [])
        bad = [e for e in full if e.get("transfer_id") in book.by_tid and
               tuple(e.get(k) for k in ("amount", "currency", "debit_account_id", "credit_account_id")) !=
               tuple(book.by_tid[e["transfer_id"]][k] for k in ("amount", "currency", "debit_account_id",
                                                                "credit_account_id"))]
        ck.eq("A: entries carry the transfer's amount, currency and accounts", bad, [])
        ck.check("A: created_at is RFC 3339 with ms", all(TIME_RE.match(str(e.get("created_at"))) for e in full))
        ck.eq("A: open entries are unreviewed", [e for e in full if e.get("status") == "open" and
                                                 (e.get("reviewed_by"), e.get("reviewed_at")) != (None, None)], [])
        ck.check("A: newest first by default (ids decreasing)", all(a > b for a, b in zip(ids, ids[1:])), ids[:20])
        asc = entries(c, "order=asc")
        ck.eq("A: order=asc: the same entries, oldest first", [e.get("id") for e in asc], sorted(ids))
        # small pages: follow next_cursor until null, every entry exactly once
        for path in ("/v1/suspicious", "/v1/suspicious?order=asc"):
            items, pages = c.paginate(path, limit=2)
            ck.eq(f"A: {path} with limit=2: every entry once, in order ({pages} pages)",
                  [e.get("id") for e in items], ids if "asc" not in path else sorted(ids))
            ck.check(f"A: {path} with limit=2 took several pages", pages >= len(ids) // 2, pages)
        r = c.get("/v1/suspicious?limit=2")
        ck.eq("A: limit=2 gives at most 2 entries", len((r.json or {}).get("data", [])) <= 2, True)
        ck.check("A: limit=2 gives a non-null next_cursor here", (r.json or {}).get("next_cursor") is not None)
        for rule in ("amt-flag", "amt-hold", "bl-hold", "bl-reject"):
            items, _ = c.paginate(f"/v1/suspicious?rule={rule}", limit=3)
            ck.eq(f"A: rule={rule} filter", sorted(e.get("transfer_id") for e in items),
                  sorted(t for t, e in book.by_tid.items() if e["rule"] == rule))
        for status in ("open", "cleared", "confirmed"):
            items, _ = c.paginate(f"/v1/suspicious?status={status}", limit=3)
            ck.eq(f"A: status={status} filter", sorted(e.get("transfer_id") for e in items),
                  sorted(t for t, e in book.by_tid.items() if e["status"] == status))
        items, _ = c.paginate("/v1/suspicious?rule=amt-flag&status=open&order=asc", limit=1)
        ck.eq("A: rule + status filters together, limit=1, asc",
              [e.get("transfer_id") for e in items],
              [e.get("transfer_id") for e in asc if e.get("rule") == "amt-flag" and e.get("status") == "open"])
        times = sorted({e.get("created_at") for e in full})
        if len(times) >= 3:
            lo, hi = times[len(times) // 3], times[2 * len(times) // 3]
            items, _ = c.paginate(f"/v1/suspicious?from={lo}&to={hi}", limit=2)
            ck.eq(f"A: from={lo} to={hi} is [from, to)", sorted(e.get("id") for e in items),
                  sorted(e.get("id") for e in full if lo <= e.get("created_at") < hi))
            items, _ = c.paginate(f"/v1/suspicious?from={hi}", limit=1000)
            ck.eq("A: from= alone", sorted(e.get("id") for e in items),
                  sorted(e.get("id") for e in full if e.get("created_at") >= hi))
            items, _ = c.paginate(f"/v1/suspicious?to={lo}", limit=1000)
            ck.eq("A: to= alone (exclusive)", sorted(e.get("id") for e in items),
                  sorted(e.get("id") for e in full if e.get("created_at") < lo))
        else:
            ck.check("A: at least 3 distinct created_at for the from/to test", False, times)
        items, _ = c.paginate("/v1/suspicious?rule=no-such-rule", limit=10)
        ck.eq("A: rule filter that matches nothing", items, [])


def part_a_review_flagged(ck, c, book, src, dst, st):
    with ck.section("A: reviewing flagged entries changes only their status; Idempotency-Key"):
        flagged = [e for e in entries(c, "status=open&rule=amt-flag") if e.get("action") == "flag"]
        ck.check("A: at least 3 open flagged entries to review", len(flagged) >= 3, len(flagged))
        if len(flagged) < 3:
            return
        acc = (src["USD"], dst["USD"], src["JPY"], dst["JPY"], src["BHD"], dst["BHD"], src["KWD"], dst["KWD"],
               src["CHF"], dst["CHF"], A_BLF)
        before = [bal(c, a) for a in acc]
        e1, e2, e3 = flagged[0], flagged[1], flagged[2]
        r = review(c, e1["id"], "clear")
        ck.status("A: clear a flagged entry", r, 200)
        if r.status == 200:
            st["reviews"] += 1
            book.by_tid[e1["transfer_id"]]["status"] = "cleared"
        ck.eq("A: cleared flagged: (status, transfer.status)",
              ((r.json or {}).get("status"), ((r.json or {}).get("transfer") or {}).get("status")), ("cleared", "posted"))
        key = "k-" + uuid.uuid4().hex
        r = review(c, e2["id"], "confirm", key=key)
        ck.status("A: confirm a flagged entry (with an Idempotency-Key)", r, 200)
        if r.status == 200:
            st["reviews"] += 1
            book.by_tid[e2["transfer_id"]]["status"] = "confirmed"
        ck.eq("A: confirmed flagged: (status, transfer.status)",
              ((r.json or {}).get("status"), ((r.json or {}).get("transfer") or {}).get("status")),
              ("confirmed", "posted"))
        r2 = review(c, e2["id"], "confirm", key=key)
        ck.eq("A: the same Idempotency-Key and body -> the original answer, replayed",
              (r2.status, r2.body, r2.headers.get("idempotent-replayed")), (r.status, r.body, "true"))
        r3 = review(c, e2["id"], "clear", key=key)
        ck.status("A: the same Idempotency-Key with another decision -> 409 idempotency_conflict", r3, 409,
                  "idempotency_conflict")
        ck.eq("A: the entry stays confirmed", (entry_of(c, e2["transfer_id"]) or {}).get("status"), "confirmed")
        ck.eq("A: an unreviewed entry stays open", (entry_of(c, e3["transfer_id"]) or {}).get("status"), "open")
        ck.eq("A: reviewing flagged entries moved no money", [bal(c, a) for a in acc], before)
        for e, status in ((e1, "cleared"), (e2, "confirmed")):
            g = entry_of(c, e["transfer_id"]) or {}
            ck.eq(f"A: the {status} entry as listed: (status, reviewed_by)", (g.get("status"), g.get("reviewed_by")),
                  (status, ADMIN_ACTOR))
            ck.check(f"A: the {status} entry has reviewed_at", TIME_RE.match(str(g.get("reviewed_at"))), g)
            ck.eq(f"A: the {status} flagged transfer is still posted",
                  tget(c.get(f"/v1/transfers/{e['transfer_id']}").json, "status"), "posted")
        got = {e.get("transfer_id"): (e.get("rule"), e.get("action"), e.get("status"), e.get("rules_version"))
               for e in entries(c)}
        ck.eq("A: the listing after the reviews", sorted(got.items()), sorted(book.view().items()))


def part_a_roles(ck, srv, c, book, st):
    with ck.section("A: roles: customer 403, auditor reads but does not review"):
        cust = make_user(srv, c, "rules-cust")
        cc = Client(srv.host, srv.port, token=cust.token)
        some = entries(c)
        eid = some[0]["id"] if some else 1
        ck.status("A: customer GET /v1/suspicious -> 403", cc.get("/v1/suspicious"), 403, "forbidden")
        ck.status("A: customer review -> 403", review(cc, eid, "clear"), 403, "forbidden")
        ck.status("A: customer GET /v1/rules -> 403", cc.get("/v1/rules"), 403, "forbidden")
        ck.status("A: customer POST /v1/rules/reload -> 403", cc.post("/v1/rules/reload"), 403, "forbidden")
        aud = make_user(srv, c, "rules-auditor")
        r = c.post(f"/v1/users/{aud.user_id}/role", {"role": "auditor"})
        ck.status("A: make the user an auditor", r, 200)
        r = sign_in(srv.anon_client(), aud.username, aud.password)
        ck.status("A: the auditor signs in", r, 201)
        ac = Client(srv.host, srv.port, token=(r.json or {}).get("token"))
        ck.eq("A: the auditor is an auditor", (ac.get("/v1/me").json or {}).get("role"), "auditor")
        r = ac.get("/v1/suspicious?limit=1000")
        ck.status("A: auditor GET /v1/suspicious -> 200", r, 200)
        ck.eq("A: the auditor sees the same entries", sorted(e.get("id") for e in (r.json or {}).get("data", [])),
              sorted(e.get("id") for e in entries(c)))
        r = ac.get("/v1/rules")
        ck.status("A: auditor GET /v1/rules -> 200", r, 200)
        ck.eq("A: the auditor sees the rules", [x.get("id") for x in (r.json or {}).get("rules", [])],
              [x[0] for x in A_RULES])
        open_e = [e for e in entries(c, "status=open")]
        target = open_e[0] if open_e else (some[0] if some else {"id": 1, "transfer_id": None})
        ck.status("A: auditor review -> 403", review(ac, target["id"], "clear"), 403, "forbidden")
        ck.status("A: auditor POST /v1/rules/reload -> 403", ac.post("/v1/rules/reload"), 403, "forbidden")
        if open_e:
            ck.eq("A: the refused reviews left the entry open", (entry_of(c, target["transfer_id"]) or {}).get("status"),
                  "open")


def part_a_audit(ck, c, st):
    with ck.section("A: GET /v1/audit has a suspicious.reviewed event per review, by the reviewer"):
        events, _ = c.paginate("/v1/audit")
        rev = [e for e in events if e.get("type") == "suspicious.reviewed"]
        ck.eq("A: one suspicious.reviewed event per successful review", len(rev), st["reviews"])
        ck.eq("A: their actor is the reviewing admin key", sorted({e.get("actor") for e in rev}),
              [ADMIN_ACTOR] if rev else [])


# ---------------------------------------------------------------- server V: velocity

CONFIG_V = """# test_rules.py server V: velocity
rule vel-count velocity window=2s count=3 action=flag
rule vel-hold velocity window=1d count=6 action=hold
rule vel-sum velocity window=1h amount=100.00 amount.JPY=10000 action=reject
"""


def part_v(ck, scratch):
    srv = rules_server(scratch, "V", CONFIG_V)
    c = srv.client()
    book = Book()
    try:
        with ck.section("V: count=3 in 2 s: 3 pass, the 4th fires; deposits do not count, withdrawals do"):
            a, d = c.new_account("USD"), c.new_account("USD")
            acct_count = a
            for i in range(5):
                expect(ck, f"V: deposit 100.00 #{i + 1} (debit is a system account: not counted)",
                       c.deposit(a, "100.00"), "none")
            t0 = time.monotonic()
            for i in range(3):
                expect(ck, f"V: transfer 1.00 #{i + 1} of 3 -> nothing", c.transfer(a, d, "1.00"), "none")
            expect(ck, "V: transfer #4 within 2 s -> flag vel-count", c.transfer(a, d, "1.00"), "flag", "vel-count", 1,
                   book)
            expect(ck, "V: withdrawal #5 within 2 s -> flag vel-count", c.withdraw(a, "1.00"), "flag", "vel-count", 1,
                   book, "withdrawal")
            dt = time.monotonic() - t0
            ck.check("V: (setup) the 5 requests took < 1.5 s", dt < 1.5, f"{dt:.2f}s")
            time.sleep(2.3)
            expect(ck, "V: after the 2 s window passed the count restarts -> nothing", c.transfer(a, d, "1.00"), "none")
            expect(ck, "V: 7th in the 1 d window (count=6 hold) -> held by vel-hold", c.transfer(a, d, "1.00"), "hold", "vel-hold",
                   1, book)
            ck.eq("V: balances: 7 x 1.00 out, the last one reserved", bal(c, a), ("494.00", "1.00", "0.00", "493.00"))
        with ck.section("V: amount=100.00: == passes, > fires; rejected ones do not count"):
            b, d = c.new_account("USD"), c.new_account("USD")
            expect(ck, "V: deposit 500.00", c.deposit(b, "500.00"), "none")
            acct_sum = b
            expect(ck, "V: 60.00 -> nothing", c.transfer(b, d, "60.00"), "none")
            expect(ck, "V: +50.00 = 110.00 > 100.00 -> reject vel-sum", c.transfer(b, d, "50.00"), "reject", "vel-sum")
            expect(ck, "V: +40.00 = 100.00 (the rejected 50.00 not counted) -> nothing", c.transfer(b, d, "40.00"),
                   "none")
            expect(ck, "V: +0.01 = 100.01 -> reject vel-sum", c.transfer(b, d, "0.01"), "reject", "vel-sum")
            expect(ck, "V: another account is not affected", c.transfer(d, b, "100.00"), "none")
        with ck.section("V: amount.JPY=10000"):
            j, jd = c.new_account("JPY"), c.new_account("JPY")
            expect(ck, "V: JPY deposit 50000", c.deposit(j, "50000"), "none")
            expect(ck, "V: JPY 6000 -> nothing", c.transfer(j, jd, "6000"), "none")
            expect(ck, "V: JPY +4000 = 10000 -> nothing", c.transfer(j, jd, "4000"), "none")
            expect(ck, "V: JPY +1 = 10001 -> reject", c.transfer(j, jd, "1"), "reject", "vel-sum")
        with ck.section("V: pending transfers count by their reserved amount"):
            p, d = c.new_account("USD"), c.new_account("USD")
            expect(ck, "V: deposit 500.00", c.deposit(p, "500.00"), "none")
            t = expect(ck, "V: pending:true 60.00 -> pending, nothing fired", c.transfer(p, d, "60.00", pending=True),
                       "none", client_pending=True)
            expect(ck, "V: +40.00 = 100.00 -> nothing", c.transfer(p, d, "40.00"), "none")
            expect(ck, "V: +0.01 (the pending 60.00 counts) -> reject", c.transfer(p, d, "0.01"), "reject", "vel-sum")
            if t is not None:
                r = c.post(f"/v1/transfers/{t['id']}/post", {"amount": "30.00"})
                ck.status("V: posting the pending transfer is not judged again", r, 200)
                ck.eq("V: the post carries no flags", tget(r.json, "flags"), ABSENT)
        with ck.section("V: batch items count toward each other's windows"):
            bv, bs, ba, d = c.new_account("USD"), c.new_account("USD"), c.new_account("USD"), c.new_account("USD")
            for acct in (bv, bs, ba):
                expect(ck, f"V: deposit 500.00 into {acct}", c.deposit(acct, "500.00"), "none")
            r = c.post("/v1/transfers/batch", {"transfers": [item(bv, d, "1.00") for _ in range(5)]})
            res = (r.json or {}).get("results", [])
            ck.eq("V: batch of 5 x 1.00 from one account: statuses", [x.get("status") for x in res], ["posted"] * 5)
            for i, x in enumerate(res):
                w = "flag" if i >= 3 else "none"
                expect(ck, f"V: batch item {i} read back -> {w}", _as201(c.get(f"/v1/transfers/{x.get('id')}")), w,
                       "vel-count" if w == "flag" else None, 1, book)
            r = c.post("/v1/transfers/batch", {"transfers": [item(bs, d, x) for x in ("60.00", "50.00", "40.00", "0.01")]})
            res = (r.json or {}).get("results", [])
            ck.eq("V: batch 60.00, 50.00, 40.00, 0.01: statuses", [x.get("status") for x in res],
                  ["posted", "error", "posted", "error"])
            ck.eq("V: ... the errors", [((x.get("error") or {}).get("code"), (x.get("error") or {}).get("rule"))
                                       for x in res if x.get("status") == "error"],
                  [("rule_rejected", "vel-sum"), ("rule_rejected", "vel-sum")])
            ck.eq("V: ... balance", bal(c, bs), ("400.00", "0.00", "0.00", "400.00"))
            r = c.post("/v1/transfers/batch", {"atomic": True, "transfers": [item(ba, d, "60.00"), item(ba, d, "50.00")]})
            res = (r.json or {}).get("results", [])
            ck.eq("V: atomic batch 60.00 + 50.00 -> aborted by vel-sum",
                  [((x.get("error") or {}).get("code"), (x.get("error") or {}).get("rule")) for x in res],
                  [("batch_aborted", None), ("rule_rejected", "vel-sum")])
            expect(ck, "V: after the abort 100.00 passes (the aborted 60.00 does not count)",
                   c.transfer(ba, d, "100.00"), "none")
            expect(ck, "V: then 0.01 -> reject", c.transfer(ba, d, "0.01"), "reject", "vel-sum")
        with ck.section("V: concurrent transfers never exceed amount= together"):
            cc, d = c.new_account("USD"), c.new_account("USD")
            expect(ck, "V: deposit 500.00", c.deposit(cc, "500.00"), "none")
            outs = []
            barrier = threading.Barrier(10)

            def racer():
                cl = srv.client(timeout=30)
                try:
                    barrier.wait(10)
                    for _ in range(2):
                        r = cl.transfer(cc, d, "10.00")
                        outs.append((r.status, r.code, err_of(r).get("rule"), r.json))
                except Exception as e:  # noqa: BLE001
                    outs.append(("exception", repr(e), None, None))
                finally:
                    cl.close()

            ts = [threading.Thread(target=racer, daemon=True) for _ in range(10)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            ok = [o for o in outs if o[0] == 201]
            ck.eq("V: 20 concurrent 10.00 transfers against amount=100.00: (accepted, rejected by vel-sum)",
                  (len(ok), len([o for o in outs if o[:3] == (422, "rule_rejected", "vel-sum")])), (10, 10))
            ck.eq("V: ... available afterwards", bal(c, cc)[3], "400.00")
            for o in ok:
                fl = (o[3] or {}).get("flags")
                if fl == ["suspicious"]:
                    book.add(o[3], "vel-count", "flag", 1)
                elif fl == ["suspicious", "held"]:
                    book.add(o[3], "vel-hold", "hold", 1)
            ck.eq("V: ... the 7th to 10th accepted are held by vel-hold (count=6 in 1 d)",
                  len([o for o in ok if (o[3] or {}).get("flags") == ["suspicious", "held"]]), 4)
        with ck.section("V: suspicious entries"):
            got = {e.get("transfer_id"): (e.get("rule"), e.get("action"), e.get("status"), e.get("rules_version"))
                   for e in entries(c)}
            ck.eq("V: entries == the flagged/held transfers", sorted(got.items()), sorted(book.view().items()))
        with ck.section("V: a restart keeps the velocity windows"):
            no_500(ck, "V before the restart", [c])
            ck.eq("V: clean stop", srv.stop(), 0)
            srv.start()
            c = srv.client()
            expect(ck, "V: after the restart: 100.00 already sent in 1 h, 0.01 -> reject",
                   c.transfer(acct_sum, d, "0.01"), "reject", "vel-sum")
            expect(ck, "V: after the restart: 8th transfer in 1 d -> held", c.transfer(acct_count, d, "1.00"), "hold",
                   "vel-hold", 1, book)
            got = {e.get("transfer_id"): (e.get("rule"), e.get("action"), e.get("status"), e.get("rules_version"))
                   for e in entries(c)}
            ck.eq("V: entries after the restart", sorted(got.items()), sorted(book.view().items()))
        no_500(ck, "V", [c])
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


# ---------------------------------------------------------------- server N: new_account

AGE_S = 4
CONFIG_N = f"""# test_rules.py server N: new accounts
rule young-flag new_account age={AGE_S}s threshold=10.00 threshold.JPY=1000 action=flag
rule young-hold new_account age={AGE_S}000ms threshold=20.00 threshold.JPY=2000 action=hold
rule young-reject new_account age={AGE_S}s threshold=30.00 threshold.JPY=3000 action=reject
"""


def parse_ms(text):
    from datetime import datetime, timezone
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def part_n(ck, scratch):
    srv = rules_server(scratch, "N", CONFIG_N)
    c = srv.client()
    book = Book()
    try:
        with ck.section("N: a young account fires at its thresholds"):
            r = c.create_account("USD")
            x = (r.json or {}).get("id")
            x_created = parse_ms(r.json["created_at"])
            y, xj, yj = c.new_account("USD"), c.new_account("JPY"), c.new_account("JPY")
            t0 = time.monotonic()
            expect(ck, "N: deposit 200.00 into a young account (debit is cash: not a customer) -> nothing",
                   c.deposit(x, "200.00"), "none")
            expect(ck, "N: deposit 5000 JPY -> nothing", c.deposit(xj, "5000"), "none")
            expect(ck, "N: young 9.99 -> nothing", c.transfer(x, y, "9.99"), "none")
            expect(ck, "N: young 10.00 -> flag", c.transfer(x, y, "10.00"), "flag", "young-flag", 1, book)
            expect(ck, "N: young 19.99 -> flag", c.transfer(x, y, "19.99"), "flag", "young-flag", 1, book)
            expect(ck, "N: young 20.00 -> hold", c.transfer(x, y, "20.00"), "hold", "young-hold", 1, book)
            expect(ck, "N: young 30.00 -> reject", c.transfer(x, y, "30.00"), "reject", "young-reject")
            expect(ck, "N: young withdrawal 10.00 -> flag", c.withdraw(x, "10.00"), "flag", "young-flag", 1, book,
                   "withdrawal")
            expect(ck, "N: young JPY 999 -> nothing", c.transfer(xj, yj, "999"), "none")
            expect(ck, "N: young JPY 1000 -> flag", c.transfer(xj, yj, "1000"), "flag", "young-flag", 1, book)
            expect(ck, "N: young JPY 3000 -> reject", c.transfer(xj, yj, "3000"), "reject", "young-reject")
            dt = time.monotonic() - t0
            ck.check(f"N: (setup) the young-account requests took < {AGE_S - 2} s", dt < AGE_S - 2, f"{dt:.2f}s")
            # still young a little over half-way through age= (catches an age taken too short)
            time.sleep(max(0.0, min(AGE_S, x_created + AGE_S - 1.5 - time.time())))
            expect(ck, f"N: {AGE_S - 1.5:.1f} s after creation the account is still young: 10.00 -> flag",
                   c.transfer(x, y, "10.00"), "flag", "young-flag", 1, book)
        with ck.section("N: once age= has passed nothing fires; the credit side never does"):
            xj_created = parse_ms(c.account(xj)["created_at"])
            time.sleep(min(AGE_S + 1.0, max(0.0, max(x_created, xj_created) + AGE_S + 0.3 - time.time())))
            expect(ck, "N: the same account after age= -> 30.00 passes", c.transfer(x, y, "30.00"), "none")
            expect(ck, "N: JPY after age= -> 3000 passes", c.transfer(xj, yj, "3000"), "none")
            z = c.new_account("USD")
            expect(ck, "N: deposit 50.00 into a new young account -> nothing", c.deposit(z, "50.00"), "none")
            expect(ck, "N: old -> young credit 30.00 -> nothing (only the debit account counts)",
                   c.transfer(x, z, "30.00"), "none")
            expect(ck, "N: the young account sends 30.00 -> reject", c.transfer(z, x, "30.00"), "reject",
                   "young-reject")
            expect(ck, "N: the young account sends 9.99 -> nothing", c.transfer(z, x, "9.99"), "none")
        with ck.section("N: suspicious entries"):
            got = {e.get("transfer_id"): (e.get("rule"), e.get("action"), e.get("status"), e.get("rules_version"))
                   for e in entries(c)}
            ck.eq("N: entries == the flagged/held transfers", sorted(got.items()), sorted(book.view().items()))
        no_500(ck, "N", [c])
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


# ---------------------------------------------------------------- server R: reload, SIGHUP, restart

R_SRC, R_DST, R_X = 11, 12, 13
REJ_KEY = "k-rules-rejected-" + uuid.uuid4().hex[:8]
CONFIG_R1 = "rule r-amt amount threshold=100.00 action=flag\n"
CONFIG_R2 = f"""# version 2
rule r-amt amount threshold=50.00 action=flag
rule r-block blocklist accounts={R_X} action=reject
"""
CONFIG_R3 = f"""rule r-amt amount threshold=20.00 action=flag
rule r-block blocklist accounts={R_X} action=reject
rule r-hold amount threshold=500.00 action=hold
"""
CONFIG_R_1024 = (f"rule r-big1 blocklist accounts={R_X}," + ",".join(str(100 + i) for i in range(511)) +
                 " action=reject\nrule r-big2 blocklist accounts=" + ",".join(str(1000 + i) for i in range(512)) +
                 " action=flag\n")
BAD_R = [  # (what, file text, line number the message must name or None)
    ("unknown type", CONFIG_R2 + "rule r-x frobnicate threshold=1.00 action=flag\n", 4),
    ("bad amount", "# c\nrule r-amt amount threshold=ten action=flag\n", 2),
    ("duplicate id", "rule r-amt amount threshold=50.00 action=flag\n\nrule r-amt blocklist accounts=5 action=reject\n", 3),
    ("negative amount", "rule r-amt amount threshold=-5.00 action=flag\n", 1),
    ("bad action", "rule r-amt amount threshold=50.00 action=block\n", 1),
    ("upper-case id", "rule R-Amt amount threshold=50.00 action=flag\n", 1),
    ("32-character id", f"rule {'a' * 32} amount threshold=50.00 action=flag\n", 1),
    ("unknown key", "rule r-amt amount threshold=50.00 colour=red action=flag\n", 1),
    ("missing action", "rule r-amt amount threshold=50.00\n", 1),
    ("bad window unit", "rule r-v velocity window=5y count=3 action=flag\n", 1),
    ("unknown directive", "default_regoin us-east\n", 1),
    ("5 velocity rules", "".join(f"rule v{i} velocity window=1m count=3 action=flag\n" for i in range(5)), None),
    ("1025 blocklisted ids in total", "rule b1 blocklist accounts=" + ",".join(str(100 + i) for i in range(512)) +
     " action=flag\nrule b2 blocklist accounts=" + ",".join(str(1000 + i) for i in range(513)) + " action=reject\n",
     None),
    ("33 rules", "".join(f"rule a{i} amount threshold=50.00 action=flag\n" for i in range(33)), None),
]


def part_r(ck, scratch):
    srv = rules_server(scratch, "R", CONFIG_R1)
    c = srv.client()
    cfg = srv.config_path
    book = Book()
    held = {}
    try:
        with ck.section("R: version 1"):
            create_accounts(ck, c, "R", [("USD", {"allow_overdraft": True}), ("USD", {}), ("USD", {})])
            r, ver, rules = rules_view(c)
            ck.eq("R: GET /v1/rules: version and rules", (ver, rules), (1, [("r-amt", "amount", "flag")]))
            ck.eq("R: default_region without the directive", (r.json or {}).get("default_region"), "default")
            expect(ck, "R v1: 99.99 -> nothing", c.transfer(R_SRC, R_DST, "99.99"), "none", version=1)
            expect(ck, "R v1: 100.00 -> flag", c.transfer(R_SRC, R_DST, "100.00"), "flag", "r-amt", 1, book)
            expect(ck, "R v1: 50.00 -> nothing", c.transfer(R_SRC, R_DST, "50.00"), "none", version=1)
            expect(ck, "R v1: to the later-blocklisted account -> nothing", c.transfer(R_SRC, R_X, "1.00"), "none",
                   version=1)
        with ck.section("R: POST /v1/rules/reload"):
            write_config(cfg, CONFIG_R2)
            r = c.post("/v1/rules/reload")
            ck.status("R: reload (no body) -> 200", r, 200)
            ck.eq("R: reload answer", r.json, {"version": 2, "changed": True})
            r, ver, rules = rules_view(c)
            ck.eq("R: GET /v1/rules after the reload", (ver, rules),
                  (2, [("r-amt", "amount", "flag"), ("r-block", "blocklist", "reject")]))
            expect(ck, "R v2: 50.00 -> flag", c.transfer(R_SRC, R_DST, "50.00"), "flag", "r-amt", 2, book)
            expect(ck, "R v2: 49.99 -> nothing", c.transfer(R_SRC, R_DST, "49.99"), "none", version=2)
            expect(ck, "R v2: to the blocklisted account -> reject", c.transfer(R_SRC, R_X, "1.00"), "reject",
                   "r-block", 2)
            r_rej = c.transfer(R_SRC, R_X, "2.00", key=REJ_KEY)
            expect(ck, "R v2: to the blocklisted account with an Idempotency-Key -> reject", r_rej, "reject",
                   "r-block", 2)
            held["rejected"] = r_rej
            r = c.post("/v1/rules/reload", {})
            ck.eq("R: reload of identical content (body {}) -> changed false, same version",
                  (r.status, r.json), (200, {"version": 2, "changed": False}))
            g = c.get("/v1/transfers/" + next(iter(book.by_tid)))
            ck.eq("R: an older flagged transfer keeps its rules_version and flags",
                  (tget(g.json, "rules_version"), tget(g.json, "flags")), (1, ["suspicious"]))
        with ck.section("R: bad files -> 422 invalid_rules, the old rules stay"):
            for what, text, line in BAD_R:
                write_config(cfg, text)
                r = c.post("/v1/rules/reload")
                ck.status(f"R: {what} -> 422 invalid_rules", r, 422, "invalid_rules")
                if line is not None:
                    msg = r.message.replace(cfg, "<file>")
                    ck.check(f"R: {what}: the message names line {line}", re.search(rf"\b{line}\b", msg), r.message)
            ck.eq("R: still version 2 with its rules", rules_view(c)[1:],
                  (2, [("r-amt", "amount", "flag"), ("r-block", "blocklist", "reject")]))
            expect(ck, "R: after the bad files 50.00 -> still flag (v2)", c.transfer(R_SRC, R_DST, "50.00"), "flag",
                   "r-amt", 2, book)
            expect(ck, "R: after the bad files the blocklist still rejects", c.transfer(R_SRC, R_X, "1.00"), "reject",
                   "r-block", 2)
            os.remove(cfg)
            r = c.post("/v1/rules/reload")
            ck.status("R: a missing config file -> 422 invalid_rules", r, 422, "invalid_rules")
            ck.eq("R: ... still version 2", rules_view(c)[1], 2)
            write_config(cfg, CONFIG_R2)
            r = c.post("/v1/rules/reload")
            ck.eq("R: the version-2 content again -> changed false, version 2", (r.status, r.json),
                  (200, {"version": 2, "changed": False}))
        with ck.section("R: 1024 blocklisted ids in total are allowed"):
            write_config(cfg, CONFIG_R_1024)
            r = c.post("/v1/rules/reload")
            ck.eq("R: 1024 blocklisted ids -> version 3", (r.status, r.json), (200, {"version": 3, "changed": True}))
            expect(ck, "R v3: the first listed id -> reject r-big1", c.transfer(R_SRC, R_X, "1.00"), "reject", "r-big1", 3)
            expect(ck, "R v3: 100.00 -> nothing (no amount rule)", c.transfer(R_SRC, R_DST, "100.00"), "none", version=3)
        with ck.section("R: a file with no rules"):
            write_config(cfg, "# nothing but a comment\n\n")
            r = c.post("/v1/rules/reload")
            ck.eq("R: empty rule set -> version 4", (r.status, r.json), (200, {"version": 4, "changed": True}))
            ck.eq("R: GET /v1/rules: no rules", rules_view(c)[1:], (4, []))
            expect(ck, "R v4 (no rules): 100000.00 -> nothing", c.transfer(R_SRC, R_DST, "100000.00"), "none",
                   version=4)
            expect(ck, "R v4 (no rules): to the formerly blocklisted account -> nothing",
                   c.transfer(R_SRC, R_X, "1.00"), "none", version=4)
            r = c.transfer(R_SRC, R_X, "2.00", key=REJ_KEY)
            first = held.get("rejected")
            ck.eq("R v4: replaying the Idempotency-Key of the v2 rejection -> the original 422, replayed",
                  (r.status, r.body, r.headers.get("idempotent-replayed")),
                  (422, first.body if first is not None else None, "true"))
        with ck.section("R: SIGHUP reloads"):
            write_config(cfg, CONFIG_R3)
            os.kill(srv.proc.pid, signal.SIGHUP)
            ver, deadline = None, time.monotonic() + 5
            while time.monotonic() < deadline:
                ver = rules_view(c)[1]
                if ver == 5:
                    break
                time.sleep(0.05)
            ck.eq("R: after SIGHUP: version 5 with the new rules", rules_view(c)[1:],
                  (5, [("r-amt", "amount", "flag"), ("r-block", "blocklist", "reject"), ("r-hold", "amount", "hold")]))
            expect(ck, "R v5: 20.00 -> flag", c.transfer(R_SRC, R_DST, "20.00"), "flag", "r-amt", 5, book)
            expect(ck, "R v5: 19.99 -> nothing", c.transfer(R_SRC, R_DST, "19.99"), "none", version=5)
            t = expect(ck, "R v5: 500.00 -> hold", c.transfer(R_SRC, R_DST, "500.00"), "hold", "r-hold", 5, book)
            if t is not None:
                held["id"] = t["id"]
            write_config(cfg, "rule broken nonsense action=flag\n")
            os.kill(srv.proc.pid, signal.SIGHUP)
            time.sleep(0.5)
            ck.check("R: a bad file on SIGHUP: the server keeps running", srv.alive())
            ck.eq("R: ... and keeps version 5", rules_view(c)[1], 5)
            expect(ck, "R: ... whose rules still apply", c.transfer(R_SRC, R_DST, "20.00"), "flag", "r-amt", 5, book)
            write_config(cfg, CONFIG_R3)
            r = c.post("/v1/rules/reload")
            ck.eq("R: the SIGHUP'd content again -> changed false", (r.status, r.json),
                  (200, {"version": 5, "changed": False}))
        with ck.section("R: restart keeps version, flags and entries"):
            got = {e.get("transfer_id"): (e.get("rule"), e.get("action"), e.get("status"), e.get("rules_version"))
                   for e in entries(c)}
            ck.eq("R: entries == the flagged/held transfers", sorted(got.items()), sorted(book.view().items()))
            before_entries = entries(c)
            before_t = {tid: c.get(f"/v1/transfers/{tid}").json for tid in book.by_tid}
            before_rules = c.get("/v1/rules").json
            before_bal = (bal(c, R_SRC), bal(c, R_DST))
            ck.eq("R: clean stop", srv.stop(), 0)
            srv.start()
            c = srv.client()
            ck.eq("R: GET /v1/rules after the restart is unchanged", c.get("/v1/rules").json, before_rules)
            ck.eq("R: suspicious entries after the restart are unchanged", entries(c), before_entries)
            after_t = {tid: c.get(f"/v1/transfers/{tid}").json for tid in book.by_tid}
            ck.eq("R: flagged/held transfers after the restart are unchanged", after_t, before_t)
            ck.eq("R: balances after the restart", (bal(c, R_SRC), bal(c, R_DST)), before_bal)
            r = c.post("/v1/rules/reload")
            ck.eq("R: reload of the same file after the restart -> changed false, version 5", (r.status, r.json),
                  (200, {"version": 5, "changed": False}))
            expect(ck, "R: after the restart the rules apply (20.00 -> flag v5)", c.transfer(R_SRC, R_DST, "20.00"),
                   "flag", "r-amt", 5, book)
            if "id" in held:
                e = entry_of(c, held["id"])
                r = review(c, (e or {}).get("id", 0), "clear")
                ck.eq("R: the hold from before the restart clears into a posted transfer",
                      (r.status, ((r.json or {}).get("transfer") or {}).get("status")), (200, "posted"))
                ck.eq("R: ... and the money moved", bal(c, R_DST)[0],
                      fmt(to_minor(before_bal[1][0], "USD") + 50000 + 2000, "USD"))
        no_500(ck, "R", [c])
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


# ---------------------------------------------------------------- server L: reload under load

L_X, L_Y = 11, 12
L_SETS = {
    "A": {"threshold": 10000, "block": {L_X}, "thr": "thr-a", "bl": "bl-a",
          "text": f"rule thr-a amount threshold=100.00 action=flag\nrule bl-a blocklist accounts={L_X} action=reject\n"},
    "B": {"threshold": 20000, "block": {L_Y}, "thr": "thr-b", "bl": "bl-b",
          "text": f"rule thr-b amount threshold=200.00 action=flag\nrule bl-b blocklist accounts={L_Y} action=reject\n"},
}
L_AMOUNTS = [5000, 9999, 10000, 15000, 19999, 20000, 25000]
L_THREADS = 4
L_SECONDS = 3.0
L_MAX_TRANSFERS = 3000


def part_l(ck, scratch, rnd):
    srv = rules_server(scratch, "L", L_SETS["A"]["text"])
    c = srv.client()
    try:
        with ck.section("L: reload under load: every transfer judged by exactly one rule set"):
            accts = create_accounts(ck, c, "L", [("USD", {"allow_overdraft": True})] * 6)
            ck.eq("L: starts at version 1 with set A", rules_view(c)[1:],
                  (1, [("thr-a", "amount", "flag"), ("bl-a", "blocklist", "reject")]))
            version_set = {1: "A"}
            reloads = []
            stop = threading.Event()
            budget = {"left": L_MAX_TRANSFERS}
            lock = threading.Lock()
            results = [[] for _ in range(L_THREADS)]
            errors = []
            seeds = [rnd.randrange(2**31) for _ in range(L_THREADS)]
            clients = []

            def worker(i):
                cl = srv.client(timeout=30)
                clients.append(cl)
                rr = random.Random(seeds[i])
                try:
                    while not stop.is_set():
                        with lock:
                            if budget["left"] <= 0:
                                return
                            budget["left"] -= 1
                        d = rr.choice(accts)
                        cr = rr.choice([a for a in accts if a != d])
                        amt = rr.choice(L_AMOUNTS)
                        r = cl.transfer(d, cr, fmt(amt, "USD"))
                        results[i].append((d, cr, amt, r.status, r.code, r.json))
                except Exception as e:  # noqa: BLE001
                    errors.append(f"worker {i}: {e!r}")

            def reloader():
                cl = srv.client(timeout=30)
                clients.append(cl)
                which = "A"
                try:
                    while not stop.is_set():
                        which = "B" if which == "A" else "A"
                        write_config(srv.config_path, L_SETS[which]["text"])
                        r = cl.post("/v1/rules/reload")
                        reloads.append((which, r.status, r.json))
                        time.sleep(0.005)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"reloader: {e!r}")

            ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(L_THREADS)]
            ts.append(threading.Thread(target=reloader, daemon=True))
            t0 = time.monotonic()
            for t in ts:
                t.start()
            while time.monotonic() - t0 < L_SECONDS and any(t.is_alive() for t in ts[:-1]):
                time.sleep(0.05)
            stop.set()
            for t in ts:
                t.join(30)
            ck.check("L: every thread finished", not any(t.is_alive() for t in ts))
            ck.eq("L: no client exception", errors, [])
            n = sum(len(x) for x in results)
            log(f"# L: {n} transfers, {len(reloads)} reloads in {time.monotonic() - t0:.1f} s")
            ck.check("L: at least 20 reloads happened", len(reloads) >= 20, len(reloads))
            ck.check("L: at least 200 transfers happened", n >= 200, n)
            bad_reloads = []
            for k, (which, status, j) in enumerate(reloads):
                want = {"version": k + 2, "changed": True}
                if status != 200 or j != want:
                    bad_reloads.append((k, which, status, j))
                else:
                    version_set[j["version"]] = which
            ck.eq("L: every reload -> 200, changed true, versions 2, 3, ... in order", bad_reloads[:5], [])
            mism, by_set, unknown = [], {"A": 0, "B": 0}, []
            flagged = {}
            for d, cr, amt, status, code, j in (x for res in results for x in res):
                if status == 201:
                    v = (j or {}).get("rules_version")
                elif status == 422 and code == "rule_rejected":
                    v = (j or {}).get("error", {}).get("rules_version")
                else:
                    mism.append(("unexpected answer", d, cr, amt, status, j))
                    continue
                s = version_set.get(v)
                if s is None:
                    unknown.append((v, d, cr, amt, status))
                    continue
                by_set[s] += 1
                rs = L_SETS[s]
                if d in rs["block"] or cr in rs["block"]:
                    ok = status == 422 and (j or {}).get("error", {}).get("rule") == rs["bl"]
                    want = f"reject by {rs['bl']}"
                else:
                    fl = amt >= rs["threshold"]
                    ok = (status == 201 and j.get("status") == "posted"
                          and j.get("flags", ABSENT) == (["suspicious"] if fl else ABSENT))
                    want = "flag" if fl else "nothing"
                    if ok and fl:
                        flagged[j["id"]] = (rs["thr"], v)
                if not ok:
                    mism.append((f"v{v} set {s}: want {want}", d, cr, fmt(amt, "USD"), status, j))
            ck.eq("L: every rules_version names a loaded rule set", unknown[:5], [])
            ck.eq("L: every outcome is exactly what its rule set says (no mixed judgement)", mism[:5], [],
                  f"({len(mism)} mismatches)")
            log(f"# L: judged by set A {by_set['A']}, by set B {by_set['B']}")
            ck.check("L: both rule sets judged transfers", by_set["A"] > 0 and by_set["B"] > 0, by_set)
            last = reloads[-1][0] if reloads else "A"
            last_v = max(version_set)
            ck.eq("L: GET /v1/rules after the run: the last reload", rules_view(c)[1:],
                  (last_v, [(L_SETS[last]["thr"], "amount", "flag"), (L_SETS[last]["bl"], "blocklist", "reject")]))
            got = {e.get("transfer_id"): (e.get("rule"), e.get("rules_version")) for e in entries(c)}
            ck.eq("L: suspicious entries == the flagged transfers, with the rule of their set",
                  len(got), len(flagged))
            ck.check("L: ... entry by entry", got == flagged,
                     str([(k, got.get(k), flagged.get(k)) for k in set(got) ^ set(flagged) |
                          {k for k in got if got.get(k) != flagged.get(k)}][:5]))
            no_500(ck, "L", clients + [c])
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


# ---------------------------------------------------------------- server D: built-in rules

def part_d(ck, scratch):
    d = os.path.join(scratch, "D")
    os.makedirs(d)
    srv = Server(scratch=d)
    srv.start()
    c = srv.client()
    book = Book()
    try:
        with ck.section("D: without --config the built-in rule flags amounts >= 10,000.00"):
            r, ver, rules = rules_view(c)
            ck.status("D: GET /v1/rules 200", r, 200)
            ck.eq("D: exactly the built-in rule", rules, [("large-amount", "amount", "flag")])
            ck.check("D: a version >= 1", isinstance(ver, int) and ver >= 1, ver)
            for cur, under, at in (("USD", "9999.99", "10000.00"), ("JPY", "9999", "10000"),
                                   ("BHD", "9999.999", "10000.000")):
                s, t = c.new_account(cur, allow_overdraft=True), c.new_account(cur)
                expect(ck, f"D: {cur} {under} -> nothing", c.transfer(s, t, under), "none", version=ver)
                expect(ck, f"D: {cur} {at} -> flag large-amount", c.transfer(s, t, at), "flag", "large-amount", ver,
                       book)
            a = c.new_account("USD")
            expect(ck, "D: deposit 10000.00 -> flag", c.deposit(a, "10000.00"), "flag", "large-amount", ver, book,
                   "deposit")
            got = {e.get("transfer_id"): (e.get("rule"), e.get("action"), e.get("status"), e.get("rules_version"))
                   for e in entries(c)}
            ck.eq("D: entries == the flagged transfers", sorted(got.items()), sorted(book.view().items()))
            r = c.post("/v1/rules/reload")
            ck.status("D: reload without --config -> 422 invalid_rules", r, 422, "invalid_rules")
            ck.eq("D: ... the version is unchanged", rules_view(c)[1], ver)
        no_500(ck, "D", [c])
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


# ---------------------------------------------------------------- main

def main(ck):
    rnd = random.Random(seed_from_env())
    scratch = tempfile.mkdtemp(prefix="ledger-rules-")
    try:
        for name, fn in (("server A: amount, blocklist, review flow", lambda: part_a(ck, scratch)),
                         ("server V: velocity", lambda: part_v(ck, scratch)),
                         ("server N: new_account", lambda: part_n(ck, scratch)),
                         ("server R: reload, SIGHUP, restart", lambda: part_r(ck, scratch)),
                         ("server L: reload under load", lambda: part_l(ck, scratch, rnd)),
                         ("server D: built-in rules", lambda: part_d(ck, scratch))):
            with ck.section(name):
                fn()
    finally:
        if not os.environ.get("LEDGER_TEST_KEEP"):
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            log(f"# kept {scratch}")


if __name__ == "__main__":
    run_main(main)
