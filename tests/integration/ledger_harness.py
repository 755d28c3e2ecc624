"""Shared code for ledgerd's integration tests (Python 3.11 stdlib only).

Every test_*.py starts its own server(s) through this module:
  - Server: starts `$LEDGER_BIN/ledgerd --listen 127.0.0.1:0 --data-dir DIR`, waits for the
    `listening on http://HOST:PORT` line (30 s), stops it with SIGTERM (exit 0 within 10 s) or
    SIGKILL, and scans its stderr for sanitizer reports.
  - Client: a small keep-alive HTTP/1.1 client returning Resp(status, headers, body, json).
  - Checks: one printed line per check, a final "N passed, M failed", exit status.
  - money helpers (decimal strings <-> integer minor units), ledgerctl verify.
Nothing here retries a request silently: a test must see exactly what the server answered.
"""

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from decimal import Decimal

CURRENCIES = ["USD", "EUR", "GBP", "JPY", "BHD", "CHF", "CAD", "AUD", "KWD", "CNY"]
EXPONENT = {"USD": 2, "EUR": 2, "GBP": 2, "JPY": 0, "BHD": 3, "CHF": 2, "CAD": 2, "AUD": 2,
            "KWD": 3, "CNY": 2}
# docs/api.md: the system account cash:<CUR> has id 1..10 in the order of CURRENCIES.
CASH_ID = {c: i + 1 for i, c in enumerate(CURRENCIES)}

INT64_MAX = 2**63 - 1
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
UUID7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "ERROR: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


def log(msg):
    print(msg, flush=True)


def bin_dir():
    d = os.environ.get("LEDGER_BIN")
    if not d:
        here = os.path.dirname(os.path.abspath(__file__))
        d = os.path.join(here, "..", "..", "build", "bin")
    return os.path.abspath(d)


def seed_from_env(default=None):
    s = os.environ.get("LEDGER_TEST_SEED")
    if s is None:
        s = default if default is not None else random.randrange(1, 2**31)
    s = int(s)
    log(f"# seed {s} (set LEDGER_TEST_SEED to reproduce)")
    return s


# ---------------------------------------------------------------- money

def to_minor(text, currency):
    """'10.50' -> 1050 for USD. Exact (Decimal), raises on more digits than the exponent."""
    e = EXPONENT[currency]
    d = Decimal(text) * (Decimal(10) ** e)
    if d != d.to_integral_value():
        raise ValueError(f"{text!r} has more than {e} fraction digits")
    return int(d)


def fmt(minor, currency):
    """1050 -> '10.50' (USD), 5 -> '5' (JPY), 1250 -> '1.250' (BHD)."""
    e = EXPONENT[currency]
    sign = "-" if minor < 0 else ""
    m = abs(minor)
    if e == 0:
        return f"{sign}{m}"
    return f"{sign}{m // 10**e}.{m % 10**e:0{e}d}"


def idem_key():
    return "k-" + uuid.uuid4().hex


# ---------------------------------------------------------------- checks

