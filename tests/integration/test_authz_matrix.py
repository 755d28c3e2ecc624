#!/usr/bin/env python3
"""Authorization matrix (docs/security.md "Roles and permissions"): every route that
`ledgerd --list-routes` prints has exactly one row in EXPECT below, giving the status each
kind of caller must get:

  anon     no credential
  owner    a customer who owns the account / transfer in the request
  other    another customer
  auditor  checked twice: a user whose role was set to auditor (session), and an auditor API key
  admin    checked twice: the bootstrap admin API key, and a user created with role admin (session)

A new route without a row, or a row for a route that no longer exists, fails the test. Every
request is built fresh for each caller (new accounts, transfers, keys, users made by the admin)
so that one caller's write never changes what the next one sees. Besides the status:
v1 401s are byte-identical (compat routes answer in their system's shape) with `WWW-Authenticate: Bearer`; a refused write changes nothing;
a 401/403/404 for an existing object is byte-identical to the answer for a missing one (no
existence leak); customers' lists hold only their own accounts."""

import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import Client, Server, bin_dir, final_server_checks, idem_key, run_main  # noqa: E402
from auth_helpers import (FAST_ARGON2, RAISED_SIGNIN, UNAUTHORIZED_BODY, Principal, create_user,  # noqa: E402
                          make_key, make_user, new_password, sign_in, uniq)

ACC = "account_not_found"
TRN = "transfer_not_found"
MISSING_ACCOUNT = 9_000_000_000_000  # < 2^53, never created here
# A well-formed UUIDv7 this ledger never issued.
MISSING_TRANSFER = "01a2035a-5ebf-7000-8000-00000000abcd"


def row(anon, owner, other, auditor, admin):
    return {"anon": anon, "owner": owner, "other": other, "auditor": auditor, "admin": admin}


