"""Helpers shared by test_auth.py and test_authz_matrix.py (Python 3.11 stdlib only).

Users, sessions and API keys through the public API, a client bound to a chosen loopback
source address (127.0.0.0/8 is all loopback on Linux, so each address is a distinct client for
the per-address rate limits), and a raw request that sends an arbitrary Authorization value.
"""

import http.client
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import Client, Resp  # noqa: E402

# Cheap Argon2id for tests that create many users (docs/security.md: tests only).
FAST_ARGON2 = ["--argon2-memlimit-kib", "8192", "--argon2-opslimit", "1"]
# Sign-in limits raised so that setup is not throttled (only where the limits are not tested).
RAISED_SIGNIN = ["--rate-limit", "signin.addr=1000/1000", "--rate-limit", "signin.user=1000/1000"]

UNAUTHORIZED_BODY = b'{"error":{"code":"unauthorized","message":"missing or invalid credentials"}}'


def uniq(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def new_password():
    return "pw-" + uuid.uuid4().hex  # 35 chars, unique: easy to grep for


class SourceClient(Client):
    """A Client whose TCP connection comes from `source_ip` (e.g. 127.0.0.2)."""

    def __init__(self, host, port, source_ip, timeout=60, token=None):
        super().__init__(host, port, timeout=timeout, token=token)
        self.source_ip = source_ip

    def _connect(self):
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout,
                                               source_address=(self.source_ip, 0))


def create_user(client, username, password, role=None, email=None):
    """POST /v1/users through `client`; returns the Resp."""
    b = {"username": username, "password": password}
    if role is not None:
        b["role"] = role
    if email is not None:
        b["email"] = email
    return client.post("/v1/users", b)


def sign_in(client, username, password):
    return client.post("/v1/sessions", {"username": username, "password": password})


class Principal:
    """A caller: name, token (None = anonymous), kind ('anon' | 'session' | 'key'), user id."""

    def __init__(self, name, token, kind, user_id=None, password=None, username=None):
        self.name, self.token, self.kind = name, token, kind
        self.user_id, self.password, self.username = user_id, password, username

    def client(self, srv, token=Ellipsis):
        return Client(srv.host, srv.port, token=self.token if token is Ellipsis else token)


def make_user(srv, admin, name_prefix, role=None, secrets=None):
    """Creates a user (as admin when a role is given, else by sign-up), signs it in.
    Returns a Principal with a session token; records password and token in `secrets`."""
    username = uniq(name_prefix)
    password = new_password()
    creator = admin if role not in (None, "customer") else srv.anon_client()
    r = create_user(creator, username, password, role=role)
    if r.status != 201:
        raise AssertionError(f"create user {username} failed: {r.describe()}")
    uid = r.json["id"]
    r = sign_in(srv.anon_client(), username, password)
    if r.status != 201:
        raise AssertionError(f"sign in {username} failed: {r.describe()}")
    tok = r.json["token"]
    if secrets is not None:
        secrets.extend([password, tok])
    return Principal(name_prefix, tok, "session", user_id=uid, password=password, username=username)


def make_key(admin, role, secrets=None):
    r = admin.post("/v1/api-keys", {"name": uniq(f"{role}-key"), "role": role})
    if r.status != 201:
        raise AssertionError(f"create {role} API key failed: {r.describe()}")
    if secrets is not None:
        secrets.append(r.json["key"])
    return r.json["id"], r.json["key"]


def raw_auth_request(host, port, method, path, auth_value, timeout=30):
    """Sends one request with `auth_value` (bytes or str, sent byte-for-byte) as the
    Authorization header, or no header when None. Returns a harness Resp."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if auth_value is not None:
            conn.putheader("Authorization", auth_value if isinstance(auth_value, bytes) else auth_value.encode("latin-1"))
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        return Resp(r.status, hdrs, body)
    finally:
        conn.close()
