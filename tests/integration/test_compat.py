#!/usr/bin/env python3
"""Compatibility routes (--compat; docs/compat.md): every route, status and error body of the
seed systems' APIs (API.md "Compatibility routes"), exact JSON-number amounts, cookie sessions,
bearer tokens unless --compat-open, the start-up rules of the flags, and the three load
scenarios of issue 5 scaled down (their full size runs under `make bench`: bench/compat.sh)."""

import json
import os
import re
import subprocess
import sys
import threading
import uuid

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import (UUID7_RE, Client, Server, bin_dir, final_server_checks, run_main,  # noqa: E402
                            seed_from_env)
from auth_helpers import FAST_ARGON2, RAISED_SIGNIN, make_key, uniq  # noqa: E402

COOKIE_RE = re.compile(r"^sessionId=(lds_[A-Za-z0-9_-]+); HttpOnly; SameSite=Strict; Path=/$")
ACCT_RE = re.compile(r"^\d{12}$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
MICRO_401 = {"message": "Unauthorized"}
BANK_401 = {"success": False, "error": {"message": "Unauthorized", "code": 401}}
FLASK_401 = {"error": "Unauthorized"}
BANK_NSF = b'{"success":false,"error":{"message":"Insufficient funds","code":400}}'
COMPAT_ROUTES = {
    "POST /api/signup/": "open", "POST /api/signin/": "open",
    "GET /api/accountGeneration/": "credential", "POST /api/accountGeneration/": "credential",
    "POST /api/deposit/": "credential", "POST /api/withdraw/": "credential",
    "POST /api/transfer/": "credential", "GET /api/users/{id}": "credential",
    "PUT /api/users/{id}/balance": "credential", "POST /process_transaction": "credential",
    "POST /transaction": "credential", "GET /balance/{id}": "credential",
    "GET /transactions": "credential", "GET /suspicious": "credential",
}


def acct(n):
    return f"{n:012d}"


def ledgerd(args, timeout=30):
    p = subprocess.run([os.path.join(bin_dir(), "ledgerd")] + args, capture_output=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def routes_of(text):
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[f"{parts[0]} {parts[1]}"] = parts[2]
    return out


class Micro:
    """A microfin client: signs up and in, then sends the sessionId cookie (never a bearer)."""

    def __init__(self, srv):
        self.c = Client(srv.host, srv.port, token=None)
        self.email = f"{uniq('user')}@example.com"
        self.password = "pw-" + uuid.uuid4().hex
        self.cookie = None
        self.token = None

    def signup(self, name="Ann"):
        return self.c.post("/api/signup/", {"name": name, "email": self.email, "password": self.password})

    def signin(self):
        r = self.c.post("/api/signin/", {"email": self.email, "password": self.password})
        m = COOKIE_RE.match(r.headers.get("set-cookie", ""))
        if r.status == 200 and m:
            self.token = m.group(1)
            self.cookie = f"sessionId={self.token}"
        return r

    def req(self, method, path, body=None, raw=None, key=None, headers=None):
        h = {"Cookie": self.cookie} if self.cookie else {}
        h.update(headers or {})
        return self.c.request(method, path, body=body, raw=raw, key=key, headers=h)

    def new_account(self):
        r = self.req("POST", "/api/accountGeneration/")
        if r.status != 201:
            raise AssertionError(f"accountGeneration failed: {r.describe()}")
        return int(r.json["accountNumber"])


def startup_checks(ck):
    with ck.section("start-up flags"):
        rc, out, err = ledgerd(["--compat-open", "--list-routes"])
        ck.check("--compat-open without --compat: exit 2 with a reason", rc == 2 and "--compat" in err, f"{rc} {err}")
        rc, out, err = ledgerd(["--compat", "--compat-open", "--listen", "0.0.0.0:0", "--data-dir", "/nonexistent"])
        ck.check("--compat-open on a non-loopback address: exit 2", rc == 2 and "loopback" in err, f"{rc} {err}")
        rc, out, _ = ledgerd(["--list-routes"])
        ck.check("--list-routes without --compat lists no compat route",
                 rc == 0 and not set(routes_of(out)) & set(COMPAT_ROUTES), out[-300:])
        rc, out, _ = ledgerd(["--compat", "--list-routes"])
        listed = routes_of(out)
        ck.eq("--compat --list-routes lists every compat route with its auth",
              {k: v for k, v in listed.items() if k in COMPAT_ROUTES}, COMPAT_ROUTES)
        ck.check("--compat --list-routes still lists the v1 routes", "POST /v1/transfers" in listed)


def without_compat(ck):
    srv = Server()
    try:
        srv.start()
        with ck.section("without --compat the routes do not exist"):
            c = srv.client()
            for method, path, body in (("POST", "/api/signup/", {}), ("GET", "/api/users/11", None),
                                       ("POST", "/process_transaction", {}), ("GET", "/transactions", None)):
                r = c.request(method, path, body=body)
                ck.status(f"{method} {path} -> 404 not_found", r, 404, "not_found")
            c.close()
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


def microfin(ck, srv, admin):
    ann, bob = Micro(srv), Micro(srv)
    with ck.section("microfin: sign-up"):
        r = ann.signup("Ann Lee")
        ck.status("signup 201", r, 201)
        ck.eq("signup body", r.json, {"message": "User registered successfully",
                                      "user": {"id": r.json["user"]["id"], "name": "Ann Lee", "email": ann.email}})
        ck.status("bob signs up", bob.signup("Bob"), 201)
        r = ann.c.post("/api/signup/", {"name": "Ann", "email": ann.email.upper(), "password": ann.password})
        ck.eq("the same email again (any case): 409", (r.status, r.json), (409, {"message": "User already exists"}))
        bad = [("no name", {"email": "x@example.com", "password": "p" * 12}),
               ("short password", {"name": "A", "email": "y@example.com", "password": "short"}),
               ("email without @", {"name": "A", "email": "nobody.example.com", "password": "p" * 12}),
               ("email with +", {"name": "A", "email": "a+b@example.com", "password": "p" * 12}),
               ("email as a number", {"name": "A", "email": 12, "password": "p" * 12})]
        for label, body in bad:
            r = ann.c.post("/api/signup/", body)
            ck.check(f"signup {label}: 400 with a message",
                     r.status == 400 and isinstance(r.json, dict) and set(r.json) == {"message"}, r.describe())
        for raw in ("{", "[]", '{"name":"A"} x', '{"name":"A","name":"B"}', "", '"str"'):
            r = ann.c.request("POST", "/api/signup/", raw=raw)
            ck.check(f"signup body {raw!r}: 400 message", r.status == 400 and "message" in (r.json or {}), r.describe())
        big = '{"name":"A","email":"big@example.com","password":"%s","pad":"%s"}' % ("p" * 12, "x" * 70000)
        r = ann.c.request("POST", "/api/signup/", raw=big)
        ck.check("a body over 64 KiB: 413 with a message", r.status == 413 and "message" in (r.json or {}), r.describe())
        r = ann.c.request("GET", "/api/signup/")
        ck.eq("GET /api/signup/: 405", (r.status, r.json), (405, {"message": "Method not allowed"}))

    with ck.section("microfin: sign-in and the sessionId cookie"):
        r = ann.c.post("/api/signin/", {"email": ann.email, "password": "wrong password!"})
        ck.eq("wrong password: 401", (r.status, r.json), (401, {"message": "Invalid email or password"}))
        ck.check("wrong password: no cookie", "set-cookie" not in r.headers)
        for body in ({"email": ann.email}, {"password": "x" * 12}, {"email": 5, "password": "x" * 12}):
            r = ann.c.post("/api/signin/", body)
            ck.check(f"signin {sorted(body)}: 400 with a message", r.status == 400 and set(r.json or {}) == {"message"},
                     r.describe())
        r = ann.c.post("/api/signin/", {"email": "nobody@example.com", "password": "whatever-long"})
        ck.eq("unknown email: the same 401", (r.status, r.json), (401, {"message": "Invalid email or password"}))
        r = ann.signin()
        ck.status("signin 200", r, 200)
        ck.check("Set-Cookie: sessionId=<token>; HttpOnly; SameSite=Strict; Path=/",
                 COOKIE_RE.match(r.headers.get("set-cookie", "")), r.headers.get("set-cookie"))
        ck.eq("signin body", (r.json.get("message"), r.json.get("userId"), bool(TIME_RE.match(r.json.get("expiresAt", "")))),
              ("Signed in successfully", r.json.get("userId"), True))
        ck.check("the token is not in the body", ann.token not in r.body.decode())
        bob.email = bob.email.upper()  # sign-in is case-insensitive on the email
        ck.status("signin with the email in upper case", bob.signin(), 200)
        me = Client(srv.host, srv.port, token=ann.token).get("/v1/me")
        ck.eq("the cookie's token is a v1 session of the user", (me.status, me.json.get("username")), (200, ann.email))

    with ck.section("microfin: accounts"):
        anon = Micro(srv)
        r = anon.req("POST", "/api/accountGeneration/")
        ck.eq("accountGeneration without a session: 401", (r.status, r.json), (401, MICRO_401))
        for path in ("/api/deposit/", "/api/withdraw/", "/api/transfer/"):
            r = anon.req("POST", path, {"accountNumber": acct(11), "amount": 1})
            ck.eq(f"{path} without a session: 401 (before the body is read)", (r.status, r.json), (401, MICRO_401))
        r = anon.req("POST", "/api/accountGeneration/", headers={"Cookie": "sessionId=lds_nope"})
        ck.eq("accountGeneration with an unknown session: 401", (r.status, r.json), (401, MICRO_401))
        r = ann.req("GET", "/api/accountGeneration/")
        ck.status("GET accountGeneration 201", r, 201)
        ck.check("body: message, 12-digit accountNumber, balance 0.00",
                 r.json["message"] == "Account created successfully" and ACCT_RE.match(r.json["accountNumber"])
                 and r.body.decode().endswith('"balance":0.00}'), r.describe())
        a1 = int(r.json["accountNumber"])
        a2 = ann.new_account()
        b1 = bob.new_account()
        v1 = admin.account(a1)
        ck.eq("the account number is the v1 account id, owned by the user",
              (v1["id"], v1["owner_id"], v1["currency"]), (a1, me.json["id"], "USD"))
        bearer = Client(srv.host, srv.port, token=ann.token).post("/api/accountGeneration/")
        ck.status("a bearer header works like the cookie", bearer, 201)

    with ck.section("microfin: deposit, withdraw, transfer (exact amounts)"):
        r = ann.req("POST", "/api/deposit/", {"accountNumber": acct(a1), "amount": 1000})
        ck.status("deposit 1000: 200", r, 200)
        ck.check("deposit body", r.json.get("message") == "Deposit successful" and r.json.get("accountNumber") == acct(a1)
                 and '"amount":1000.00' in r.body.decode() and '"balance":1000.00' in r.body.decode()
                 and UUID7_RE.match(r.json.get("transactionId", "")), r.describe())
        r = ann.req("POST", "/api/deposit/", raw='{"accountNumber":"%s","amount":100.50}' % acct(a1))
        ck.check("deposit 100.50: balance 1100.50", r.status == 200 and '"balance":1100.50' in r.body.decode(), r.describe())
        for amt in ("0.1", "0.2"):
            ann.req("POST", "/api/deposit/", raw='{"accountNumber":"%s","amount":%s}' % (acct(a2), amt))
        ck.eq("0.1 + 0.2 is exactly 0.30", admin.balance(a2), "0.30")
        r = ann.req("POST", "/api/deposit/", raw='{"accountNumber":"%s","amount":1.000}' % acct(a2))
        ck.check("1.000 (zeros past the exponent carry nothing) is accepted", r.status == 200, r.describe())
        refused = [("1e2", "exponent"), ("100.001", "more digits than USD"), ("-5", "negative"), ("0", "zero"),
                   ("0.00", "zero"), ("99999999999999999999", "overflow"), ("92233720368547758.08", "int64 overflow"),
                   ('"100"', "a string"), ("null", "null"), ("[1]", "an array"), ("true", "a bool")]
        before = admin.balance(a1)
        for text, why in refused:
            r = ann.req("POST", "/api/deposit/", raw='{"accountNumber":"%s","amount":%s}' % (acct(a1), text))
            ck.check(f"deposit amount {text} ({why}): 400 with a message",
                     r.status == 400 and set(r.json or {}) == {"message"}, r.describe())
        ck.eq("refused deposits changed nothing", admin.balance(a1), before)
        r = ann.req("POST", "/api/deposit/", raw='{"accountNumber":"%s","amount":100.001}' % acct(a1))
        ck.eq("100.001 USD: the engine's invalid-amount message",
              r.json, {"message": "The amount has more decimal places than the currency allows, or is too large"})
        for num, why in ((a1, "a number, not a string"), ("%011d" % a1, "11 digits"), ("00000000001a", "a letter"),
                         ("000000000000", "zero")):
            r = ann.req("POST", "/api/deposit/", {"accountNumber": num, "amount": 1})
            ck.status(f"accountNumber {num!r} ({why}): 400", r, 400)
        r = ann.req("POST", "/api/deposit/", {"amount": 1})
        ck.eq("no accountNumber: 400", (r.status, r.json), (400, {"message": "'accountNumber' is required"}))
        r = ann.req("POST", "/api/deposit/", {"accountNumber": acct(b1), "amount": 5})
        ck.eq("deposit into someone else's account: 404", (r.status, r.json), (404, {"message": "Account not found"}))
        r = ann.req("POST", "/api/deposit/", {"accountNumber": acct(9_000_000_000), "amount": 5})
        ck.eq("deposit into a missing account: the same 404", (r.status, r.json), (404, {"message": "Account not found"}))
        ck.eq("bob's account untouched", admin.balance(b1), "0.00")

        r = ann.req("POST", "/api/withdraw/", {"accountNumber": acct(a1), "amount": 500})
        ck.check("withdraw 500: 200, balance 600.50", r.status == 200 and r.json["message"] == "Withdrawal successful"
                 and '"balance":600.50' in r.body.decode(), r.describe())
        r = ann.req("POST", "/api/withdraw/", {"accountNumber": acct(a1), "amount": 600.51})
        ck.eq("withdraw more than the balance: 400 Insufficient funds", (r.status, r.json),
              (400, {"message": "Insufficient funds"}))
        r = ann.req("POST", "/api/withdraw/", {"accountNumber": acct(b1), "amount": 1})
        ck.eq("withdraw from someone else's account: 404", (r.status, r.json), (404, {"message": "Account not found"}))

        r = ann.req("POST", "/api/transfer/", {"senderAccountNumber": acct(a1), "receiverAccountNumber": acct(b1),
                                               "amount": 200})
        ck.check("transfer 200 to bob: 200 with sender's balance 400.50",
                 r.status == 200 and r.json["message"] == "Transfer successful"
                 and r.json["senderAccountNumber"] == acct(a1) and r.json["receiverAccountNumber"] == acct(b1)
                 and '"balance":400.50' in r.body.decode(), r.describe())
        ck.eq("bob received 200.00", admin.balance(b1), "200.00")
        r = ann.req("POST", "/api/transfer/", {"senderAccountNumber": acct(b1), "receiverAccountNumber": acct(a1),
                                               "amount": 1})
        ck.eq("transfer from bob's account as ann: 404", (r.status, r.json), (404, {"message": "Account not found"}))
        r = ann.req("POST", "/api/transfer/", {"senderAccountNumber": acct(a1), "receiverAccountNumber": acct(a1),
                                               "amount": 1})
        ck.eq("transfer to the same account: 400", (r.status, r.json), (400, {"message": "Sender and receiver must differ"}))
        r = ann.req("POST", "/api/transfer/", {"senderAccountNumber": acct(a1), "amount": 1})
        ck.status("transfer without receiver: 400", r, 400)
        r = ann.req("GET", "/api/transfer/")
        ck.status("GET /api/transfer/: 405", r, 405)
        r = bob.req("POST", "/api/withdraw/", {"accountNumber": acct(b1), "amount": 200.001})
        ck.status("bob: 200.001 USD is 400, never rounded", r, 400)

    with ck.section("microfin: deposits are recorded as the operator on the user's behalf"):
        hist = admin.get(f"/v1/accounts/{a1}/transfers?order=asc").json["data"]
        dep = hist[0]["transfer"]
        ck.eq("the first entry is a deposit from cash:USD", (dep["kind"], dep["debit_account_id"]), ("deposit", 1))
        full = admin.get(f"/v1/transfers/{dep['id']}").json
        ck.eq("its metadata names the route and the user",
              full.get("metadata"), {"compat_route": "microfin.deposit", "requested_by": f"user:{me.json['id']}"})

    with ck.section("microfin: Idempotency-Key"):
        k = "compat-" + uuid.uuid4().hex
        body = {"accountNumber": acct(a2), "amount": 7}
        r1 = ann.req("POST", "/api/deposit/", body, key=k)
        r2 = ann.req("POST", "/api/deposit/", body, key=k)
        ck.eq("a repeat replays the first answer", (r2.status, r2.json), (r1.status, r1.json))
        ck.eq("... marked as a replay", r2.headers.get("idempotent-replayed"), "true")
        ck.eq("one deposit landed", admin.balance(a2), "8.30")
        r3 = ann.req("POST", "/api/deposit/", {"accountNumber": acct(a2), "amount": 8}, key=k)
        ck.status("the same key with another body: 409", r3, 409)
        b2 = bob.new_account()
        r4 = bob.req("POST", "/api/deposit/", {"accountNumber": acct(b2), "amount": 7}, key=k)
        ck.check("another user's same key is not a replay of ann's deposit",
                 r4.status == 200 and "idempotent-replayed" not in r4.headers, r4.describe())
        r = ann.req("POST", "/api/deposit/", body, key="bad key")
        ck.status("a malformed key: 400", r, 400)

    with ck.section("microfin: who may deposit"):
        _, aud = make_key(admin, "auditor")
        r = Client(srv.host, srv.port, token=aud).post("/api/deposit/", {"accountNumber": acct(a1), "amount": 5})
        ck.eq("an auditor may read but not deposit: 403", (r.status, r.json), (403, {"message": "Forbidden"}))
        ac = Client(srv.host, srv.port, token=aud)
        r = ac.request("PUT", f"/api/users/{a1}/balance", body={"amount": 5})
        ck.eq("an auditor on the banking PUT: 403", (r.status, r.json),
              (403, {"success": False, "error": {"message": "Forbidden", "code": 403}}))
        r = ac.post("/process_transaction", {"from": a1, "to": b1, "amount": 1})
        ck.eq("an auditor on the Flask route: 403", (r.status, r.json), (403, {"error": "Forbidden"}))
        ck.status("an auditor may read: GET /balance/{id}", ac.get(f"/balance/{a1}"), 200)
        r = admin.post("/api/deposit/", {"accountNumber": acct(b1), "amount": 5})
        ck.status("an admin may deposit into anyone's account", r, 200)
        ck.eq("bob's balance", admin.balance(b1), "205.00")

    with ck.section("microfin: sign-out ends the cookie session"):
        r = Client(srv.host, srv.port, token=ann.token).request("DELETE", "/v1/sessions/current")
        ck.status("DELETE /v1/sessions/current with the cookie's token: 204", r, 204)
        r = ann.req("POST", "/api/accountGeneration/")
        ck.eq("the cookie no longer works", (r.status, r.json), (401, MICRO_401))
    return bob


def banking(ck, srv, admin, bob):
    with ck.section("banking API: authentication"):
        mine = bob.new_account()
        anon = srv.anon_client()
        r = anon.get(f"/api/users/{mine}")
        ck.eq("GET without a bearer: 401", (r.status, r.json), (401, BANK_401))
        ck.eq("... WWW-Authenticate: Bearer", r.headers.get("www-authenticate"), "Bearer")
        r = anon.request("PUT", f"/api/users/{mine}/balance", body={"amount": 5})
        ck.eq("PUT without a bearer: 401", (r.status, r.json), (401, BANK_401))
        r = bob.req("GET", f"/api/users/{mine}")
        ck.eq("a microfin cookie is not a bearer here: 401", (r.status, r.json), (401, BANK_401))
        bc = Client(srv.host, srv.port, token=bob.token)

    with ck.section("banking API: GET /api/users/:id"):
        r = bc.get(f"/api/users/{mine}")
        ck.status("the owner: 200", r, 200)
        d = (r.json or {}).get("data", {})
        ck.check("shape {success:true, data:{id, balance, createdAt, updatedAt}}",
                 r.json.get("success") is True and set(d) == {"id", "balance", "createdAt", "updatedAt"}
                 and d["id"] == mine and TIME_RE.match(d["createdAt"]) and '"balance":0.00' in r.body.decode(),
                 r.describe())
        other = admin.new_account("USD")
        for path in (f"/api/users/{other}", "/api/users/9000000000", "/api/users/abc", "/api/users/0"):
            r = bc.get(path)
            ck.eq(f"GET {path} as a customer: 404", (r.status, r.json),
                  (404, {"success": False, "error": {"message": "User not found", "code": 404}}))
        r = bc.post(f"/api/users/{mine}")
        ck.status("POST /api/users/:id: 405", r, 405)

    with ck.section("banking API: PUT /api/users/:id/balance"):
        r = bc.request("PUT", f"/api/users/{mine}/balance", raw='{"amount": 100.50}')
        ck.status("+100.50 by the owner: 200", r, 200)
        ck.check("shape {success, data:{id, balance, updatedAt}, message}",
                 r.json.get("success") is True and r.json.get("message") == "Balance updated successfully"
                 and set(r.json["data"]) == {"id", "balance", "updatedAt"} and '"balance":100.50' in r.body.decode(),
                 r.describe())
        r = bc.request("PUT", f"/api/users/{mine}/balance", raw='{"amount": -0.5}')
        ck.check("-0.5 withdraws: 100.00", r.status == 200 and '"balance":100.00' in r.body.decode(), r.describe())
        r = bc.request("PUT", f"/api/users/{mine}/balance", raw='{"amount": -100.01}')
        ck.eq("overdrawing: 400 with exactly the documented body", (r.status, r.body), (400, BANK_NSF))
        for text in ("0", "-0", "100.005", "1E2", '"5"', "1e-2"):
            r = bc.request("PUT", f"/api/users/{mine}/balance", raw='{"amount": %s}' % text)
            ck.check(f"amount {text}: 400 in the banking shape",
                     r.status == 400 and r.json.get("success") is False and r.json["error"]["code"] == 400, r.describe())
        r = bc.request("PUT", f"/api/users/{mine}/balance", raw='{"value": 5}')
        ck.status("no amount: 400", r, 400)
        r = bc.request("PUT", f"/api/users/{other}/balance", raw='{"amount": 5}')
        ck.eq("someone else's: 404", (r.status, r.json["error"]["message"]), (404, "User not found"))
        ck.eq("after all that: 100.00", admin.balance(mine), "100.00")


def flask(ck, srv, admin, bob):
    with ck.section("Flask service routes"):
        bc = Client(srv.host, srv.port, token=bob.token)
        a, b = bob.new_account(), bob.new_account()
        admin.deposit(a, "500.00")
        anon = srv.anon_client()
        for method, path in (("POST", "/process_transaction"), ("POST", "/transaction"), ("GET", f"/balance/{a}"),
                             ("GET", "/transactions"), ("GET", "/suspicious")):
            r = anon.request(method, path, body={"from": a, "to": b, "amount": 1} if method == "POST" else None)
            ck.eq(f"{method} {path} without a bearer: 401", (r.status, r.json), (401, FLASK_401))
        for path in ("/process_transaction", "/transaction"):
            r = bc.post(path, {"from": a, "to": b, "amount": 100})
            ck.check(f"POST {path}: 200 {{txn_id, status: completed}}",
                     r.status == 200 and set(r.json) == {"txn_id", "status"} and r.json["status"] == "completed"
                     and UUID7_RE.match(r.json["txn_id"]), r.describe())
        r = bc.request("POST", "/transaction", raw='{"from":%d,"to":%d,"amount":0.07}' % (a, b))
        ck.status("0.07: 200", r, 200)
        r = bc.get(f"/balance/{a}")
        ck.eq("GET /balance/{id}", (r.status, r.body.decode()), (200, '{"account_id":%d,"balance":299.93,"cached":false}' % a))
        r = bc.post("/process_transaction", {"from": a, "to": b, "amount": 300})
        ck.eq("insufficient funds: 400", (r.status, r.json), (400, {"error": "Insufficient funds"}))
        r = bc.post("/process_transaction", {"from": a, "to": 9_000_000_000, "amount": 1})
        ck.eq("a missing account: 404", (r.status, r.json), (404, {"error": "Account not found"}))
        for body, why in (({"from": str(a), "to": b, "amount": 1}, "from as a string"),
                          ({"from": a + 0.5, "to": b, "amount": 1}, "from 1.5"),
                          ({"from": a, "amount": 1}, "no to"),
                          ({"from": a, "to": b, "amount": "1"}, "amount as a string")):
            r = bc.post("/process_transaction", body)
            ck.check(f"{why}: 400 {{error}}", r.status == 400 and set(r.json or {}) == {"error"}, r.describe())
        r = bc.get(f"/transactions?account_id={a}")
        ck.status("GET /transactions?account_id=: 200", r, 200)
        items = r.json if isinstance(r.json, list) else []
        ck.eq("newest first, each {id, from, to, amount, status}",
              [(i["from"], i["to"], i["status"], sorted(i)) for i in items[:3]],
              [(a, b, "completed", ["amount", "from", "id", "status", "to"])] * 3)
        ck.check("amounts are exact JSON numbers", '"amount":0.07' in r.body.decode(), r.body[:300])
        ck.eq("the deposit is in the list too", len(items), 4)
        r = bc.get(f"/transactions?account_id={a}&limit=2")
        ck.eq("limit=2", len(r.json), 2)
        for q in ("account_id=x", "account_id=0", f"account_id={a}&limit=0", f"account_id={a}&limit=1001"):
            ck.status(f"GET /transactions?{q}: 400", bc.get(f"/transactions?{q}"), 400)
        # Without account_id: the newest transfers of the ledger (v1 search); a customer sees
        # only those touching their own accounts.
        r = bc.get("/transactions?limit=1000")
        mine = [(i["from"], i["to"]) for i in items]
        got = [(i["from"], i["to"]) for i in r.json] if r.status == 200 and isinstance(r.json, list) else []
        ck.eq("GET /transactions without account_id (customer): their newest transfers first", got[:len(mine)], mine)
        lst = Client(srv.host, srv.port, token=bob.token).get("/v1/accounts?limit=1000")
        owned = {acc["id"] for acc in (lst.json or {}).get("data", [])}
        ck.check("... and only transfers touching their own accounts",
                 got and all(f in owned or t in owned for f, t in got), f"{got} vs {sorted(owned)}")
        # The built-in rule flags 10,000.00 and more: a flagged deposit shows on GET /suspicious.
        big = admin.new_account("USD")
        dep = admin.deposit(big, "10000.00")
        ck.eq("setup: a flagged deposit", dep.json.get("flags") if dep.json else None, ["suspicious"])
        r = Client(srv.host, srv.port, token=srv.admin_token).get("/suspicious")
        ck.status("GET /suspicious as admin: 200", r, 200)
        entries = [e for e in (r.json or []) if isinstance(e, dict) and e.get("txn_id") == dep.json["id"]]
        ck.eq("the flagged deposit is listed with its rule",
              [(e["to"], e["amount"], e["rule"], e["action"], e["status"]) for e in entries],
              [(big, 10000.00, "large-amount", "flag", "open")])
        ck.check("its amount is an exact JSON number", b'"amount":10000.00' in r.body, r.body[:300])
        r = bc.get("/suspicious")
        ck.eq("GET /suspicious as a customer: 403", r.status, 403)
        r = bc.get(f"/transactions?account_id={admin.new_account('USD')}")
        ck.eq("another customer's account: 404", (r.status, r.json), (404, {"error": "Account not found"}))
        ck.status("GET /process_transaction: 405", bc.get("/process_transaction"), 405)


def run_parallel(n_clients, jobs, fn):
    """Runs fn(client_index, job) for every job over n_clients threads; returns the results."""
    results = [None] * len(jobs)
    lock = threading.Lock()
    next_job = [0]

    def worker(ci):
        while True:
            with lock:
                j = next_job[0]
                next_job[0] += 1
            if j >= len(jobs):
                return
            try:
                results[j] = fn(ci, jobs[j])
            except Exception as e:  # noqa: BLE001 - counted as a failure below
                results[j] = e
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return results


def scenarios(ck, srv, admin):
    with ck.section("--compat-open: no credential on banking/Flask routes, microfin still needs a session"):
        anon = srv.anon_client()
        acc = admin.new_account("USD")
        r = anon.request("PUT", f"/api/users/{acc}/balance", body={"amount": 1000})
        ck.status("PUT balance without a bearer: 200 (as the operator)", r, 200)
        ck.status("GET /api/users/:id without a bearer: 200", anon.get(f"/api/users/{acc}"), 200)
        r = anon.post("/api/accountGeneration/")
        ck.eq("microfin without a session: still 401", (r.status, r.json), (401, MICRO_401))
        ck.status("v1 without a bearer: still 401", anon.get(f"/v1/accounts/{acc}"), 401)

    with ck.section("banking scenario (scaled): 1,000 x {amount:-2} from 100 clients against 1000"):
        clients = [srv.anon_client() for _ in range(100)]
        res = run_parallel(100, list(range(1000)), lambda ci, _: clients[ci].request(
            "PUT", f"/api/users/{acc}/balance", raw='{"amount": -2}'))
        statuses = [getattr(x, "status", repr(x)) for x in res]
        ck.eq("exactly 500 x 200 and 500 x 400", (statuses.count(200), statuses.count(400), len(statuses)),
              (500, 500, 1000))
        ck.check("every 400 is the documented body", all(x.body == BANK_NSF for x in res if getattr(x, "status", 0) == 400))
        ck.eq("the balance ends at 0.00", admin.balance(acc), "0.00")
        for c in clients:
            c.close()

    with ck.section("Flask scenario (scaled): 200 x POST /process_transaction, GET /balance, GET /transactions"):
        a, b = admin.new_account("USD"), admin.new_account("USD")
        admin.deposit(a, "20000.00")
        clients = [srv.anon_client() for _ in range(20)]
        res = run_parallel(20, list(range(200)), lambda ci, _: clients[ci].post(
            "/process_transaction", {"from": a, "to": b, "amount": 100}))
        ck.eq("200 x 200 completed", sum(1 for x in res if getattr(x, "status", 0) == 200
                                          and x.json.get("status") == "completed"), 200)
        ck.eq("GET /balance/{from}", clients[0].get(f"/balance/{a}").json, {"account_id": a, "balance": 0, "cached": False})
        r = clients[0].get(f"/transactions?account_id={b}&limit=1000")
        ck.eq("GET /transactions lists the 200", len(r.json), 200)
        ck.eq("their ids are the txn_ids", sorted(i["id"] for i in r.json), sorted(x.json["txn_id"] for x in res))

    with ck.section("microfin scenario (scaled): 30 users x sign in, 2 accounts, deposit, withdraw, transfer"):
        users = [Micro(srv) for _ in range(30)]
        for u in users:
            u.signup()

        def iteration(ci, u):
            steps = [u.signin().status]
            x, y = u.new_account(), u.new_account()
            steps.append(u.req("POST", "/api/deposit/", {"accountNumber": acct(x), "amount": 1000}).status)
            steps.append(u.req("POST", "/api/withdraw/", {"accountNumber": acct(x), "amount": 500}).status)
            steps.append(u.req("POST", "/api/transfer/", {"senderAccountNumber": acct(x),
                                                          "receiverAccountNumber": acct(y), "amount": 200}).status)
            return steps, x, y
        res = run_parallel(10, users, iteration)
        ok = [x for x in res if isinstance(x, tuple) and x[0] == [200, 200, 200, 200]]
        ck.eq("every iteration's steps answered 200", len(ok), 30, [x for x in res if x not in ok][:3])
        ck.check("each user ends with 300.00 and 200.00",
                 all((admin.balance(x), admin.balance(y)) == ("300.00", "200.00") for _, x, y in ok))
        for u in users:
            u.c.close()


def risk_rules(ck):
    """Compat transfers are judged by the engine's risk rules like any other (docs/rules.md)."""
    import tempfile
    cfg_dir = tempfile.mkdtemp(prefix="compat-rules-")
    cfg = os.path.join(cfg_dir, "rules.conf")
    with open(cfg, "w") as f:
        f.write("rule big amount threshold=600.00 action=hold\nrule nope blocklist accounts=999999 action=reject\n")
    srv = Server(extra_args=["--compat", "--compat-open", "--config", cfg] + FAST_ARGON2)
    try:
        srv.start()
        admin = srv.client()
        c = srv.anon_client()  # --compat-open: the Flask routes run as the operator
        with ck.section("risk rules on compat routes"):
            a, b = admin.new_account("USD"), admin.new_account("USD")
            r = admin.deposit(a, "5000.00")
            ck.eq("setup: a held deposit (5,000.00 >= 600.00)", (r.json or {}).get("flags"), ["suspicious", "held"])
            entry = admin.get("/v1/suspicious?limit=1").json["data"][0]
            ck.status("setup: the review clears it", admin.post(f"/v1/suspicious/{entry['id']}/review",
                                                                    {"decision": "clear"}), 200)
            r = c.post("/process_transaction", {"from": a, "to": b, "amount": 100})
            ck.eq("under the threshold: completed", (r.status, (r.json or {}).get("status")), (200, "completed"))
            r = c.post("/process_transaction", {"from": a, "to": b, "amount": 700})
            ck.eq("a held transfer: 200 with status pending", (r.status, (r.json or {}).get("status")), (200, "pending"))
            t = admin.get(f"/v1/transfers/{r.json['txn_id']}").json if r.status == 200 else {}
            ck.eq("... it is pending and held in v1", (t.get("status"), t.get("flags")), ("pending", ["suspicious", "held"]))
            r = c.get(f"/balance/{a}")
            ck.eq("... the balance has not moved yet", (r.status, (r.json or {}).get("balance")), (200, 4900.00))
            r = c.post("/process_transaction", {"from": a, "to": 999999, "amount": 1})
            ck.eq("a missing account is still a 404 before any rule", r.status, 404)
            acct = admin.new_account("USD")
            r = c.put(f"/api/users/{acct}/balance", {"amount": 700}) if hasattr(c, "put") else \
                c.request("PUT", f"/api/users/{acct}/balance", body={"amount": 700})
            ck.eq("banking: a held deposit answers 200 with the balance unchanged",
                  (r.status, ((r.json or {}).get("data") or {}).get("balance")), (200, 0.00))
        admin.close()
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


def main(ck):
    seed_from_env()
    startup_checks(ck)
    without_compat(ck)
    srv = Server(extra_args=["--compat"] + FAST_ARGON2 + RAISED_SIGNIN)
    try:
        srv.start()
        admin = srv.client()
        bob = microfin(ck, srv, admin)
        banking(ck, srv, admin, bob)
        flask(ck, srv, admin, bob)
        with ck.section("money adds up"):
            sums = admin.sums_by_currency()
            ck.check("every currency sums to zero", all(v == 0 for v in sums.values()), sums)
            ck.check("no 500 answered", not admin.seen_500, admin.seen_500[:3])
        admin.close()
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()
    risk_rules(ck)
    srv = Server(extra_args=["--compat", "--compat-open"] + FAST_ARGON2 + RAISED_SIGNIN)
    try:
        srv.start()
        admin = srv.client()
        scenarios(ck, srv, admin)
        admin.close()
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run_main(main)
