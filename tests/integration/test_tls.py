#!/usr/bin/env python3
"""TLS listener (--tls-listen, --tls-cert, --tls-key, --tls-client-ca): a throw-away CA and
certificates made with the openssl CLI; then, over the TLS port: GET /healthz and POST
/v1/accounts answer well-formed JSON; keep-alive, pipelining and a body of many TLS records
work; TLS 1.2 and 1.3 work while TLS 1.0/1.1 are refused by the server (protocol_version
alert); plain HTTP, garbage and a silent client are closed without an answer (the silent one
within the header timeout) and the server stays up, the plain port unaffected. A second
server with --tls-client-ca refuses a client without a certificate or with one from another
CA, and serves one whose certificate its CA signed. Both stop with exit 0 on SIGTERM and print
no sanitizer report."""

import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import warnings

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import Server, bin_dir, final_server_checks, log, run_main  # noqa: E402

HOST = "127.0.0.1"
HEADER_TIMEOUT_S = 10  # NET_HEADER_TIMEOUT_MS in src/base/limits.h
CLOSE_SLACK_S = 5      # sweep interval, scheduling, sanitizer slowness


# ---------------------------------------------------------------- certificates

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
            "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_leaf(d, name, ca, subject, ext):
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" + ext + "\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d)


def make_pki(d):
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_leaf(d, "server", "ca", f"/CN={HOST}",
              f"subjectAltName=IP:{HOST}\nextendedKeyUsage=serverAuth")
    make_leaf(d, "client", "ca", "/O=ledger-test/CN=client-1", "extendedKeyUsage=clientAuth")
    make_leaf(d, "stranger", "other-ca", "/CN=stranger", "extendedKeyUsage=clientAuth")
    return {k: os.path.join(d, k) for k in ("ca", "other-ca", "server", "client", "stranger")}


# ---------------------------------------------------------------- server with a TLS port

class TlsServer(Server):
    """The harness's Server with a TLS listener: start() also reads `listening on https://`
    into tls_port (the harness does that whenever --tls-listen is given)."""

    def __init__(self, tls_args, **kw):
        super().__init__(extra_args=tls_args, **kw)
        self.tls_port = None

    def auth_headers(self):
        token = getattr(self, "admin_token", None)
        return {"Authorization": f"Bearer {token}"} if token else {}


# ---------------------------------------------------------------- clients

def client_ctx(pki, cert=None, min_v=None, max_v=None):
    ctx = ssl.create_default_context(cafile=pki["ca"] + ".crt")
    if min_v is not None:
        ctx.minimum_version = min_v
    if max_v is not None:
        ctx.maximum_version = max_v
    if cert is not None:
        ctx.load_cert_chain(pki[cert] + ".crt", pki[cert] + ".key")
    return ctx


