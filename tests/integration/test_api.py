#!/usr/bin/env python3
"""HTTP API contract: every endpoint of API.md's Accounts and Money movement sections, the
operations endpoints, and every error code in docs/api.md. One server for the whole file."""

import json
import os
import random
import re
import sys
import time
import uuid

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import (CASH_ID, CURRENCIES, EXPONENT, INT64_MAX, TIME_RE, UUID7_RE,  # noqa: E402
                            Server, final_server_checks, fmt, log, raw_request, run_main, seed_from_env,
                            to_minor)

ACCOUNT_FIELDS = {"id", "owner_id", "currency", "region", "kind", "balance", "pending_debits",
                  "pending_credits", "available", "allow_overdraft", "status", "created_at",
                  "updated_at"}
TRANSFER_FIELDS = {"id", "status", "kind", "debit_account_id", "credit_account_id", "amount",
                   "currency", "created_at", "seq"}


def uuid7_like():
    """A well-formed UUIDv7 string that the server never issued (random bits, old timestamp)."""
    h = "00000001" + "0000" + "7" + uuid.uuid4().hex[:3] + "8" + uuid.uuid4().hex[:3] + uuid.uuid4().hex[:12]
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def main(ck):
    rnd = random.Random(seed_from_env())
    srv = Server()
    try:
        srv.start()
        c = srv.client()
        run_all(ck, srv, c, rnd)
        with ck.section("server still up after every bad input"):
            ck.status("GET /healthz after all tests", c.get("/healthz"), 200)
            ck.check("no 500 answered during the whole run", not c.seen_500, "; ".join(c.seen_500[:5]))
        with ck.section("ledgerctl refuses a live data dir"):
            rc, out = srv.verify(timeout=60)
            ck.check("ledgerctl verify while the server runs exits non-zero with a reason",
                     rc not in (0, None) and out.strip() != "", f"rc={rc} out={out[-300:]!r}")
            ck.status("server unaffected by the refused ledgerctl", c.get("/healthz"), 200)
        c.close()
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