# status, or (status, error code), or {"session": ..., "key": ...} when a session and an API
# key of the same role are answered differently.
SESSION_ONLY = {"session": 204, "key": (422, "invalid_operation")}  # a key is revoked, not signed out
EXPECT = {
    "GET /healthz":                      row(200, 200, 200, 200, 200),
    "GET /readyz":                       row(200, 200, 200, 200, 200),
    "GET /metrics":                      row(401, 403, 403, 200, 200),
    "POST /v1/accounts":                 row(401, 201, 201, 403, 201),
    "GET /v1/accounts":                  row(401, 200, 200, 200, 200),
    "GET /v1/accounts/{id}":             row(401, 200, (404, ACC), 200, 200),
    "POST /v1/accounts/{id}/freeze":     row(401, 403, 403, 403, 200),
    "POST /v1/accounts/{id}/unfreeze":   row(401, 403, 403, 403, 200),
    "GET /v1/accounts/{id}/transfers":   row(401, 200, (404, ACC), 200, 200),
    "POST /v1/transfers":                row(401, 201, (404, ACC), 403, 201),
    "GET /v1/transfers":                 row(401, 200, 200, 200, 200),  # customers: only their own
    "POST /v1/transfers/batch":          row(401, 200, 200, 403, 200),  # other: item account_not_found
    "GET /v1/transfers/{id}":            row(401, 200, (404, TRN), 200, 200),
    "POST /v1/transfers/{id}/post":      row(401, 200, (404, TRN), 403, 200),
    "POST /v1/transfers/{id}/void":      row(401, 200, (404, TRN), 403, 200),
    # A deposit brings money in from outside (cash:<CUR>): operators only, never a customer.
    "POST /v1/deposits":                 row(401, (403, "forbidden"), (403, "forbidden"), 403, 201),
    "POST /v1/withdrawals":              row(401, 201, (404, ACC), 403, 201),
    "POST /v1/users":                    row(201, 201, 201, 201, 201),  # sign-up is open
    "POST /v1/users/{id}/role":          row(401, 403, 403, 403, 200),
    "POST /v1/sessions":                 row(201, 201, 201, 201, 201),  # sign-in is open
    "DELETE /v1/sessions/current":       row(401, 204, 204, SESSION_ONLY, SESSION_ONLY),
    "GET /v1/me":                        row(401, 200, 200, 200, 200),
    "POST /v1/api-keys":                 row(401, 403, 403, 403, 201),
    "DELETE /v1/api-keys/{id}":          row(401, 403, 403, 403, 204),
    "GET /v1/audit":                     row(401, 403, 403, 200, 200),
    "GET /v1/transfers/{id}/receipt":    row(401, 200, (404, TRN), 200, 200),
    "GET /v1/rules":                     row(401, 403, 403, 200, 200),
    # This server runs the built-in rules (no --config): an admin's reload is refused as such.
    "POST /v1/rules/reload":             row(401, 403, 403, 403, (422, "invalid_rules")),
    "GET /v1/suspicious":                row(401, 403, 403, 200, 200),
    "POST /v1/suspicious/{id}/review":   row(401, 403, 403, 403, 200),
    "GET /v1/settlements":               row(401, 403, 403, 200, 200),
    "GET /v1/reports/settlements.csv":   row(401, 403, 403, 200, 200),
}
# Compatibility routes (docs/compat.md; the server here runs with --compat, without
# --compat-open). Their error bodies are the seed systems' shapes, not v1's.
COMPAT_EXPECT = {
    "POST /api/signup/":                 row(201, 201, 201, 201, 201),  # open, like POST /v1/users
    "POST /api/signin/":                 row(200, 200, 200, 200, 200),  # open, like POST /v1/sessions
    "GET /api/accountGeneration/":       row(401, 201, 201, 403, 201),
    "POST /api/accountGeneration/":      row(401, 201, 201, 403, 201),
    # A customer may deposit into its own account here (recorded as the operator after an
    # ownership check); auditors never (docs/compat.md, docs/security.md).
    "POST /api/deposit/":                row(401, 200, 404, 403, 200),
    "POST /api/withdraw/":               row(401, 200, 404, 403, 200),
    "POST /api/transfer/":               row(401, 200, 404, 403, 200),
    "GET /api/users/{id}":               row(401, 200, 404, 200, 200),
    "PUT /api/users/{id}/balance":       row(401, 200, 404, 403, 200),
    "POST /process_transaction":         row(401, 200, 404, 403, 200),
    "POST /transaction":                 row(401, 200, 404, 403, 200),
    "GET /balance/{id}":                 row(401, 200, 404, 200, 200),
    "GET /transactions":                 row(401, 200, 404, 200, 200),
    "GET /suspicious":                   row(401, 403, 403, 200, 200),  # GET /v1/suspicious
}
EXPECT.update(COMPAT_EXPECT)
COMPAT_MISSING = 900_000_000_000  # fits a 12-digit microfin account number, never created here


class Req:
    def __init__(self, method, path, body=None, token=Ellipsis, key=False, missing=None, after=None):
        self.method, self.path, self.body = method, path, body
        self.token = token          # Ellipsis: the caller's own token
        self.key = idem_key() if key else None
        self.missing = missing      # (path, body) naming a nonexistent object, for leak checks
        self.after = after          # after(ck, label, caller, resp)


class Ctx:
    def __init__(self, srv, admin):
        self.srv, self.admin = srv, admin
        self.house = admin.new_account("USD")  # owned by nobody (owner_id 0)
        self.signin_user = uniq("signin-target")
        self.signin_pw = new_password()
        r = create_user(admin, self.signin_user, self.signin_pw)
        assert r.status == 201, r.describe()
        self.compat_email = uniq("compat-signin") + "@example.com"  # a microfin user (docs/compat.md)
        r = create_user(admin, self.compat_email, self.signin_pw)
        assert r.status == 201, r.describe()
        self.owner = None

    def account(self, funded=False):
        a = self.admin.new_account("USD", owner_id=self.owner.user_id)
        if funded:
            r = self.admin.deposit(a, "100.00")
            assert r.status == 201, r.describe()
        return a

    def snapshot(self, account_id):
        j = self.admin.account(account_id)
        return (j["balance"], j["pending_debits"], j["pending_credits"], j["status"])

    def pending(self):
        a = self.account(funded=True)
        r = self.admin.transfer(a, self.house, "1.00", pending=True)
        assert r.status == 201, r.describe()
        return a, r.json["id"]