class Checks:
    """Counts checks; prints one line per check; finish() prints the total and exits."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0
        self.failures = []
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def check(self, name, cond, detail=""):
        with self.lock:
            if cond:
                self.passed += 1
                log(f"PASS {name}")
            else:
                self.failed += 1
                self.failures.append(name)
                log(f"FAIL {name}" + (f": {detail}" if detail else ""))
        return bool(cond)

    def eq(self, name, actual, expected, extra=""):
        ok = actual == expected
        detail = "" if ok else f"expected {expected!r}, got {actual!r}" + (f" {extra}" if extra else "")
        return self.check(name, ok, detail)

    def status(self, name, resp, status, code=None):
        """Checks the status (int or tuple of ints) and, if given, the error code."""
        statuses = status if isinstance(status, tuple) else (status,)
        ok = resp is not None and resp.status in statuses
        if ok and code is not None:
            ok = resp.code == code
        detail = ""
        if not ok:
            want = f"{status}" + (f" {code}" if code else "")
            detail = f"expected {want}, got {resp.describe() if resp is not None else None}"
        return self.check(name, ok, detail)

    def section(self, name):
        return _Section(self, name)

    def finish(self):
        dt = time.monotonic() - self.t0
        log(f"# {self.name}: {dt:.1f}s")
        if self.failures:
            log("# failed checks: " + "; ".join(self.failures[:50]))
        log(f"{self.passed} passed, {self.failed} failed")
        return 0 if self.failed == 0 and self.passed > 0 else 1


class _Section:
    def __init__(self, checks, name):
        self.checks, self.name = checks, name

    def __enter__(self):
        log(f"# --- {self.name}")
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            return False
        if et is KeyboardInterrupt:
            return False
        self.checks.check(f"{self.name}: no exception", False,
                          f"{et.__name__}: {ev}\n" + "".join(traceback.format_tb(tb)[-3:]))
        return True  # continue with the next section


# ---------------------------------------------------------------- HTTP client

class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # dict, lower-case names
        self.body = body
        self.json = None
        ctype = headers.get("content-type", "")
        if body and ("json" in ctype or body[:1] in (b"{", b"[")):
            try:
                self.json = json.loads(body)
            except ValueError:
                self.json = None

    @property
    def code(self):
        j = self.json
        if isinstance(j, dict) and isinstance(j.get("error"), dict):
            return j["error"].get("code")
        return None

    @property
    def message(self):
        j = self.json
        if isinstance(j, dict) and isinstance(j.get("error"), dict):
            return str(j["error"].get("message", ""))
        return ""

    def describe(self):
        b = self.body[:300]
        try:
            b = b.decode()
        except UnicodeDecodeError:
            pass
        return f"{self.status} {b!r}"

    def __getitem__(self, k):
        return self.json[k]


class Client:
    """One keep-alive connection. Not thread-safe: one Client per thread.
    Records every status it saw (seen_5xx) so a test can assert 'never a 500'."""

    def __init__(self, host, port, timeout=60, token=None):
        self.host, self.port, self.timeout = host, port, timeout
        self.token = token  # sent as "Authorization: Bearer <token>" unless a request sets its own
        self.conn = None
        self.seen_500 = []

    def _connect(self):
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def connect(self):
        """Opens the TCP connection now (so a test can hold many connections at once)."""
        if self.conn is None:
            self._connect()
        if self.conn.sock is None:
            self.conn.connect()

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method, path, body=None, headers=None, raw=None, key=None,
                content_type="application/json"):
        """body: a Python object sent as JSON; raw: bytes/str sent as-is. key: Idempotency-Key."""
        if self.conn is None:
            self._connect()
        h = {}
        data = None
        if raw is not None:
            data = raw.encode() if isinstance(raw, str) else raw
        elif body is not None:
            data = json.dumps(body).encode()
        if data is not None and content_type is not None:
            h["Content-Type"] = content_type
        if key is not None:
            h["Idempotency-Key"] = key
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        if headers:
            h.update(headers)
        try:
            self.conn.request(method, path, body=data, headers=h)
            r = self.conn.getresponse()
            payload = r.read()
        except Exception as e:
            self.close()
            raise ConnectionError(f"{type(e).__name__}: {e} during {method} {path} "
                                  f"{(data or b'')[:200]!r} key={key!r}") from e
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        if r.will_close:
            self.close()
        resp = Resp(r.status, hdrs, payload)
        if r.status == 500:
            self.seen_500.append(f"{method} {path} {data[:200] if data else b''!r} -> {resp.describe()}")
        return resp

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    # -- domain helpers: return the Resp; callers check the status
    def create_account(self, currency="USD", **fields):
        b = {"currency": currency}
        b.update(fields)
        return self.post("/v1/accounts", b)

    def new_account(self, currency="USD", **fields):
        """Creates an account and returns its id; raises if not 201."""
        r = self.create_account(currency, **fields)
        if r.status != 201:
            raise AssertionError(f"create account failed: {r.describe()}")
        return r.json["id"]

    def deposit(self, account_id, amount, key=None):
        return self.post("/v1/deposits", {"account_id": account_id, "amount": amount}, key=key)

    def withdraw(self, account_id, amount, key=None):
        return self.post("/v1/withdrawals", {"account_id": account_id, "amount": amount}, key=key)

    def transfer(self, debit, credit, amount, key=None, **fields):
        b = {"debit_account_id": debit, "credit_account_id": credit, "amount": amount}
        b.update(fields)
        return self.post("/v1/transfers", b, key=key)

    def account(self, account_id):
        r = self.get(f"/v1/accounts/{account_id}")
        if r.status != 200:
            raise AssertionError(f"GET account {account_id} failed: {r.describe()}")
        return r.json

    def balance(self, account_id):
        return self.account(account_id)["balance"]

    def paginate(self, path, limit=1000, max_pages=100000):
        """Follows next_cursor; returns (items, pages). Raises on a non-200 page."""
        items, pages = [], 0
        cursor = None
        sep = "&" if "?" in path else "?"
        while True:
            p = f"{path}{sep}limit={limit}"
            if cursor is not None:
                p += "&cursor=" + urlquote(cursor)
            r = self.get(p)
            if r.status != 200:
                raise AssertionError(f"GET {p} failed: {r.describe()}")
            items.extend(r.json["data"])
            pages += 1
            cursor = r.json.get("next_cursor")
            if cursor is None or pages >= max_pages:
                return items, pages

    def all_accounts(self):
        return self.paginate("/v1/accounts")[0]

    def sums_by_currency(self):
        """Sum of all balances per currency, in minor units, over every account (list)."""
        sums = {}
        for a in self.all_accounts():
            c = a["currency"]
            sums[c] = sums.get(c, 0) + to_minor(a["balance"], c)
        return sums


def urlquote(s):
    from urllib.parse import quote
    return quote(s, safe="")


def raw_request(host, port, head, body, timeout=30):
    """Sends `head` (bytes, the request line + headers + CRLFCRLF) then `body` while reading the
    answer concurrently, so a server that answers 413 early and closes is still heard.
    Returns Resp or None if no complete status line came back."""
    s = socket.create_connection((host, port), timeout=timeout)
    received = bytearray()
    done = threading.Event()

    def reader():
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received.extend(chunk)
                if _complete_response(received):
                    break
        except OSError:
            pass
        done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        s.sendall(head)
        view = memoryview(body)
        off = 0
        while off < len(view) and not done.is_set():
            n = s.send(view[off:off + 65536])
            off += n
    except OSError:
        pass
    done.wait(timeout)
    try:
        s.close()
    except OSError:
        pass
    return _parse_response(bytes(received))


def _complete_response(buf):
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", bytes(buf[:i]))
    if not m:
        return False
    return len(buf) >= i + 4 + int(m.group(1))


def _parse_response(buf):
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return None
    lines = buf[:i].decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return None
    hdrs = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    body = buf[i + 4:]
    if "content-length" in hdrs:
        body = body[:int(hdrs["content-length"])]
    return Resp(status, hdrs, body)


# ---------------------------------------------------------------- server

class Server:
    """One ledgerd process on a data dir. start()/stop()/kill() can be repeated; every run's
    stderr goes to its own file in a scratch dir, scanned by sanitizer_reports()."""

    def __init__(self, data_dir=None, extra_args=(), scratch=None):
        self.scratch = scratch or tempfile.mkdtemp(prefix="ledger-itest-")
        self.own_scratch = scratch is None
        self.data_dir = data_dir or os.path.join(self.scratch, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.extra_args = list(extra_args)
        self.proc = None
        self.host = "127.0.0.1"
        self.port = None
        self.runs = 0
        self.stderr_files = []
        self._stdout_thread = None

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def start(self, timeout=30):
        if self.proc is not None:
            raise RuntimeError("already running")
        self.runs += 1
        errpath = os.path.join(self.scratch, f"stderr.{self.runs}.log")
        self.stderr_files.append(errpath)
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        cmd = [os.path.join(bin_dir(), "ledgerd"), "--listen", "127.0.0.1:0",
               "--data-dir", self.data_dir] + self.extra_args
        errf = open(errpath, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf,
                                     stdin=subprocess.DEVNULL, env=env)
        errf.close()
        line_box = []
        got = threading.Event()
        proc = self.proc
        # With --tls-listen, ledgerd prints a second line `listening on https://HOST:PORT`.
        want = ("listening on https://",) if "--tls-listen" in self.extra_args else ()

        def drain():
            # Reads the listening lines, then keeps draining stdout so the server never blocks.
            for raw in proc.stdout:
                if not got.is_set():
                    line_box.append(raw.decode(errors="replace").strip())
                    seen = "\n".join(line_box)
                    if "listening on http://" in seen and all(w in seen for w in want):
                        got.set()
            got.set()

        self._stdout_thread = threading.Thread(target=drain, daemon=True)
        self._stdout_thread.start()
        if (not got.wait(timeout) or not any("listening on http://" in l for l in line_box)
                or not all(any(w in l for l in line_box) for w in want)):
            rc = proc.poll()
            self.kill()
            raise RuntimeError(f"ledgerd did not print 'listening on' within {timeout}s "
                               f"(exit {rc}, stdout {line_box!r}, stderr {self.stderr_tail()!r})")
        line = [l for l in line_box if "listening on http://" in l][0]
        m = re.search(r"listening on http://([0-9.]+):(\d+)", line)
        if not m:
            self.kill()
            raise RuntimeError(f"cannot parse listening line {line!r}")
        self.host, self.port = m.group(1), int(m.group(2))
        self.tls_port = None
        for l in line_box:
            mt = re.search(r"listening on https://([0-9.]+):(\d+)", l)
            if mt:
                self.tls_port = int(mt.group(2))
        # A new ledger writes its first admin credential here (docs/security.md); tests act
        # as that admin unless they pass another token.
        keyfile = os.path.join(self.data_dir, "bootstrap-admin-key")
        if os.path.exists(keyfile):
            with open(keyfile) as f:
                self.admin_token = f.read().strip()
        return self

    def client(self, timeout=60):
        return Client(self.host, self.port, timeout=timeout, token=getattr(self, "admin_token", None))

    def anon_client(self, timeout=60):
        return Client(self.host, self.port, timeout=timeout, token=None)

    def wait_ready(self, timeout=30):
        """Polls /readyz until 200. Returns True when ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = self.client(timeout=5)
            try:
                if c.get("/readyz").status == 200:
                    return True
            except OSError:
                pass
            finally:
                c.close()
            time.sleep(0.1)
        return False

    def stop(self, timeout=10):
        """SIGTERM; returns the exit code, or None if it had to be killed after `timeout`."""
        if self.proc is None:
            return None
        p = self.proc
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            rc = None
        self._reap()
        return rc

    def kill(self):
        if self.proc is None:
            return
        p = self.proc
        try:
            p.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._reap()

    def _reap(self):
        p = self.proc
        self.proc = None
        if p is not None and p.stdout is not None:
            if self._stdout_thread is not None:
                self._stdout_thread.join(5)
            try:
                p.stdout.close()
            except OSError:
                pass

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self):
        out = []
        for f in self.stderr_files:
            try:
                with open(f, "rb") as fh:
                    out.append(fh.read().decode(errors="replace"))
            except OSError:
                pass
        return "\n".join(out)

    def stderr_tail(self, n=2000):
        return self.stderr_text()[-n:]

    def sanitizer_reports(self):
        text = self.stderr_text()
        hits = []
        for line in text.splitlines():
            if any(m in line for m in SANITIZER_MARKERS):
                hits.append(line.strip())
        return hits

    def verify(self, timeout=300):
        """Runs `ledgerctl --data-dir DIR verify`; returns (rc, stdout+stderr)."""
        return run_ledgerctl(["--data-dir", self.data_dir, "verify"], timeout=timeout)

    def cleanup(self):
        if self.proc is not None:
            self.kill()
        if self.own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def run_ledgerctl(args, timeout=300):
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
    try:
        p = subprocess.run([os.path.join(bin_dir(), "ledgerctl")] + list(args),
                           capture_output=True, timeout=timeout, env=env,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"ledgerctl timed out after {timeout}s"
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def final_server_checks(checks, server, stop=True):
    """The checks every test ends with: clean SIGTERM stop (exit 0), no sanitizer report,
    `ledgerctl verify` exit 0."""
    if stop:
        rc = server.stop(timeout=10)
        checks.eq("server exits 0 on SIGTERM within 10 s", rc, 0, server.stderr_tail(500))
    rc, out = server.verify()
    checks.eq("ledgerctl verify exits 0", rc, 0, out[-500:])
    reports = server.sanitizer_reports()
    checks.check("no sanitizer report in server stderr", not reports, "; ".join(reports[:5]))


def run_main(main):
    """Runs main(checks) and exits with the checks' status; an exception is one failure."""
    name = os.path.basename(sys.argv[0])
    checks = Checks(name)
    try:
        main(checks)
    except Exception as e:  # noqa: BLE001 - report and fail
        checks.check("test ran to completion", False, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
    sys.exit(checks.finish())