def run_all(ck, srv, c, rnd):
    # ------------------------------------------------------------ operations
    with ck.section("operations"):
        ck.status("GET /healthz 200", c.get("/healthz"), 200)
        ck.status("GET /readyz 200", c.get("/readyz"), 200)
        r = c.get("/metrics")
        ck.status("GET /metrics 200", r, 200)
        ck.check("/metrics content-type is text/plain", r.headers.get("content-type", "").startswith("text/plain"),
                 r.headers.get("content-type"))
        text = r.body.decode(errors="replace")
        counters = re.findall(r"(?m)^# TYPE (\S*request\S*) counter", text)
        ck.check("/metrics has a requests counter (# TYPE *request* counter)", counters, text[:300])
        if counters:
            ck.check("/metrics requests counter has a sample line",
                     re.search(rf"(?m)^{re.escape(counters[0])}(\{{[^}}]*\}})? \d", text), counters[0])
        # every non-comment line is 'name{labels} value'
        bad = [l for l in text.splitlines() if l and not l.startswith("#")
               and not re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? [-+0-9.eEInfNa]+( \d+)?$", l)]
        ck.check("/metrics lines are Prometheus text format", not bad, repr(bad[:3]))

    with ck.section("metrics move"):
        def req_total():
            t = c.get("/metrics").body.decode(errors="replace")
            names = re.findall(r"(?m)^# TYPE (\S*request\S*) counter", t)
            if not names:
                return None
            return sum(float(m.group(2)) for m in re.finditer(
                rf"(?m)^{re.escape(names[0])}(\{{[^}}]*\}})? ([0-9.eE+]+)", t))
        n0 = req_total()
        for _ in range(5):
            c.get("/healthz")
        n1 = req_total()
        ck.check("requests counter grows by at least 5 after 5 requests", n0 is not None and n1 is not None
                 and n1 - n0 >= 5, f"{n0} -> {n1}")

        def metric(name):
            m = re.search(rf"(?m)^{name} ([0-9]+)$", c.get("/metrics").body.decode(errors="replace"))
            return int(m.group(1)) if m else None
        ck.eq("ledger_rules_version: the built-in set is version 1", metric("ledger_rules_version"), 1)
        s0 = metric("ledger_suspicious_total")
        flagged = c.deposit(c.new_account("USD"), "10000.00")
        ck.eq("a 10,000.00 deposit is flagged by the built-in rule", (flagged.json or {}).get("flags"), ["suspicious"])
        ck.eq("ledger_suspicious_total counts it", metric("ledger_suspicious_total"), (s0 or 0) + 1)
        ck.check("ledger_settlement_rows is there", (metric("ledger_settlement_rows") or 0) >= 1)

    with ck.section("HTTP/1.1 pipelining and limits"):
        import socket
        s = socket.create_connection((srv.host, srv.port), timeout=30)
        auth = f"Authorization: Bearer {srv.admin_token}\r\n".encode()
        reqs = b"".join(f"GET /v1/accounts/{i} HTTP/1.1\r\nHost: x\r\n".encode() + auth + b"\r\n" for i in (1, 4, 5))
        s.sendall(reqs)
        buf = b""
        deadline = time.monotonic() + 30
        while buf.count(b"HTTP/1.1 ") < 3 or not buf.rstrip().endswith(b"}"):
            if time.monotonic() > deadline:
                break
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        s.close()
        ids = [int(m) for m in re.findall(rb'"id":\s*(\d+)', buf)]
        ck.eq("three pipelined requests answered in order", ids, [1, 4, 5])
        r = c.get("/healthz", headers={"X-Big": "a" * (20 * 1024)})
        ck.check("a 20 KiB header is refused with a 4xx (431)", 400 <= r.status < 500, r.describe())
        c.close()
        r = c.get("/v1/accounts/1?pad=" + "p" * 5000)
        ck.check("a 5 KB request target is refused with a 4xx or served (no 5xx)", r.status < 500, r.describe())
        c.close()
        acct = c.new_account("USD")
        body = b'{"account_id": %d, "amount": "1.00"}' % acct
        req = (b"POST /v1/deposits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth +
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
        s = socket.create_connection((srv.host, srv.port), timeout=30)
        for piece in (req[:7], req[7:40], req[40:-5], req[-5:]):
            s.sendall(piece)
            time.sleep(0.1)
        data = s.recv(65536)
        s.close()
        ck.check("a request split across slow TCP writes -> 201", data.startswith(b"HTTP/1.1 201"), data[:80])
        chunked = (b"POST /v1/deposits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth +
                   b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        s = socket.create_connection((srv.host, srv.port), timeout=30)
        s.sendall(chunked)
        data = s.recv(65536)
        s.close()
        ck.check("a chunked request body -> 201", data.startswith(b"HTTP/1.1 201"), data[:80])
        for dup in (b"Idempotency-Key: a1\r\nIdempotency-Key: a2\r\n", auth + auth):
            req2 = (b"POST /v1/deposits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth + dup +
                    b"Content-Length: %d\r\n\r\n" % len(body)) + body
            s = socket.create_connection((srv.host, srv.port), timeout=30)
            s.sendall(req2)
            data = s.recv(65536)
            s.close()
            ck.check(f"a repeated {dup.split(b':')[0].decode()} header -> 400 (ambiguous)",
                     data.startswith(b"HTTP/1.1 400"), data[:80])
        ck.eq("both deposits applied once", c.balance(acct), "2.00")
        s = socket.create_connection((srv.host, srv.port), timeout=30)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        ck.check("Connection: close -> answered, then closed", data.startswith(b"HTTP/1.1 200"), data[:80])
        s = socket.create_connection((srv.host, srv.port), timeout=30)
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        data = s.recv(4096)
        s.close()
        ck.check("garbage request line -> 400", data.startswith(b"HTTP/1.1 400"), data[:80])

    # ------------------------------------------------------------ system accounts
    with ck.section("system accounts"):
        for cur in CURRENCIES:
            r = c.get(f"/v1/accounts/{CASH_ID[cur]}")
            ok = (r.status == 200 and r.json.get("currency") == cur and r.json.get("kind") == "system"
                  and r.json.get("owner_id") == 0 and r.json.get("region") == "system")
            ck.check(f"account {CASH_ID[cur]} is cash:{cur} (system, owner 0, region system)", ok, r.describe())
        r = c.get("/v1/accounts/cash:USD")
        ck.status("GET /v1/accounts/cash:USD 200", r, 200)
        ck.eq("cash:USD alias is id 1", r.json and r.json.get("id"), 1)
        r = c.get("/v1/accounts/cash:JPY")
        ck.eq("cash:JPY alias is id 4", r.json and r.json.get("id"), 4)
        ck.eq("cash:JPY balance prints with 0 decimals", r.json and r.json.get("balance"), "0")
        r = c.get("/v1/accounts/cash:BHD")
        ck.eq("cash:BHD balance prints with 3 decimals", r.json and r.json.get("balance"), "0.000")
        r = c.get("/v1/accounts/cash:XYZ")
        ck.check("GET /v1/accounts/cash:XYZ is a 4xx, not found or invalid",
                 r.status in (400, 404), r.describe())

    # ------------------------------------------------------------ accounts
    with ck.section("create and get account"):
        r = c.create_account("USD")
        ck.status("POST /v1/accounts USD 201", r, 201)
        a = r.json
        ck.check("account has every documented field", ACCOUNT_FIELDS <= set(a), sorted(ACCOUNT_FIELDS - set(a)))
        ck.check("account id is a positive integer below 2^53",
                 isinstance(a["id"], int) and 0 < a["id"] < 2**53 and a["id"] > 10, a["id"])
        for f in ("balance", "pending_debits", "pending_credits", "available"):
            ck.eq(f"new USD account {f} is '0.00'", a[f], "0.00")
        ck.eq("new account status open", a["status"], "open")
        ck.eq("new account kind customer", a["kind"], "customer")
        ck.eq("new account region default", a["region"], "default")
        ck.eq("new account allow_overdraft false", a["allow_overdraft"], False)
        ck.check("created_at is RFC 3339 UTC with ms", TIME_RE.match(str(a["created_at"])), a["created_at"])
        ck.check("updated_at is RFC 3339 UTC with ms", TIME_RE.match(str(a["updated_at"])), a["updated_at"])
        ck.check("response content-type is application/json",
                 r.headers.get("content-type", "").startswith("application/json"), r.headers.get("content-type"))
        g = c.get(f"/v1/accounts/{a['id']}")
        ck.status("GET /v1/accounts/{id} 200", g, 200)
        ck.eq("GET account equals created account", g.json, a)
        r2 = c.create_account("USD")
        ck.eq("ids are assigned in order", r2.json and r2.json.get("id"), a["id"] + 1)
        r = c.create_account("JPY")
        ck.eq("JPY account balance '0'", r.json and r.json.get("balance"), "0")
        r = c.create_account("BHD")
        ck.eq("BHD account balance '0.000'", r.json and r.json.get("balance"), "0.000")
        r = c.create_account("EUR", region="us-east", metadata={"name": "x"})
        ck.status("create with region and metadata 201", r, 201)
        ck.eq("region kept", r.json and r.json.get("region"), "us-east")
        r = c.create_account("USD", allow_overdraft=True)
        ck.status("create with allow_overdraft 201", r, 201)
        ck.eq("allow_overdraft kept", r.json and r.json.get("allow_overdraft"), True)
        od = r.json["id"]
        w = c.withdraw(od, "5.00")
        ck.status("withdraw from empty overdraft account 201", w, 201)
        ck.eq("overdraft account balance '-5.00'", c.balance(od), "-5.00")

    with ck.section("account validation errors"):
        ck.status("missing currency -> 400 invalid_request", c.post("/v1/accounts", {}), 400, "invalid_request")
        ck.status("unknown currency -> 400 invalid_currency", c.create_account("XYZ"), 400, "invalid_currency")
        ck.status("lower-case currency -> 400 invalid_currency", c.create_account("usd"), 400, "invalid_currency")
        ck.status("currency as number -> 400 invalid_request", c.post("/v1/accounts", {"currency": 840}),
                  400, "invalid_request")
        r = c.post("/v1/accounts", {"currency": "USD", "colour": "red"})
        ck.status("unknown field -> 400 unknown_field", r, 400, "unknown_field")
        ck.check("unknown_field message names the field", "colour" in r.message, r.describe())
        ck.status("allow_overdraft as string -> 400 invalid_request",
                  c.create_account("USD", allow_overdraft="yes"), 400, "invalid_request")
        ck.status("region with upper case/space -> 400", c.create_account("USD", region="US East"), 400)
        ck.status("region of 33 chars -> 400", c.create_account("USD", region="a" * 33), 400)
        ck.status("region of 32 chars -> 201", c.create_account("USD", region="a" * 32), 201)
        ck.status("metadata not an object -> 400 invalid_request",
                  c.create_account("USD", metadata="x"), 400, "invalid_request")
        ck.status("metadata value not a string -> 400",
                  c.create_account("USD", metadata={"a": 1}), 400)
        ck.status("metadata 17 pairs -> 400",
                  c.create_account("USD", metadata={f"k{i}": "v" for i in range(17)}), 400)
        ck.status("metadata 16 pairs -> 201",
                  c.create_account("USD", metadata={f"k{i}": "v" for i in range(16)}), 201)
        ck.status("metadata key 65 bytes -> 400", c.create_account("USD", metadata={"k" * 65: "v"}), 400)
        ck.status("metadata value 257 bytes -> 400", c.create_account("USD", metadata={"k": "v" * 257}), 400)
        ck.status("malformed JSON -> 400 invalid_json", c.post("/v1/accounts", raw='{"currency": "USD"'),
                  400, "invalid_json")
        ck.status("trailing garbage -> 400 invalid_json", c.post("/v1/accounts", raw='{"currency":"USD"} x'),
                  400, "invalid_json")
        ck.status("JSON array body -> 400 invalid_request", c.post("/v1/accounts", raw='["USD"]'),
                  400, "invalid_request")
        ck.status("text/plain content-type is not checked: JSON body -> 201 (docs/api.md)",
                  c.post("/v1/accounts", raw='{"currency":"USD"}', content_type="text/plain"), 201)
        ck.status("content-type with charset parameter -> 201",
                  c.post("/v1/accounts", raw='{"currency":"USD"}', content_type="application/json; charset=utf-8"), 201)
        ck.status("no content-type -> accepted 201",
                  c.post("/v1/accounts", raw='{"currency":"USD"}', content_type=None), 201)
        ck.status("GET unknown account -> 404 account_not_found", c.get("/v1/accounts/999999999"),
                  404, "account_not_found")
        r = c.get("/v1/accounts/abc")
        ck.check("GET /v1/accounts/abc -> 400 invalid_id or 404",
                 (r.status, r.code) in ((400, "invalid_id"), (404, "account_not_found"), (404, "not_found")), r.describe())

    # ------------------------------------------------------------ money movement basics
    with ck.section("deposit, withdrawal, transfer"):
        a = c.new_account("USD")
        b = c.new_account("USD")
        cash_before = to_minor(c.balance(1), "USD")
        r = c.deposit(a, "10.00")
        ck.status("POST /v1/deposits 201", r, 201)
        t = r.json
        ck.check("transfer has every documented field", TRANSFER_FIELDS <= set(t), sorted(TRANSFER_FIELDS - set(t)))
        ck.eq("deposit kind", t["kind"], "deposit")
        ck.eq("deposit status posted", t["status"], "posted")
        ck.eq("deposit debits cash:USD (id 1)", t["debit_account_id"], 1)
        ck.eq("deposit credits the account", t["credit_account_id"], a)
        ck.eq("deposit amount '10.00'", t["amount"], "10.00")
        ck.eq("deposit currency USD", t["currency"], "USD")
        ck.check("transfer id is a UUIDv7 string", UUID7_RE.match(str(t["id"])), t["id"])
        ck.check("transfer created_at RFC 3339 ms", TIME_RE.match(str(t["created_at"])), t["created_at"])
        ck.check("transfer seq is a positive integer", isinstance(t["seq"], int) and t["seq"] > 0, t["seq"])
        acc = c.account(a)
        ck.eq("balance after deposit '10.00'", acc["balance"], "10.00")
        ck.eq("available after deposit '10.00'", acc["available"], "10.00")
        ck.eq("cash:USD moved by -10.00", to_minor(c.balance(1), "USD") - cash_before, -1000)
        r = c.deposit(a, "10")
        ck.eq("USD '10' prints as '10.00'", r.json and r.json.get("amount"), "10.00")
        r = c.deposit(a, "0.5")
        ck.eq("USD '0.5' prints as '0.50'", r.json and r.json.get("amount"), "0.50")
        ck.eq("balance '20.50'", c.balance(a), "20.50")
        r = c.withdraw(a, "3.50")
        ck.status("POST /v1/withdrawals 201", r, 201)
        ck.eq("withdrawal kind", r.json.get("kind"), "withdrawal")
        ck.eq("withdrawal debits the account", r.json.get("debit_account_id"), a)
        ck.eq("withdrawal credits cash:USD", r.json.get("credit_account_id"), 1)
        ck.eq("balance after withdrawal '17.00'", c.balance(a), "17.00")
        r = c.transfer(a, b, "1.25", description="rent", metadata={"ref": "inv-77"})
        ck.status("POST /v1/transfers 201", r, 201)
        tr = r.json
        ck.eq("transfer kind", tr.get("kind"), "transfer")
        ck.eq("transfer status posted", tr.get("status"), "posted")
        ck.eq("transfer amount", tr.get("amount"), "1.25")
        ck.eq("transfer description echoed", tr.get("description"), "rent")
        ck.eq("transfer metadata echoed", tr.get("metadata"), {"ref": "inv-77"})
        ck.eq("debit side '15.75'", c.balance(a), "15.75")
        ck.eq("credit side '1.25'", c.balance(b), "1.25")
        r = c.transfer(a, b, "0.75", currency="USD")
        ck.status("transfer with matching currency 201", r, 201)
        g = c.get(f"/v1/transfers/{tr['id']}")
        ck.status("GET /v1/transfers/{id} 200", g, 200)
        ck.eq("GET transfer equals the created transfer", g.json, tr)
        r = c.get(f"/v1/transfers/{uuid7_like()}")
        ck.status("GET unknown transfer id -> 404 transfer_not_found", r, 404, "transfer_not_found")
        ck.status("GET malformed transfer id -> 400 invalid_id", c.get("/v1/transfers/not-a-uuid"), 400, "invalid_id")
        ck.status("GET transfer id with bad hex -> 400 invalid_id",
                  c.get("/v1/transfers/zzzzzzzz-zzzz-7zzz-8zzz-zzzzzzzzzzzz"), 400, "invalid_id")

    with ck.section("money formatting per currency"):
        j = c.new_account("JPY")
        r = c.deposit(j, "5")
        ck.status("JPY deposit '5' 201", r, 201)
        ck.eq("JPY amount prints '5'", r.json and r.json.get("amount"), "5")
        ck.eq("JPY balance '5'", c.balance(j), "5")
        ck.status("JPY '5.0' -> 400 invalid_amount", c.deposit(j, "5.0"), 400, "invalid_amount")
        ck.status("JPY '0.5' -> 400 invalid_amount", c.deposit(j, "0.5"), 400, "invalid_amount")
        ck.status("JPY '9223372036854775808' (2^63) -> 400 invalid_amount", c.deposit(j, str(2**63)), 400, "invalid_amount")
        ck.status("JPY '99999999999999999999' -> 400 invalid_amount", c.deposit(j, "9" * 20), 400, "invalid_amount")
        bh = c.new_account("BHD")
        r = c.deposit(bh, "1.25")
        ck.eq("BHD '1.25' prints '1.250'", r.json and r.json.get("amount"), "1.250")
        r = c.deposit(bh, "0.001")
        ck.eq("BHD '0.001' prints '0.001'", r.json and r.json.get("amount"), "0.001")
        ck.eq("BHD balance '1.251'", c.balance(bh), "1.251")
        ck.status("BHD '1.2345' -> 400 invalid_amount", c.deposit(bh, "1.2345"), 400, "invalid_amount")
        u = c.new_account("USD")
        ck.status("USD '10.123' -> 400 invalid_amount", c.deposit(u, "10.123"), 400, "invalid_amount")
        ck.status("USD '10.10' -> 201", c.deposit(u, "10.10"), 201)
        ck.eq("USD balance '10.10'", c.balance(u), "10.10")
        ck.eq("cash:JPY balance is negative JPY format", c.balance(4), fmt(-5, "JPY"))

    with ck.section("invalid amounts"):
        u = c.new_account("USD")
        c.deposit(u, "1.00")
        bad = ["-5.00", "0", "0.00", "+5.00", "1e3", "1E2", " 5.00", "5.00 ", "", "abc", "5,00",
               "99999999999999999999", "92233720368547758.08", "1.2.3", "0x10", "--1", "NaN",
               "Infinity"]
        for amt in bad:
            ck.status(f"deposit amount {amt!r} -> 400 invalid_amount", c.deposit(u, amt), 400, "invalid_amount")
        ck.status("deposit amount with an embedded NUL -> 400", c.deposit(u, "5.00\u0000"), 400)
        for raw_amt in ("10", "10.5", "1e400", "-1", "0", "99999999999999999999"):
            r = c.post("/v1/deposits", raw=f'{{"account_id": {u}, "amount": {raw_amt}}}')
            ck.status(f"deposit amount as JSON number {raw_amt} -> 400 invalid_amount", r, 400, "invalid_amount")
        ck.status("transfer amount '-1.00' -> 400 invalid_amount", c.transfer(u, 1, "-1.00"), 400, "invalid_amount")
        ck.status("withdrawal amount '0.001' -> 400 invalid_amount", c.withdraw(u, "0.001"), 400, "invalid_amount")
        ck.eq("balance untouched by invalid amounts", c.balance(u), "1.00")
        # the largest representable amount parses; applying it overflows a balance -> 422 limit_exceeded
        x = c.new_account("CAD")
        y = c.new_account("CAD")
        ck.status("CAD deposit 1.00 201", c.deposit(x, "1.00"), 201)
        cash_cad = c.balance(CASH_ID["CAD"])
        r = c.deposit(y, fmt(INT64_MAX, "CAD"))
        ck.status("deposit of int64-max minor units overflowing cash:CAD -> 422 limit_exceeded", r, 422, "limit_exceeded")
        ck.eq("nothing changed after limit_exceeded (credit)", c.balance(y), "0.00")
        ck.eq("nothing changed after limit_exceeded (cash)", c.balance(CASH_ID["CAD"]), cash_cad)
        z = c.new_account("CNY")
        r = c.deposit(z, fmt(INT64_MAX, "CNY"))
        ck.status("deposit of exactly int64-max minor units into a fresh currency -> 201", r, 201)
        ck.eq("balance prints int64 max", c.balance(z), "92233720368547758.07")
        ck.eq("cash:CNY prints -int64 max", c.balance(CASH_ID["CNY"]), "-92233720368547758.07")
        ck.status("one more cent overflows the credit balance -> 422 limit_exceeded", c.deposit(z, "0.01"),
                  422, "limit_exceeded")
        ck.eq("nothing changed after the overflow", c.balance(z), "92233720368547758.07")

    with ck.section("invalid ids, types, fields"):
        a = c.new_account("USD")
        c.deposit(a, "5.00")
        b = c.new_account("USD")
        for raw_id in ('"%d"' % a, "1.5", "-1", "0", "1e400", str(2**53), "99999999999999999999", "null", "true",
                       "[1]", "{}"):
            r = c.post("/v1/transfers", raw=f'{{"debit_account_id": {raw_id}, "credit_account_id": {b}, "amount": "1.00"}}')
            ck.status(f"debit_account_id {raw_id} -> 400 invalid_id", r, 400, "invalid_id")
        r = c.post("/v1/deposits", raw=f'{{"account_id": {a}.0, "amount": "1.00"}}')
        ck.status("account_id written as N.0 is accepted -> 201", r, 201)
        r = c.post("/v1/deposits", raw=f'{{"account_id": {2**53 - 1}, "amount": "1.00"}}')
        ck.status("account_id 2^53-1 (valid, unknown) -> 404 account_not_found", r, 404, "account_not_found")
        ck.status("transfer missing amount -> 400 invalid_request",
                  c.post("/v1/transfers", {"debit_account_id": a, "credit_account_id": b}), 400, "invalid_request")
        ck.status("transfer missing credit -> 400 invalid_request",
                  c.post("/v1/transfers", {"debit_account_id": a, "amount": "1.00"}), 400, "invalid_request")
        ck.status("deposit missing account -> 400 invalid_request",
                  c.post("/v1/deposits", {"amount": "1.00"}), 400, "invalid_request")
        ck.status("deposit empty object -> 400 invalid_request", c.post("/v1/deposits", {}), 400, "invalid_request")
        r = c.post("/v1/deposits", {"account_id": a, "amount": "1.00", "memo": "x"})
        ck.status("deposit unknown field -> 400 unknown_field", r, 400, "unknown_field")
        ck.check("unknown_field message names 'memo'", "memo" in r.message, r.describe())
        r = c.transfer(a, b, "1.00", foo=1)
        ck.status("transfer unknown field -> 400 unknown_field", r, 400, "unknown_field")
        ck.status("pending as string -> 400 invalid_request", c.transfer(a, b, "1.00", pending="yes"), 400, "invalid_request")
        ck.status("timeout_s as string -> 400 invalid_request", c.transfer(a, b, "1.00", pending=True, timeout_s="5"),
                  400, "invalid_request")
        ck.status("description as number -> 400 invalid_request", c.transfer(a, b, "1.00", description=5),
                  400, "invalid_request")
        ck.status("description 513 bytes -> 400", c.transfer(a, b, "1.00", description="d" * 513), 400)
        ck.status("metadata as string -> 400 invalid_request", c.transfer(a, b, "1.00", metadata="m"),
                  400, "invalid_request")
        ck.status("currency unknown on transfer -> 400 invalid_currency", c.transfer(a, b, "1.00", currency="XXX"),
                  400, "invalid_currency")
        ck.status("malformed JSON on transfer -> 400 invalid_json", c.post("/v1/transfers", raw="{"), 400, "invalid_json")
        ck.status("malformed JSON (single quotes) -> 400 invalid_json",
                  c.post("/v1/transfers", raw="{'amount': '1.00'}"), 400, "invalid_json")
        ck.status("non-UTF-8 bytes -> 400", c.post("/v1/deposits", raw=b'{"account_id": 1, "amount": "\xff"}'), 400)
        r = c.post("/v1/deposits", raw="")
        ck.check("empty body on POST /v1/deposits -> 400 invalid_json/invalid_request",
                 r.status == 400 and r.code in ("invalid_json", "invalid_request"), r.describe())
        deep = "[" * 20000 + "]" * 20000
        r = c.post("/v1/transfers", raw='{"metadata": %s}' % deep)
        ck.check("deeply nested JSON -> 400", r.status == 400, r.describe())
        ck.eq("balance untouched by rejected requests", c.balance(a), "6.00")

    with ck.section("business rejections (422)"):
        a = c.new_account("USD")
        b = c.new_account("USD")
        e = c.new_account("EUR")
        c.deposit(a, "10.00")
        r = c.transfer(a, b, "10.01")
        ck.status("overspend -> 422 insufficient_funds", r, 422, "insufficient_funds")
        ck.status("withdraw too much -> 422 insufficient_funds", c.withdraw(b, "0.01"), 422, "insufficient_funds")
        ck.status("USD -> EUR account -> 422 currency_mismatch", c.transfer(a, e, "1.00"), 422, "currency_mismatch")
        ck.status("currency EUR on USD accounts -> 422 currency_mismatch", c.transfer(a, b, "1.00", currency="EUR"),
                  422, "currency_mismatch")
        ck.status("same account -> 422 same_account", c.transfer(a, a, "1.00"), 422, "same_account")
        ck.status("unknown credit account -> 404 account_not_found", c.transfer(a, 987654321, "1.00"),
                  404, "account_not_found")
        ck.status("unknown deposit account -> 404 account_not_found", c.deposit(987654321, "1.00"),
                  404, "account_not_found")
        ck.eq("a untouched", c.balance(a), "10.00")
        ck.eq("b untouched", c.balance(b), "0.00")
        ck.status("transfer exactly the balance 201", c.transfer(a, b, "10.00"), 201)
        ck.eq("a drained to '0.00'", c.balance(a), "0.00")

    with ck.section("freeze / unfreeze"):
        a = c.new_account("USD")
        b = c.new_account("USD")
        c.deposit(a, "10.00")
        c.deposit(b, "10.00")
        r = c.post(f"/v1/accounts/{a}/freeze")
        ck.status("POST freeze 200", r, 200)
        ck.eq("freeze answers the account, status frozen", r.json and r.json.get("status"), "frozen")
        ck.eq("GET shows frozen", c.account(a)["status"], "frozen")
        ck.status("deposit to frozen -> 422 account_frozen", c.deposit(a, "1.00"), 422, "account_frozen")
        ck.status("withdraw from frozen -> 422 account_frozen", c.withdraw(a, "1.00"), 422, "account_frozen")
        ck.status("transfer from frozen -> 422 account_frozen", c.transfer(a, b, "1.00"), 422, "account_frozen")
        ck.status("transfer to frozen -> 422 account_frozen", c.transfer(b, a, "1.00"), 422, "account_frozen")
        ck.eq("frozen balance untouched", c.balance(a), "10.00")
        r = c.post(f"/v1/accounts/{a}/unfreeze")
        ck.status("POST unfreeze 200", r, 200)
        ck.eq("unfreeze answers status open", r.json and r.json.get("status"), "open")
        ck.status("deposit after unfreeze 201", c.deposit(a, "1.00"), 201)
        ck.eq("balance after unfreeze '11.00'", c.balance(a), "11.00")
        ck.status("freeze cash:USD -> 422 invalid_operation", c.post("/v1/accounts/1/freeze"), 422, "invalid_operation")
        ck.status("freeze unknown account -> 404 account_not_found", c.post("/v1/accounts/987654321/freeze"),
                  404, "account_not_found")
        ck.status("GET freeze -> 405 method_not_allowed", c.get(f"/v1/accounts/{a}/freeze"), 405, "method_not_allowed")

    # ------------------------------------------------------------ two-phase
    with ck.section("two-phase: pending, partial post, void"):
        p = c.new_account("USD")
        q = c.new_account("USD")
        c.deposit(p, "100.00")
        r = c.transfer(p, q, "30.00", pending=True)
        ck.status("pending transfer 201", r, 201)
        pend = r.json or {}
        ck.eq("pending status", pend.get("status"), "pending")
        ap, aq = c.account(p), c.account(q)
        ck.eq("pending: debit balance unchanged", ap["balance"], "100.00")
        ck.eq("pending: debit pending_debits '30.00'", ap["pending_debits"], "30.00")
        ck.eq("pending: debit available '70.00'", ap["available"], "70.00")
        ck.eq("pending: credit balance unchanged", aq["balance"], "0.00")
        ck.eq("pending: credit pending_credits '30.00'", aq["pending_credits"], "30.00")
        ck.status("spending the reserved funds -> 422 insufficient_funds", c.transfer(p, q, "70.01"),
                  422, "insufficient_funds")
        r = c.post(f"/v1/transfers/{pend.get('id')}/post", {"amount": "30.01"})
        ck.status("post more than pending -> 422 amount_exceeds_pending", r, 422, "amount_exceeds_pending")
        ck.status("post amount '0.00' -> 400 invalid_amount",
                  c.post(f"/v1/transfers/{pend.get('id')}/post", {"amount": "0.00"}), 400, "invalid_amount")
        ck.status("post amount as number -> 400 invalid_amount",
                  c.post(f"/v1/transfers/{pend.get('id')}/post", raw='{"amount": 5}'), 400, "invalid_amount")
        r = c.post(f"/v1/transfers/{pend.get('id')}/post", {"amount": "20.00"})
        ck.status("partial post 200", r, 200)
        ck.eq("post answers the original transfer id", r.json and r.json.get("id"), pend.get("id"))
        ck.eq("posted status", r.json and r.json.get("status"), "posted")
        ck.eq("posted_amount '20.00'", r.json and r.json.get("posted_amount"), "20.00")
        ck.check("updated_at on posted transfer", r.json and TIME_RE.match(str(r.json.get("updated_at"))), r.describe())
        ap, aq = c.account(p), c.account(q)
        ck.eq("after partial post: debit balance '80.00'", ap["balance"], "80.00")
        ck.eq("after partial post: debit pending released", ap["pending_debits"], "0.00")
        ck.eq("after partial post: debit available '80.00'", ap["available"], "80.00")
        ck.eq("after partial post: credit balance '20.00'", aq["balance"], "20.00")
        ck.eq("after partial post: credit pending released", aq["pending_credits"], "0.00")
        ck.status("post again -> 422 transfer_not_pending", c.post(f"/v1/transfers/{pend.get('id')}/post", {}),
                  422, "transfer_not_pending")
        ck.status("void a posted transfer -> 422 transfer_not_pending", c.post(f"/v1/transfers/{pend.get('id')}/void"),
                  422, "transfer_not_pending")
        g = c.get(f"/v1/transfers/{pend.get('id')}")
        ck.eq("GET pending transfer shows posted", g.json and g.json.get("status"), "posted")
        ck.status("post a posted (non-pending) ordinary transfer -> 422 transfer_not_pending",
                  c.post(f"/v1/transfers/{c.transfer(p, q, '1.00').json['id']}/post", {}), 422, "transfer_not_pending")
        # void
        r = c.transfer(p, q, "10.00", pending=True)
        v_id = r.json["id"]
        r = c.post(f"/v1/transfers/{v_id}/void")
        ck.status("void 200", r, 200)
        ck.eq("voided status", r.json and r.json.get("status"), "voided")
        ap, aq = c.account(p), c.account(q)
        ck.eq("after void: debit balance '79.00'", ap["balance"], "79.00")
        ck.eq("after void: pending_debits '0.00'", ap["pending_debits"], "0.00")
        ck.eq("after void: credit pending_credits '0.00'", aq["pending_credits"], "0.00")
        ck.status("post a voided transfer -> 422 transfer_not_pending", c.post(f"/v1/transfers/{v_id}/post", {}),
                  422, "transfer_not_pending")
        # full post with empty object
        r = c.transfer(p, q, "9.00", pending=True)
        f_id = r.json["id"]
        r = c.post(f"/v1/transfers/{f_id}/post", {})
        ck.status("post with {} posts the full amount 200", r, 200)
        ck.eq("full post: debit balance '70.00'", c.balance(p), "70.00")
        ck.status("post unknown transfer -> 404 transfer_not_found", c.post(f"/v1/transfers/{uuid7_like()}/post", {}),
                  404, "transfer_not_found")
        ck.status("void malformed id -> 400 invalid_id", c.post("/v1/transfers/xyz/void"), 400, "invalid_id")
        h, _ = c.paginate(f"/v1/accounts/{p}/transfers")
        pids = {e["transfer"].get("pending_id") for e in h}
        ck.check("settlement of post appears in history with pending_id", pend.get("id") in pids, pids)
        ck.check("void appears in history with pending_id", v_id in pids, pids)
        pa = c.new_account("USD")
        ck.status("pending from empty account -> 422 insufficient_funds", c.transfer(pa, q, "1.00", pending=True),
                  422, "insufficient_funds")

    with ck.section("two-phase: timeout expiry"):
        p = c.new_account("USD")
        q = c.new_account("USD")
        c.deposit(p, "50.00")
        r = c.transfer(p, q, "20.00", pending=True, timeout_s=1)
        ck.status("pending with timeout_s 1 -> 201", r, 201)
        t = r.json or {}
        ck.eq("timeout_s echoed", t.get("timeout_s"), 1)
        ck.check("expires_at present", TIME_RE.match(str(t.get("expires_at"))), t)
        ck.eq("available reduced while pending", c.account(p)["available"], "30.00")
        time.sleep(2.5)
        g = c.get(f"/v1/transfers/{t.get('id')}")
        ck.eq("after timeout: status voided", g.json and g.json.get("status"), "voided")
        ck.eq("after timeout: expired true", g.json and g.json.get("expired"), True)
        ap, aq = c.account(p), c.account(q)
        ck.eq("after timeout: funds released (available '50.00')", ap["available"], "50.00")
        ck.eq("after timeout: pending_debits '0.00'", ap["pending_debits"], "0.00")
        ck.eq("after timeout: balance '50.00'", ap["balance"], "50.00")
        ck.eq("after timeout: credit pending_credits '0.00'", aq["pending_credits"], "0.00")
        ck.eq("after timeout: credit balance '0.00'", aq["balance"], "0.00")
        h, _ = c.paginate(f"/v1/accounts/{p}/transfers")
        ck.check("the expiry appears in the history as a void entry with pending_id",
                 any(e["transfer"].get("pending_id") == t.get("id") and e["transfer"].get("status") == "voided"
                     and e["balance_after"] == "50.00" for e in h), h[:3])
        ck.status("post an expired transfer -> 422 transfer_not_pending", c.post(f"/v1/transfers/{t.get('id')}/post", {}),
                  422, "transfer_not_pending")

    # ------------------------------------------------------------ batch
    with ck.section("batch"):
        a = c.new_account("USD")
        b = c.new_account("USD")
        c.deposit(a, "10.00")

        def item(d, cr, amt, **kw):
            x = {"debit_account_id": d, "credit_account_id": cr, "amount": amt}
            x.update(kw)
            return x

        r = c.post("/v1/transfers/batch", {"transfers": [item(a, b, "3.00"), item(a, b, "100.00"), item(a, b, "2.00")]})
        ck.status("non-atomic batch 200", r, 200)
        res = (r.json or {}).get("results", [])
        ck.eq("non-atomic: 3 results", len(res), 3)
        if len(res) == 3:
            ck.eq("non-atomic: indexes", [x.get("index") for x in res], [0, 1, 2])
            ck.eq("non-atomic: statuses", [x.get("status") for x in res], ["posted", "error", "posted"])
            ck.eq("non-atomic: error code insufficient_funds", (res[1].get("error") or {}).get("code"), "insufficient_funds")
            ck.check("non-atomic: ids are UUIDv7", all(UUID7_RE.match(str(res[i].get("id"))) for i in (0, 2)), res)
            g = c.get(f"/v1/transfers/{res[0].get('id')}")
            ck.eq("batch item readable by id", g.json and g.json.get("amount"), "3.00")
        ck.eq("non-atomic: a '5.00'", c.balance(a), "5.00")
        ck.eq("non-atomic: b '5.00'", c.balance(b), "5.00")
        r = c.post("/v1/transfers/batch", {"atomic": True, "transfers": [item(a, b, "1.00"), item(a, b, "100.00")]})
        ck.status("atomic failing batch 200", r, 200)
        res = (r.json or {}).get("results", [])
        ck.eq("atomic: 2 results", len(res), 2)
        if len(res) == 2:
            ck.eq("atomic: all error", [x.get("status") for x in res], ["error", "error"])
            ck.eq("atomic: good item batch_aborted", (res[0].get("error") or {}).get("code"), "batch_aborted")
            ck.eq("atomic: bad item insufficient_funds", (res[1].get("error") or {}).get("code"), "insufficient_funds")
        ck.eq("atomic failure changed nothing (a)", c.balance(a), "5.00")
        ck.eq("atomic failure changed nothing (b)", c.balance(b), "5.00")
        # atomic where the second depends on the first: b has 5.00, gets 5.00 from a, sends 8.00 on
        r = c.post("/v1/transfers/batch", {"atomic": True, "transfers": [item(a, b, "5.00"), item(b, a, "8.00")]})
        res = (r.json or {}).get("results", [])
        ck.eq("atomic success: all posted", [x.get("status") for x in res], ["posted", "posted"])
        ck.eq("atomic success: a '8.00'", c.balance(a), "8.00")
        ck.eq("atomic success: b '2.00'", c.balance(b), "2.00")
        r = c.post("/v1/transfers/batch", {"transfers": [item(a, b, "1.00", pending=True)]})
        res = (r.json or {}).get("results", [{}])
        ck.eq("batch item with pending: true -> status pending", res[0].get("status"), "pending")
        ck.eq("batch pending item reserves", c.account(a)["pending_debits"], "1.00")
        ck.status("void the batch's pending item", c.post(f"/v1/transfers/{res[0].get('id')}/void"), 200)
        r = c.post("/v1/transfers/batch", {"transfers": [item(a, b, "1.00"), item(a, b, 5)]})
        ck.status("malformed item -> 400", r, 400)
        ck.check("malformed item: message names index 1", "1" in r.message, r.describe())
        ck.eq("malformed item changed nothing", c.balance(a), "8.00")
        ck.status("0 items -> 400", c.post("/v1/transfers/batch", {"transfers": []}), 400)
        ck.status("transfers missing -> 400 invalid_request", c.post("/v1/transfers/batch", {}), 400, "invalid_request")
        ck.status("atomic as string -> 400 invalid_request",
                  c.post("/v1/transfers/batch", {"transfers": [item(a, b, "1.00")], "atomic": "yes"}), 400, "invalid_request")
        big = [item(1, a, "0.01") for _ in range(8191)]
        ck.status("8191 items -> 400", c.post("/v1/transfers/batch", {"transfers": big}), 400)
        ck.eq("8191 items changed nothing", c.balance(a), "8.00")
        r = c.post("/v1/transfers/batch", {"transfers": big[:8190]})
        ck.status("8190 items -> 200", r, 200)
        res = (r.json or {}).get("results", [])
        ck.check("8190 items: all posted", len(res) == 8190 and all(x.get("status") == "posted" for x in res),
                 f"{len(res)} results")
        ck.eq("8190 deposits of 0.01 -> a '89.90'", c.balance(a), "89.90")
        ids = {x.get("id") for x in res}
        ck.eq("8190 distinct ids", len(ids), 8190)

    # ------------------------------------------------------------ history
    with ck.section("account history and pagination"):
        h = c.new_account("USD")
        o = c.new_account("USD")
        c.deposit(o, "1000.00")
        bal = 0
        expected = []  # (id, balance_after) oldest first
        for i in range(23):
            op = i % 4
            amt = rnd.randrange(1, 500)
            if op == 0 or bal < amt:
                r = c.deposit(h, fmt(amt, "USD")); bal += amt
            elif op == 1:
                r = c.withdraw(h, fmt(amt, "USD")); bal -= amt
            elif op == 2:
                r = c.transfer(h, o, fmt(amt, "USD")); bal -= amt
            else:
                r = c.transfer(o, h, fmt(amt, "USD")); bal += amt
            if r.status != 201:
                raise AssertionError(f"history setup failed: {r.describe()}")
            expected.append((r.json["id"], fmt(bal, "USD")))
        c.transfer(h, o, fmt(bal + 1, "USD"))  # rejected: must not appear
        r = c.get(f"/v1/accounts/{h}/transfers")
        ck.status("GET /v1/accounts/{id}/transfers 200", r, 200)
        data = (r.json or {}).get("data", [])
        ck.eq("history newest first, with balance_after", [(e["transfer"]["id"], e["balance_after"]) for e in data],
              list(reversed(expected)))
        ck.eq("history next_cursor null when complete", (r.json or {}).get("next_cursor", "missing"), None)
        items, pages = c.paginate(f"/v1/accounts/{h}/transfers", limit=5)
        got = [(e["transfer"]["id"], e["balance_after"]) for e in items]
        ck.eq("paginated (limit 5) history covers every entry once, in order", got, list(reversed(expected)))
        ck.eq("paginated history takes 5 pages", pages, 5)
        items, pages = c.paginate(f"/v1/accounts/{h}/transfers?order=asc", limit=4)
        ck.eq("order=asc paginated (limit 4) history", [(e["transfer"]["id"], e["balance_after"]) for e in items], expected)
        r = c.get(f"/v1/accounts/{h}/transfers?limit=1")
        ck.eq("limit=1 gives one entry", len((r.json or {}).get("data", [])), 1)
        ck.check("limit=1 gives a next_cursor", isinstance((r.json or {}).get("next_cursor"), str), r.describe())
        ck.status("history limit=0 -> 400 invalid_parameter", c.get(f"/v1/accounts/{h}/transfers?limit=0"),
                  400, "invalid_parameter")
        ck.status("history limit=1001 -> 400 invalid_parameter", c.get(f"/v1/accounts/{h}/transfers?limit=1001"),
                  400, "invalid_parameter")
        ck.status("history bad cursor -> 400 invalid_cursor", c.get(f"/v1/accounts/{h}/transfers?cursor=%21%21garbage"),
                  400, "invalid_cursor")
        r = c.get(f"/v1/accounts/{h}/transfers?from=2999-01-01")
        ck.eq("history from far future is empty", (r.json or {}).get("data", "missing"), [])
        r = c.get(f"/v1/accounts/{h}/transfers?to=2000-01-01T00:00:00.000Z")
        ck.eq("history to year 2000 is empty", (r.json or {}).get("data", "missing"), [])
        items, _ = c.paginate(f"/v1/accounts/{h}/transfers?from=2000-01-01&to=2999-01-01", limit=1000)
        ck.eq("history from 2000 to 2999 has all entries", len(items), len(expected))
        ck.status("history from=garbage -> 400", c.get(f"/v1/accounts/{h}/transfers?from=yesterday"), 400)
        ck.status("history of unknown account -> 404 account_not_found", c.get("/v1/accounts/987654321/transfers"),
                  404, "account_not_found")

    # ------------------------------------------------------------ transfer search + receipt
    # The full checks are test_search.py; here, that the routes answer.
    with ck.section("transfer search and receipt"):
        s_acc = c.new_account("GBP")
        dep = c.deposit(s_acc, "5.00")
        r = c.get(f"/v1/transfers?account_id={s_acc}")
        ck.status("GET /v1/transfers?account_id= -> 200", r, 200)
        ck.eq("search finds the deposit", [t["id"] for t in r.json["data"]] if r.json else None, [dep.json["id"]])
        ck.status("GET /v1/transfers?kind=bogus -> 400", c.get("/v1/transfers?kind=bogus"), 400, "invalid_parameter")
        rc = c.get(f"/v1/transfers/{dep.json['id']}/receipt")
        ck.eq("GET receipt -> 200 text/html", (rc.status, rc.headers.get("content-type")),
              (200, "text/html; charset=utf-8"))

    # ------------------------------------------------------------ account list
    with ck.section("account list"):
        made = [c.new_account("AUD", region="list-test") for _ in range(23)]
        c.new_account("AUD", region="other-list")
        items, pages = c.paginate("/v1/accounts?region=list-test", limit=7)
        ck.eq("list by region, paginated (limit 7): every account once, newest first",
              [x["id"] for x in items], list(reversed(made)))
        ck.eq("list pages", pages, 4)
        items, _ = c.paginate("/v1/accounts?region=list-test&order=asc", limit=10)
        ck.eq("list order=asc", [x["id"] for x in items], made)
        items, _ = c.paginate("/v1/accounts?currency=AUD", limit=1000)
        ck.check("list currency=AUD only AUD", items and all(x["currency"] == "AUD" for x in items), len(items))
        ck.check("list currency=AUD includes cash:AUD and ours",
                 {CASH_ID["AUD"], *made} <= {x["id"] for x in items}, len(items))
        r = c.get("/v1/accounts")
        ck.status("GET /v1/accounts 200", r, 200)
        ck.eq("default page size 50", len((r.json or {}).get("data", [])), 50)
        ck.status("list limit=1001 -> 400 invalid_parameter", c.get("/v1/accounts?limit=1001"), 400, "invalid_parameter")
        ck.status("list limit=abc -> 400 invalid_parameter", c.get("/v1/accounts?limit=abc"), 400, "invalid_parameter")
        ck.status("list bad cursor -> 400 invalid_cursor", c.get("/v1/accounts?cursor=nonsense"), 400, "invalid_cursor")
        ck.status("list owner_id=0 gives the system accounts", c.get("/v1/accounts?owner_id=0"), 200)
        items, _ = c.paginate("/v1/accounts?owner_id=0")
        ck.check("owner_id=0 lists only owner 0, including the 10 system accounts",
                 all(x["owner_id"] == 0 for x in items) and set(range(1, 11)) <= {x["id"] for x in items},
                 [(x["id"], x["owner_id"]) for x in items][:12])
        r = c.get("/v1/accounts?owner_id=987654321")
        ck.eq("owner_id of nobody lists nothing", (r.json or {}).get("data", "missing"), [])

    # ------------------------------------------------------------ routes, methods, sizes, keys
    with ck.section("routes and methods"):
        ck.status("GET /v1/nope -> 404 not_found", c.get("/v1/nope"), 404, "not_found")
        ck.status("GET /nope -> 404 not_found", c.get("/nope"), 404, "not_found")
        ck.status("POST /v1/accounts/1/explode -> 404 not_found", c.post("/v1/accounts/1/explode", {}), 404, "not_found")
        ck.status("DELETE /v1/accounts -> 405 method_not_allowed", c.request("DELETE", "/v1/accounts"),
                  405, "method_not_allowed")
        ck.status("GET /v1/deposits -> 405 method_not_allowed", c.get("/v1/deposits"), 405, "method_not_allowed")
        ck.status("PUT /v1/transfers -> 405 method_not_allowed", c.request("PUT", "/v1/transfers", {}),
                  405, "method_not_allowed")
        ck.status("GET /v1/transfers/batch -> 405 method_not_allowed", c.get("/v1/transfers/batch"),
                  405, "method_not_allowed")
        ck.status("POST /healthz -> 405 method_not_allowed", c.post("/healthz", {}), 405, "method_not_allowed")
        ck.status("DELETE /v1/accounts/1 -> 405 method_not_allowed", c.request("DELETE", "/v1/accounts/1"),
                  405, "method_not_allowed")

    with ck.section("body size limits"):
        a = c.new_account("USD")
        b = c.new_account("USD")
        c.deposit(a, "10.00")
        pad = "x" * (65 * 1024)
        body = json.dumps({"debit_account_id": a, "credit_account_id": b, "amount": "1.00", "description": pad})
        r = c.post("/v1/transfers", raw=body)
        ck.status("POST /v1/transfers with 65 KiB body -> 413 payload_too_large", r, 413, "payload_too_large")
        c.close()
        r = c.post("/v1/accounts", raw=json.dumps({"currency": "USD", "metadata": {"k": "v" * (70 * 1024)}}))
        ck.status("POST /v1/accounts with 70 KiB body -> 413 payload_too_large", r, 413, "payload_too_large")
        c.close()
        huge = b'{"transfers": [' + b" " * (2 * 1024 * 1024 + 10) + b"]}"
        for path in ("/v1/transfers/batch", "/v1/deposits", "/v1/accounts"):
            head = (f"POST {path} HTTP/1.1\r\nHost: {srv.host}:{srv.port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(huge)}\r\n\r\n").encode()
            r = raw_request(srv.host, srv.port, head, huge)
            ck.check(f"POST {path} with > 2 MiB body -> 413", r is not None and r.status == 413,
                     r.describe() if r else "no response")
        # A route's own limit comes before the body: with Expect: 100-continue a client that
        # declares more than the route takes gets its 413 instead of the 100 and sends nothing.
        import socket
        for path, length, want in (("/v1/transfers", 70000, b"HTTP/1.1 413"),
                                   ("/v1/accounts", 65 * 1024 + 1, b"HTTP/1.1 413"),
                                   ("/v1/transfers/batch", 70000, b"HTTP/1.1 100 Continue"),
                                   ("/v1/transfers", 64 * 1024, b"HTTP/1.1 100 Continue")):
            s = socket.create_connection((srv.host, srv.port), timeout=30)
            s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {srv.admin_token}\r\n"
                       f"Expect: 100-continue\r\nContent-Length: {length}\r\n\r\n").encode())
            data = s.recv(4096)
            s.close()
            ck.check(f"POST {path} declaring {length} bytes with Expect -> {want.decode()[9:]} before the body",
                     data.startswith(want), data[:80])
        ck.eq("oversized bodies changed nothing", c.balance(a), "10.00")
        ck.eq("oversized bodies changed nothing (credit)", c.balance(b), "0.00")
        ck.status("server answers after oversized bodies", c.get("/healthz"), 200)

    with ck.section("idempotency key validation"):
        a = c.new_account("USD")
        ck.status("empty Idempotency-Key -> 400 invalid_idempotency_key", c.deposit(a, "1.00", key=""),
                  400, "invalid_idempotency_key")
        ck.status("129-char key -> 400 invalid_idempotency_key", c.deposit(a, "1.00", key="k" * 129),
                  400, "invalid_idempotency_key")
        ck.status("key with a space -> 400 invalid_idempotency_key", c.deposit(a, "1.00", key="a b"),
                  400, "invalid_idempotency_key")
        r = c.post("/v1/deposits", raw=json.dumps({"account_id": a, "amount": "1.00"}),
                   headers={"Idempotency-Key": "caf\u00e9"})
        ck.status("non-ASCII key -> 400 invalid_idempotency_key", r, 400, "invalid_idempotency_key")
        ck.eq("invalid keys changed nothing", c.balance(a), "0.00")
        ck.status("128-char key -> 201", c.deposit(a, "1.00", key="K" * 127 + "~"), 201)
        ck.status("1-char key of '!' -> 201", c.deposit(a, "1.00", key="!"), 201)
        ck.eq("valid keys applied once each", c.balance(a), "2.00")

    # ------------------------------------------------------------ zero sum after random workload
    with ck.section("zero sum after a random workload"):
        curs = ["USD", "JPY", "BHD", "KWD", "EUR"]
        accts = {cur: [c.new_account(cur) for _ in range(4)] for cur in curs}
        model = {}
        for cur, ids in accts.items():
            for i in ids:
                model[i] = 0
        rejected = 0
        for _ in range(400):
            cur = rnd.choice(curs)
            ids = accts[cur]
            x = rnd.choice(ids)
            amt = rnd.randrange(1, 5000)
            op = rnd.random()
            if op < 0.35:
                r = c.deposit(x, fmt(amt, cur)); eff = [(x, amt)]
            elif op < 0.55:
                r = c.withdraw(x, fmt(amt, cur)); eff = [(x, -amt)]
            else:
                y = rnd.choice([i for i in ids if i != x])
                r = c.transfer(x, y, fmt(amt, cur)); eff = [(x, -amt), (y, amt)]
            if r.status == 201:
                for acc, d in eff:
                    model[acc] += d
            elif r.status == 422 and r.code == "insufficient_funds":
                rejected += 1
            else:
                raise AssertionError(f"unexpected answer in workload: {r.describe()}")
        log(f"# workload: {rejected} rejected for insufficient funds")
        mismatched = []
        for cur, ids in accts.items():
            for i in ids:
                got = c.balance(i)
                if got != fmt(model[i], cur):
                    mismatched.append((i, got, fmt(model[i], cur)))
        ck.check("every workload account balance matches the model", not mismatched, mismatched[:5])
        all_acc = c.all_accounts()
        ck.eq("account list has no duplicates", len(all_acc), len({x["id"] for x in all_acc}))
        sums = {}
        bad_fmt = []
        for x in all_acc:
            cur = x["currency"]
            e = EXPONENT[cur]
            pat = r"^-?\d+$" if e == 0 else rf"^-?\d+\.\d{{{e}}}$"
            if not re.match(pat, x["balance"]):
                bad_fmt.append((x["id"], x["balance"]))
            sums[cur] = sums.get(cur, 0) + to_minor(x["balance"], cur)
            if to_minor(x["available"], cur) != to_minor(x["balance"], cur) - to_minor(x["pending_debits"], cur):
                bad_fmt.append((x["id"], "available != balance - pending_debits"))
        ck.check("every listed balance has the currency's exact digits", not bad_fmt, bad_fmt[:5])
        ck.check("sum of all balances is zero per currency", all(v == 0 for v in sums.values()),
                 {k: v for k, v in sums.items() if v})
        ck.check("the list contains all 10 system accounts", set(range(1, 11)) <= {x["id"] for x in all_acc})

    with ck.section("region limit (256 distinct regions)"):
        regions = {x["region"] for x in c.all_accounts()}
        n_before = len(c.all_accounts())
        made = 0
        refused = None
        for i in range(300):
            r = c.create_account("USD", region=f"rl-{i}")
            if r.status == 201:
                made += 1
                regions.add(f"rl-{i}")
                continue
            refused = (len(regions), r)
            break
        ck.check("a new region past the limit is refused", refused is not None, f"{len(regions)} regions accepted")
        if refused is not None:
            ck.status("refusal is 422 limit_exceeded", refused[1], 422, "limit_exceeded")
            ck.check("the limit is 256 distinct regions (counting 'system' or not)", refused[0] in (255, 256),
                     f"refused with {refused[0]} distinct regions in use")
            ck.eq("the refused create made no account", len(c.all_accounts()), n_before + made)
            ck.status("an existing region still works after the limit", c.create_account("USD", region="rl-0"), 201)


if __name__ == "__main__":
    run_main(main)