def changes_only_on_success(ctx, account_id, ok_status):
    """after(): the account changed iff the request succeeded."""
    before = ctx.snapshot(account_id)

    def after(ck, label, caller, resp):
        now = ctx.snapshot(account_id)
        if resp.status == ok_status:
            ck.check(f"{label}: the account changed", now != before, f"{before} -> {now}")
        else:
            ck.eq(f"{label}: a refused request changed nothing", now, before)
    return after


# ------------------------------------------------------------------ one builder per route

def b_healthz(ctx, caller):
    return Req("GET", "/healthz")


def b_readyz(ctx, caller):
    return Req("GET", "/readyz")


def b_metrics(ctx, caller):
    def after(ck, label, caller, resp):
        if resp.status == 200:
            ck.check(f"{label}: Prometheus text", b"ledger_http_requests_total" in resp.body)
    return Req("GET", "/metrics", after=after)


def b_accounts_create(ctx, caller):
    def after(ck, label, caller, resp):
        if resp.status == 201 and caller.kind == "session" and caller.role == "customer":
            ck.eq(f"{label}: a customer owns what it opens", resp.json.get("owner_id"), caller.user_id)
    return Req("POST", "/v1/accounts", {"currency": "USD"}, key=True, after=after)


def b_accounts_list(ctx, caller):
    def after(ck, label, caller, resp):
        if resp.status != 200:
            return
        owners = {a["owner_id"] for a in resp.json["data"]}
        if caller.role == "customer":
            ck.check(f"{label}: only the caller's own accounts", owners <= {caller.user_id}, f"owners {owners}")
            if caller.name == "owner":
                ck.check(f"{label}: the owner's accounts are listed", caller.user_id in owners)
        else:
            ck.check(f"{label}: everyone's accounts", len(owners) >= 2, f"owners {owners}")
    return Req("GET", "/v1/accounts?limit=1000", after=after)


def b_account_get(ctx, caller):
    a = ctx.account()
    return Req("GET", f"/v1/accounts/{a}", missing=(f"/v1/accounts/{MISSING_ACCOUNT}", None))


def b_freeze(ctx, caller):
    a = ctx.account()
    after = changes_only_on_success(ctx, a, 200)
    return Req("POST", f"/v1/accounts/{a}/freeze", key=True, after=after,
               missing=(f"/v1/accounts/{MISSING_ACCOUNT}/freeze", None))


def b_unfreeze(ctx, caller):
    a = ctx.account()
    r = ctx.admin.post(f"/v1/accounts/{a}/freeze")
    assert r.status == 200, r.describe()
    after = changes_only_on_success(ctx, a, 200)
    return Req("POST", f"/v1/accounts/{a}/unfreeze", key=True, after=after,
               missing=(f"/v1/accounts/{MISSING_ACCOUNT}/unfreeze", None))


def b_history(ctx, caller):
    a = ctx.account(funded=True)

    def after(ck, label, caller, resp):
        if resp.status == 200:
            ck.eq(f"{label}: one entry", len(resp.json["data"]), 1)
    return Req("GET", f"/v1/accounts/{a}/transfers", after=after,
               missing=(f"/v1/accounts/{MISSING_ACCOUNT}/transfers", None))


def transfer_body(debit, credit):
    return {"debit_account_id": debit, "credit_account_id": credit, "amount": "2.00"}


def b_transfer_create(ctx, caller):
    a = ctx.account(funded=True)
    return Req("POST", "/v1/transfers", transfer_body(a, ctx.house), key=True,
               after=changes_only_on_success(ctx, a, 201),
               missing=("/v1/transfers", transfer_body(MISSING_ACCOUNT, ctx.house)))


def b_transfer_search(ctx, caller):
    a = ctx.account(funded=True)
    r = ctx.admin.transfer(a, ctx.house, "1.00")
    assert r.status == 201, r.describe()
    tid = r.json["id"]

    def after(ck, label, caller, resp):
        if resp.status == 200:
            ids = [t["id"] for t in resp.json["data"]]
            if caller.name == "other":
                ck.eq(f"{label}: another customer's transfers are not listed", ids, [])
            else:
                ck.check(f"{label}: the transfer is listed", tid in ids, str(ids))
    return Req("GET", f"/v1/transfers?account_id={a}", after=after)