def https_request(port, ctx, method="GET", path="/healthz", body=None, timeout=10, headers=None):
    """Returns (status, json_or_None, tls_version, error_text_or_None)."""
    conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=timeout)
    try:
        headers = dict(headers or {})
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        version = conn.sock.version() if conn.sock is not None else None
        try:
            j = json.loads(data) if data else None
        except ValueError:
            j = None
        return r.status, j, version, None
    except (OSError, http.client.HTTPException) as e:
        return None, None, None, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def handshake_error(port, ctx, timeout=10):
    """Handshake only; returns the error text, or None if the handshake succeeded."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=HOST):
                return None
    except (OSError, ssl.SSLError) as e:
        return f"{type(e).__name__}: {e}"


def raw_exchange(port, payload, timeout=10):
    """Sends bytes on a plain TCP socket; returns (bytes received until close, closed?)."""
    got = b""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            s.sendall(payload)
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return got, True
                got += chunk
        except ConnectionResetError:
            return got, True
        except socket.timeout:
            return got, False


def well_formed(j):
    return isinstance(j, dict) and (isinstance(j.get("error"), dict) or "id" in j)


# ---------------------------------------------------------------- checks

def check_basic(ck, srv, pki):
    ctx = client_ctx(pki)
    st, j, ver, err = https_request(srv.tls_port, ctx)
    ck.eq("HTTPS GET /healthz -> 200", (st, err), (200, None))
    ck.check("HTTPS /healthz answers JSON", isinstance(j, dict), f"{j!r}")
    st, j, _, err = https_request(srv.tls_port, ctx, "POST", "/v1/accounts",
                                  json.dumps({"currency": "USD"}))
    ck.check("HTTPS POST /v1/accounts, no credential -> 201 or 401", st in (201, 401), f"{st} {err}")
    ck.check("HTTPS POST /v1/accounts answers well-formed JSON", well_formed(j), f"{j!r}")
    # With the bootstrap admin's credential (when auth is on) the API really works over TLS.
    st, j, _, err = https_request(srv.tls_port, ctx, "POST", "/v1/accounts",
                                  json.dumps({"currency": "USD"}), headers=srv.auth_headers())
    ck.check("HTTPS POST /v1/accounts as admin -> 201 with an id", st == 201 and well_formed(j) and
             "id" in j, f"{st} {j!r} {err}")
    st, j, _, err = https_request(srv.tls_port, ctx, "GET", "/no/such/route")
    ck.check("HTTPS unknown route -> 4xx JSON", st is not None and 400 <= st < 500 and
             isinstance(j, dict), f"{st} {j!r} {err}")
    # A body of many TLS records (16 KiB each): the record-at-a-time read path.
    big = json.dumps({"currency": "USD", "pad": "x" * (200 * 1024)})
    st, j, _, err = https_request(srv.tls_port, ctx, "POST", "/v1/accounts", big)
    ck.check("HTTPS 200 KiB body answered with a JSON status", st is not None and
             isinstance(j, dict), f"{st} {err}")
    # Keep-alive: many requests on one TLS connection.
    conn = http.client.HTTPSConnection(HOST, srv.tls_port, context=ctx, timeout=10)
    statuses = []
    try:
        for _ in range(50):
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            r.read()
            statuses.append(r.status)
    except (OSError, http.client.HTTPException) as e:
        statuses.append(f"{type(e).__name__}: {e}")
    conn.close()
    ck.eq("50 keep-alive requests on one TLS connection", statuses, [200] * 50)
    # Pipelining: two requests in one write, two answers in order.
    with socket.create_connection((HOST, srv.tls_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOST) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /no/such HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except (OSError, ssl.SSLError):
                pass
    codes = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    ck.check("two pipelined requests over TLS: 200 then 4xx", len(codes) == 2 and
             codes[0] == b"200" and codes[1].startswith(b"4"), f"{data[:300]!r}")
    # Concurrent TLS clients (several net threads, handshakes racing).
    results = []
    lock = threading.Lock()

    def worker():
        mine = [https_request(srv.tls_port, ctx)[0] for _ in range(10)]
        with lock:
            results.extend(mine)

    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    ck.eq("8 concurrent TLS clients x 10 requests all 200", results, [200] * 80)


def check_versions(ck, srv, pki):
    for name, v in (("TLS 1.2", ssl.TLSVersion.TLSv1_2), ("TLS 1.3", ssl.TLSVersion.TLSv1_3)):
        st, _, ver, err = https_request(srv.tls_port, client_ctx(pki, min_v=v, max_v=v))
        ck.eq(f"{name} works", (st, ver, err), (200, name.replace(" ", "v"), None))
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(pki["ca"] + ".crt")
    with warnings.catch_warnings():  # deprecated on purpose: this is the point of the check
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    err = handshake_error(srv.tls_port, old)
    # The server's protocol_version alert, not the client refusing to try: the check can fail.
    ck.check("TLS 1.0/1.1 refused by the server (protocol version alert)",
             err is not None and "PROTOCOL_VERSION" in err.upper().replace(" ", "_"), f"{err}")


def check_garbage(ck, srv, pki):
    got, closed = raw_exchange(srv.tls_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    ck.check("plain HTTP to the TLS port: closed, no HTTP answer",
             closed and not got.startswith(b"HTTP/"), f"closed={closed} got={got[:100]!r}")
    got, closed = raw_exchange(srv.tls_port, bytes(range(256)) * 4)
    ck.check("garbage to the TLS port: closed", closed and not got.startswith(b"HTTP/"),
             f"closed={closed} got={got[:100]!r}")
    # A truncated ClientHello (record header says more than is sent), then the client leaves.
    with socket.create_connection((HOST, srv.tls_port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    st, _, _, err = https_request(srv.tls_port, client_ctx(pki))
    ck.eq("TLS port still serves after bad clients", (st, err), (200, None))
    c = srv.client(timeout=10)
    r = c.get("/healthz")
    c.close()
    ck.eq("plain port unaffected", r.status, 200)


def check_mtls(ck, pki, scratch):
    args = ["--tls-listen", f"{HOST}:0", "--tls-cert", pki["server"] + ".crt",
            "--tls-key", pki["server"] + ".key", "--tls-client-ca", pki["ca"] + ".crt"]
    srv = TlsServer(args, scratch=os.path.join(scratch, "mtls"))
    try:
        srv.start()
        for ver in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            tag = "TLS 1.2" if ver == ssl.TLSVersion.TLSv1_2 else "TLS 1.3"
            # TLS 1.3 finishes the client's handshake before the server checks its
            # certificate: the refusal may show on the first read instead. Either way no answer.
            st, _, _, err = https_request(srv.tls_port, client_ctx(pki, min_v=ver, max_v=ver))
            ck.check(f"mTLS {tag}: no client certificate -> refused", st is None, f"status {st}")
            st, _, _, err = https_request(srv.tls_port,
                                          client_ctx(pki, "stranger", min_v=ver, max_v=ver))
            ck.check(f"mTLS {tag}: certificate from another CA -> refused", st is None,
                     f"status {st}")
            st, j, _, err = https_request(srv.tls_port,
                                          client_ctx(pki, "client", min_v=ver, max_v=ver))
            ck.eq(f"mTLS {tag}: certificate signed by the CA -> 200", (st, err), (200, None))
        c = srv.client(timeout=10)
        r = c.get("/healthz")
        c.close()
        ck.eq("mTLS server: plain port needs no certificate", r.status, 200)
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()


def check_bad_config(ck, pki, scratch):
    """Bad TLS options exit 2 before anything starts; unreadable files exit 1 with a reason."""
    exe = os.path.join(bin_dir(), "ledgerd")
    data = os.path.join(scratch, "bad-data")
    base = [exe, "--listen", f"{HOST}:0", "--data-dir", data]
    cases = [
        ("--tls-listen without cert/key exits 2", ["--tls-listen", f"{HOST}:0"], 2),
        ("--tls-cert without --tls-listen exits 2", ["--tls-cert", pki["server"] + ".crt"], 2),
        ("--no-auth with a non-loopback --tls-listen exits 2",
         ["--no-auth", "--tls-listen", "0.0.0.0:0", "--tls-cert", pki["server"] + ".crt",
          "--tls-key", pki["server"] + ".key"], 2),
        ("missing cert file exits 1", ["--tls-listen", f"{HOST}:0", "--tls-cert",
                                       os.path.join(scratch, "nope.crt"), "--tls-key",
                                       pki["server"] + ".key"], 1),
        ("key not matching the cert exits 1", ["--tls-listen", f"{HOST}:0", "--tls-cert",
                                               pki["server"] + ".crt", "--tls-key",
                                               pki["client"] + ".key"], 1),
    ]
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
    for name, extra, want in cases:
        p = subprocess.run(base + extra, capture_output=True, timeout=60, env=env,
                           stdin=subprocess.DEVNULL)
        err = p.stderr.decode(errors="replace")
        ck.check(name, p.returncode == want and "ledgerd:" in err and "Sanitizer" not in err,
                 f"exit {p.returncode}, stderr {err[-400:]!r}")
        ck.check(f"{name}: no listening line", b"listening on" not in p.stdout, f"{p.stdout!r}")


def main(ck):
    scratch = tempfile.mkdtemp(prefix="ledger-tls-")
    pki = make_pki(scratch)
    log(f"# certificates in {scratch}")
    args = ["--tls-listen", f"{HOST}:0", "--tls-cert", pki["server"] + ".crt",
            "--tls-key", pki["server"] + ".key"]
    srv = TlsServer(args, scratch=os.path.join(scratch, "tls"))
    os.makedirs(srv.scratch, exist_ok=True)
    try:
        srv.start()
        ck.check("https port differs from http port", srv.tls_port not in (None, srv.port))
        # A client that connects and never says anything: closed within the header timeout.
        silent = socket.create_connection((HOST, srv.tls_port), timeout=HEADER_TIMEOUT_S +
                                          CLOSE_SLACK_S)
        t0 = time.monotonic()
        with ck.section("basic"):
            check_basic(ck, srv, pki)
        with ck.section("versions"):
            check_versions(ck, srv, pki)
        with ck.section("garbage"):
            check_garbage(ck, srv, pki)
        with ck.section("silent client"):
            try:
                silent.settimeout(max(0.1, HEADER_TIMEOUT_S + CLOSE_SLACK_S - (time.monotonic() - t0)))
                closed = silent.recv(1) == b""
            except ConnectionResetError:
                closed = True
            except socket.timeout:
                closed = False
            dt = time.monotonic() - t0
            silent.close()
            ck.check("silent client closed within the header timeout", closed, f"after {dt:.1f}s")
        final_server_checks(ck, srv)
    finally:
        srv.cleanup()
    with ck.section("mtls"):
        check_mtls(ck, pki, scratch)
    with ck.section("bad config"):
        check_bad_config(ck, pki, scratch)
    subprocess.run(["rm", "-rf", scratch], check=False)


if __name__ == "__main__":
    run_main(main)