def b_receipt(ctx, caller):
    a = ctx.account(funded=True)
    r = ctx.admin.transfer(a, ctx.house, "1.00")
    assert r.status == 201, r.describe()

    def after(ck, label, caller, resp):
        if resp.status == 200:
            ck.check(f"{label}: an HTML receipt with the id",
                     resp.headers.get("content-type", "").startswith("text/html") and r.json["id"].encode() in resp.body)
    return Req("GET", f"/v1/transfers/{r.json['id']}/receipt", after=after,
               missing=(f"/v1/transfers/{MISSING_TRANSFER}/receipt", None))


def b_rules_get(ctx, caller):
    return Req("GET", "/v1/rules")


def b_rules_reload(ctx, caller):
    return Req("POST", "/v1/rules/reload", {})


def b_suspicious_list(ctx, caller):
    return Req("GET", "/v1/suspicious")


def b_review(ctx, caller):
    # The built-in rule flags 10,000.00 and more: a deposit that size makes an open entry.
    a = ctx.account()
    r = ctx.admin.deposit(a, "10000.00")
    assert r.status == 201 and r.json.get("flags") == ["suspicious"], r.describe()
    page = ctx.admin.get("/v1/suspicious?limit=1")
    entry = page.json["data"][0]
    assert entry["transfer_id"] == r.json["id"], page.describe()

    def after(ck, label, caller, resp):
        status = next((e["status"] for e in ctx.admin.get("/v1/suspicious?limit=1000").json["data"]
                       if e["id"] == entry["id"]), None)
        ck.eq(f"{label}: the entry is reviewed iff the request succeeded", status,
              "cleared" if resp.status == 200 else "open")
    return Req("POST", f"/v1/suspicious/{entry['id']}/review", {"decision": "clear"}, key=True, after=after,
               missing=(f"/v1/suspicious/{MISSING_ACCOUNT}/review", None))


def b_settlements(ctx, caller):
    return Req("GET", "/v1/settlements")


def b_settlements_csv(ctx, caller):
    def after(ck, label, caller, resp):
        if resp.status == 200:
            ck.check(f"{label}: CSV with its header",
                     resp.body.startswith(b"date,region,currency,count,volume,deposits,withdrawals\r\n"))
    return Req("GET", "/v1/reports/settlements.csv?from=2000-01-01&to=2000-12-31", after=after)


def b_batch(ctx, caller):
    a = ctx.account(funded=True)
    inner = changes_only_on_success(ctx, a, 200)

    def after(ck, label, caller, resp):
        if resp.status == 200:
            item = resp.json["results"][0]
            if caller.name == "other":
                ck.eq(f"{label}: the item is refused as account_not_found",
                      (item.get("status"), (item.get("error") or {}).get("code")), ("error", ACC))
                ck.eq(f"{label}: nothing moved", ctx.snapshot(a), before)
            else:
                ck.eq(f"{label}: the item is posted", item.get("status"), "posted")
        else:
            inner(ck, label, caller, resp)
    before = ctx.snapshot(a)
    return Req("POST", "/v1/transfers/batch", {"transfers": [transfer_body(a, ctx.house)]}, key=True, after=after)


def b_transfer_get(ctx, caller):
    a = ctx.account(funded=True)
    r = ctx.admin.transfer(a, ctx.house, "1.00")
    assert r.status == 201, r.describe()
    return Req("GET", f"/v1/transfers/{r.json['id']}", missing=(f"/v1/transfers/{MISSING_TRANSFER}", None))


def b_transfer_post(ctx, caller):
    a, tid = ctx.pending()
    return Req("POST", f"/v1/transfers/{tid}/post", key=True, after=changes_only_on_success(ctx, a, 200),
               missing=(f"/v1/transfers/{MISSING_TRANSFER}/post", None))


def b_transfer_void(ctx, caller):
    a, tid = ctx.pending()
    return Req("POST", f"/v1/transfers/{tid}/void", key=True, after=changes_only_on_success(ctx, a, 200),
               missing=(f"/v1/transfers/{MISSING_TRANSFER}/void", None))


def b_deposit(ctx, caller):
    a = ctx.account()
    return Req("POST", "/v1/deposits", {"account_id": a, "amount": "3.00"}, key=True,
               after=changes_only_on_success(ctx, a, 201),
               missing=("/v1/deposits", {"account_id": MISSING_ACCOUNT, "amount": "3.00"}))


def b_withdrawal(ctx, caller):
    a = ctx.account(funded=True)
    return Req("POST", "/v1/withdrawals", {"account_id": a, "amount": "3.00"}, key=True,
               after=changes_only_on_success(ctx, a, 201),
               missing=("/v1/withdrawals", {"account_id": MISSING_ACCOUNT, "amount": "3.00"}))


def b_users_create(ctx, caller):
    def after(ck, label, caller, resp):
        if resp.status == 201:
            ck.eq(f"{label}: a sign-up is a customer", resp.json.get("role"), "customer")
    return Req("POST", "/v1/users", {"username": uniq("signup"), "password": new_password()}, after=after)


def b_user_role(ctx, caller):
    r = create_user(ctx.admin, uniq("role-target"), new_password())
    assert r.status == 201, r.describe()
    uid = r.json["id"]

    def after(ck, label, caller, resp):
        if resp.status == 200:
            ck.eq(f"{label}: the new role", resp.json.get("role"), "auditor")
    return Req("POST", f"/v1/users/{uid}/role", {"role": "auditor"}, after=after,
               missing=(f"/v1/users/{MISSING_ACCOUNT}/role", {"role": "auditor"}))


def b_sessions_create(ctx, caller):
    def after(ck, label, caller, resp):
        if resp.status == 201:
            tok = resp.json.get("token")
            me = Client(ctx.srv.host, ctx.srv.port, token=tok).get("/v1/me")
            ck.eq(f"{label}: the new session is the signed-in user (not the caller)",
                  (me.status, (me.json or {}).get("username")), (200, ctx.signin_user))
    return Req("POST", "/v1/sessions", {"username": ctx.signin_user, "password": ctx.signin_pw}, after=after)


def b_session_delete(ctx, caller):
    token = Ellipsis
    if caller.kind == "session":
        r = sign_in(ctx.srv.anon_client(), caller.username, caller.password)
        assert r.status == 201, r.describe()
        token = r.json["token"]

    def after(ck, label, caller, resp):
        if caller.kind == "anon":
            return
        used = caller.token if token is Ellipsis else token
        me = Client(ctx.srv.host, ctx.srv.port, token=used).get("/v1/me")
        if resp.status == 204:
            ck.status(f"{label}: the signed-out token is refused", me, 401, "unauthorized")
        else:
            ck.status(f"{label}: the credential still works", me, 200)
        if token is not Ellipsis:
            me = Client(ctx.srv.host, ctx.srv.port, token=caller.token).get("/v1/me")
            ck.status(f"{label}: the caller's other session still works", me, 200)
    return Req("DELETE", "/v1/sessions/current", token=token, after=after)


def b_me(ctx, caller):
    def after(ck, label, caller, resp):
        if resp.status == 200:
            ck.eq(f"{label}: the role", resp.json.get("role"), caller.role)
            if caller.kind == "key":
                ck.eq(f"{label}: an API key", resp.json.get("kind"), "api_key")
            else:
                ck.eq(f"{label}: the user", resp.json.get("id"), caller.user_id)
    return Req("GET", "/v1/me", after=after)


def b_key_create(ctx, caller):
    def after(ck, label, caller, resp):
        if resp.status == 201:
            me = Client(ctx.srv.host, ctx.srv.port, token=resp.json.get("key")).get("/v1/me")
            ck.eq(f"{label}: the new key works with its role", (me.status, (me.json or {}).get("role")),
                  (200, "auditor"))
    return Req("POST", "/v1/api-keys", {"name": uniq("key"), "role": "auditor"}, after=after)


def b_key_delete(ctx, caller):
    kid, key = make_key(ctx.admin, "auditor")

    def after(ck, label, caller, resp):
        me = Client(ctx.srv.host, ctx.srv.port, token=key).get("/v1/me")
        if resp.status == 204:
            ck.status(f"{label}: the revoked key is refused", me, 401, "unauthorized")
        else:
            ck.status(f"{label}: the key still works", me, 200)
    return Req("DELETE", f"/v1/api-keys/{kid}", after=after, missing=(f"/v1/api-keys/{MISSING_ACCOUNT}", None))


def b_audit(ctx, caller):
    def after(ck, label, caller, resp):
        if resp.status == 200:
            ck.check(f"{label}: a page of events", isinstance(resp.json.get("data"), list) and resp.json["data"])
    return Req("GET", "/v1/audit", after=after)


def acct12(n):
    return f"{n:012d}"


def b_c_signup(ctx, caller):
    return Req("POST", "/api/signup/", {"name": "N", "email": uniq("signup") + "@example.com",
                                        "password": new_password()})


def b_c_signin(ctx, caller):
    return Req("POST", "/api/signin/", {"email": ctx.compat_email, "password": ctx.signin_pw})


def b_c_account_gen(method):
    def b(ctx, caller):
        return Req(method, "/api/accountGeneration/")
    return b


def b_c_microfin_money(path, kind):
    def b(ctx, caller):
        a = ctx.account(funded=kind != "deposit")
        if kind == "transfer":
            body = {"senderAccountNumber": acct12(a), "receiverAccountNumber": acct12(ctx.house), "amount": 2}
            miss = dict(body, senderAccountNumber=acct12(COMPAT_MISSING))
        else:
            body = {"accountNumber": acct12(a), "amount": 3}
            miss = dict(body, accountNumber=acct12(COMPAT_MISSING))
        return Req("POST", path, body, after=changes_only_on_success(ctx, a, 200), missing=(path, miss))
    return b


def b_c_user_get(ctx, caller):
    a = ctx.account()
    return Req("GET", f"/api/users/{a}", missing=(f"/api/users/{MISSING_ACCOUNT}", None))


def b_c_user_balance(ctx, caller):
    a = ctx.account()
    return Req("PUT", f"/api/users/{a}/balance", {"amount": 3}, after=changes_only_on_success(ctx, a, 200),
               missing=(f"/api/users/{MISSING_ACCOUNT}/balance", None))


def b_c_flask_txn(path):
    def b(ctx, caller):
        a = ctx.account(funded=True)
        return Req("POST", path, {"from": a, "to": ctx.house, "amount": 2}, after=changes_only_on_success(ctx, a, 200),
                   missing=(path, {"from": MISSING_ACCOUNT, "to": ctx.house, "amount": 2}))
    return b


def b_c_balance(ctx, caller):
    a = ctx.account()
    return Req("GET", f"/balance/{a}", missing=(f"/balance/{MISSING_ACCOUNT}", None))


def b_c_transactions(ctx, caller):
    a = ctx.account(funded=True)
    return Req("GET", f"/transactions?account_id={a}", missing=(f"/transactions?account_id={MISSING_ACCOUNT}", None))


def b_c_suspicious(ctx, caller):
    return Req("GET", "/suspicious")


BUILDERS = {
    "GET /healthz": b_healthz,
    "GET /readyz": b_readyz,
    "GET /metrics": b_metrics,
    "POST /v1/accounts": b_accounts_create,
    "GET /v1/accounts": b_accounts_list,
    "GET /v1/accounts/{id}": b_account_get,
    "POST /v1/accounts/{id}/freeze": b_freeze,
    "POST /v1/accounts/{id}/unfreeze": b_unfreeze,
    "GET /v1/accounts/{id}/transfers": b_history,
    "POST /v1/transfers": b_transfer_create,
    "GET /v1/transfers": b_transfer_search,
    "POST /v1/transfers/batch": b_batch,
    "GET /v1/transfers/{id}": b_transfer_get,
    "POST /v1/transfers/{id}/post": b_transfer_post,
    "POST /v1/transfers/{id}/void": b_transfer_void,
    "POST /v1/deposits": b_deposit,
    "POST /v1/withdrawals": b_withdrawal,
    "POST /v1/users": b_users_create,
    "POST /v1/users/{id}/role": b_user_role,
    "POST /v1/sessions": b_sessions_create,
    "DELETE /v1/sessions/current": b_session_delete,
    "GET /v1/me": b_me,
    "POST /v1/api-keys": b_key_create,
    "DELETE /v1/api-keys/{id}": b_key_delete,
    "GET /v1/audit": b_audit,
    "GET /v1/transfers/{id}/receipt": b_receipt,
    "GET /v1/rules": b_rules_get,
    "POST /v1/rules/reload": b_rules_reload,
    "GET /v1/suspicious": b_suspicious_list,
    "POST /v1/suspicious/{id}/review": b_review,
    "GET /v1/settlements": b_settlements,
    "GET /v1/reports/settlements.csv": b_settlements_csv,
    "POST /api/signup/": b_c_signup,
    "POST /api/signin/": b_c_signin,
    "GET /api/accountGeneration/": b_c_account_gen("GET"),
    "POST /api/accountGeneration/": b_c_account_gen("POST"),
    "POST /api/deposit/": b_c_microfin_money("/api/deposit/", "deposit"),
    "POST /api/withdraw/": b_c_microfin_money("/api/withdraw/", "withdraw"),
    "POST /api/transfer/": b_c_microfin_money("/api/transfer/", "transfer"),
    "GET /api/users/{id}": b_c_user_get,
    "PUT /api/users/{id}/balance": b_c_user_balance,
    "POST /process_transaction": b_c_flask_txn("/process_transaction"),
    "POST /transaction": b_c_flask_txn("/transaction"),
    "GET /balance/{id}": b_c_balance,
    "GET /transactions": b_c_transactions,
    "GET /suspicious": b_c_suspicious,
}


def list_routes():
    p = subprocess.run([os.path.join(bin_dir(), "ledgerd"), "--compat", "--list-routes"], capture_output=True,
                       timeout=60)
    routes = {}
    for line in p.stdout.decode().splitlines():
        parts = line.split()
        if len(parts) == 3:
            routes[f"{parts[0]} {parts[1]}"] = parts[2]
    return p.returncode, routes


def expected_for(cell, caller):
    if isinstance(cell, dict):
        cell = cell["key" if caller.kind == "key" else "session"]
    return cell if isinstance(cell, tuple) else (cell, None)


def send(ctx, caller, req, path=None, body=Ellipsis, key=Ellipsis):
    token = caller.token if req.token is Ellipsis else req.token
    c = Client(ctx.srv.host, ctx.srv.port, token=token)
    try:
        return c.request(req.method, path or req.path, body=req.body if body is Ellipsis else body,
                         key=req.key if key is Ellipsis else key)
    finally:
        c.close()


def main(ck):
    rc, listed = list_routes()
    ck.eq("ledgerd --list-routes exits 0", rc, 0)
    ck.check("ledgerd --list-routes prints routes", len(listed) > 0)
    ck.eq("every listed route has a row in the matrix", sorted(set(listed) - set(EXPECT)), [])
    ck.eq("every row of the matrix is a listed route", sorted(set(EXPECT) - set(listed)), [])
    ck.eq("every row has a request builder", sorted(set(EXPECT) - set(BUILDERS)), [])
    for route, kind in listed.items():
        if route in EXPECT:
            anon = expected_for(EXPECT[route]["anon"], Principal("anon", None, "anon"))[0]
            ck.check(f"{route}: listed as {kind}, anonymous gets {anon}", (kind == "open") == (anon != 401))

    srv = Server(extra_args=["--compat"] + FAST_ARGON2 + RAISED_SIGNIN)
    srv.start()
    admin = srv.client()
    ctx = Ctx(srv, admin)

    anon = Principal("anon", None, "anon")
    owner = make_user(srv, admin, "owner")
    other = make_user(srv, admin, "other")
    aud_user = make_user(srv, admin, "auditor")
    r = admin.post(f"/v1/users/{aud_user.user_id}/role", {"role": "auditor"})
    ck.status("setup: a customer's role set to auditor", r, 200)
    _, aud_key = make_key(admin, "auditor")
    adm_user = make_user(srv, admin, "admin", role="admin")
    admin_key = Principal("admin", srv.admin_token, "key")
    for p, role in ((anon, None), (owner, "customer"), (other, "customer"), (aud_user, "auditor"),
                    (adm_user, "admin"), (admin_key, "admin")):
        p.role = role
    aud_key_p = Principal("auditor", aud_key, "key")
    aud_key_p.role = "auditor"
    owner.name, other.name, aud_user.name, adm_user.name = "owner", "other", "auditor", "admin"
    ctx.owner = owner
    callers = [("anon", anon), ("owner", owner), ("other", other), ("auditor", aud_user),
               ("auditor", aud_key_p), ("admin", admin_key), ("admin", adm_user)]

    for route in [r for r in EXPECT if r in BUILDERS]:
        with ck.section(route):
            for column, caller in callers:
                label = f"{route} as {column} ({caller.kind})"
                req = BUILDERS[route](ctx, caller)
                status, code = expected_for(EXPECT[route][column], caller)
                resp = send(ctx, caller, req)
                ck.status(label, resp, status, code)
                if status == 401:
                    if route not in COMPAT_EXPECT:  # compat routes answer in their system's shape
                        ck.eq(f"{label}: the one 401 body", resp.body, UNAUTHORIZED_BODY)
                    ck.eq(f"{label}: WWW-Authenticate", resp.headers.get("www-authenticate"), "Bearer")
                if status == 403 and route not in COMPAT_EXPECT:
                    ck.eq(f"{label}: code forbidden", resp.code, "forbidden")
                if req.after:
                    req.after(ck, label, caller, resp)
                if req.missing and status in (401, 403, 404):
                    path, body = req.missing
                    m = send(ctx, caller, req, path=path, body=body if body is not None else req.body,
                             key=idem_key() if req.key else None)
                    ck.eq(f"{label}: same answer as for a nonexistent object (no existence leak)",
                          (m.status, m.body), (resp.status, resp.body))

    with ck.section("idempotency keys are per caller: another customer's key replays nothing"):
        a = ctx.account(funded=True)
        k = idem_key()
        body = {"account_id": a, "amount": "4.00"}
        oc = Client(srv.host, srv.port, token=owner.token)
        r1 = oc.post("/v1/withdrawals", body, key=k)
        ck.status("owner withdraws with key K", r1, 201)
        r2 = Client(srv.host, srv.port, token=other.token).post("/v1/withdrawals", body, key=k)
        ck.status("other customer, same key and body: not a replay of the owner's withdrawal", r2, 404, ACC)
        ck.check("no Idempotent-Replayed header for the other customer", "idempotent-replayed" not in r2.headers)
        r3 = oc.post("/v1/withdrawals", body, key=k)
        ck.eq("owner's repeat replays", (r3.status, r3.json.get("id") if r3.json else None),
              (201, r1.json.get("id") if r1.json else None))
        ck.eq("one withdrawal landed", ctx.snapshot(a)[0], "96.00")

    with ck.section("payee visibility"):
        payee = Client(srv.host, srv.port, token=other.token)
        theirs = payee.new_account("USD")
        src = ctx.account(funded=True)
        oc = Client(srv.host, srv.port, token=owner.token)
        r = oc.transfer(src, theirs, "5.00", pending=True)
        ck.status("owner pays another customer's account (pending)", r, 201)
        tid = r.json["id"] if r.json else MISSING_TRANSFER
        ck.status("the payee sees the transfer that credits it", payee.get(f"/v1/transfers/{tid}"), 200)
        ck.status("the payee cannot void the payer's pending transfer", payee.post(f"/v1/transfers/{tid}/void"),
                  404, TRN)
        ck.status("the payee cannot post it either", payee.post(f"/v1/transfers/{tid}/post"), 404, TRN)
        ck.status("the payer may void it", oc.post(f"/v1/transfers/{tid}/void"), 200)

    with ck.section("users with a role: admin only"):
        for column, caller in callers:
            if caller.kind == "session" and column == "admin":
                continue
            r = Client(srv.host, srv.port, token=caller.token).post(
                "/v1/users", {"username": uniq("withrole"), "password": new_password(), "role": "admin"})
            want = 201 if column == "admin" else 403
            ck.status(f"POST /v1/users role=admin as {column} ({caller.kind})", r, want)
        r = admin.post("/v1/api-keys", {"name": uniq("cust"), "role": "customer"})
        ck.status("an API key with role customer is refused", r, 400, "invalid_request")

    for c in (admin,):
        c.close()
    final_server_checks(ck, srv)
    srv.cleanup()


if __name__ == "__main__":
    run_main(main)
