#!/usr/bin/env python3
"""ledger-bench, the load generator behind docs/performance.md, against ledgerd and against a
scripted peer:
  - it creates and funds accounts, then every single transfer, batch transfer and /healthz
    request it reports as done is one the server answered as expected, and the ledger agrees
    (the number of transfers, money conserved, `ledgerctl verify`);
  - a peer that answers and closes in the same segment (data + FIN) is reported at once as
    "closed by the server", not after the 30 s drain timeout: ledger-bench stops reading an
    edge-triggered socket after a read that left room in its buffer, unless the event said
    the peer hung up (cmd/ledger-bench.c, conn_on_readable), through io_uring batches and
    through plain calls (--no-io-uring);
  - a peer that answers with an unexpected status is counted and makes the exit status 1;
  - ledger-ceiling --open-loop (goal 2's floors): every scheduled request is committed, the
    percentiles are in order, the commit interval holds commits, bad arguments are refused,
    and its files are removed.
Bounded: a few thousand requests on 127.0.0.1, every run under a 20 s timeout."""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ledger_harness import SANITIZER_MARKERS, Server, bin_dir, final_server_checks, log, run_main, to_minor  # noqa: E402

RUN_TIMEOUT_S = 20


SANITIZER_REPORTS = []  # ledger-bench's own stderr, checked once at the end


def bench(args):
    """Runs ledger-bench; returns (exit status, the fields of its last stdout line, stderr, seconds)."""
    t0 = time.monotonic()
    p = subprocess.run([os.path.join(bin_dir(), "ledger-bench")] + args, capture_output=True,
                       text=True, timeout=RUN_TIMEOUT_S)
    SANITIZER_REPORTS.extend(l for l in p.stderr.splitlines() if any(m in l for m in SANITIZER_MARKERS))
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    fields = dict(re.findall(r"(\w+)=(\S+)", lines[-1])) if lines else {}
    return p.returncode, fields, p.stderr, time.monotonic() - t0


def transfers_total(c):
    r = c.get("/metrics")
    m = re.search(r"^ledger_engine_transfers_total (\d+)$", r.body.decode(), re.M)
    if r.status != 200 or not m:
        raise RuntimeError(f"/metrics: {r.status} without ledger_engine_transfers_total")
    return int(m.group(1))


def uring_expected():
    """True where ledger-bench should get a ring: io_uring not turned off, kernel >= 5.19 (its probe)."""
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as fh:
            if fh.read().strip() != "0":
                return False
    except OSError:
        pass  # older kernels have no such switch
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (5, 19)


def uring_checks(ck, err):
    if uring_expected():
        ck.check("the batched path ran (io_uring available)", "no io_uring here" not in err, err[-200:])
    elif "no io_uring here" in err:
        log("# NOTE: no io_uring on this kernel: ledger-bench's batched path was not tested")


class Peer:
    """A scripted HTTP peer on 127.0.0.1: for each request it reads, calls answer(conn)."""

    def __init__(self, answer):
        self.answer = answer
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            while not self.stop:
                data = c.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:  # GET /healthz: no body
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    self.answer(c)
        except OSError:
            return

    def close(self):
        self.stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            c.close()


def answer_then_fin(c):
    # MSG_MORE holds the bytes until the shutdown, so the answer and the FIN leave in one
    # segment: ledger-bench sees the data and the end of file in one event. The socket stays
    # open for reading: a request sent after it reaches the peer, which never answers it.
    body = b'{"status":"ok"}'
    c.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
           % (len(body), body), socket.MSG_MORE)
    c.shutdown(socket.SHUT_WR)


BIG_BODY = b'{"pad":"' + b"x" * (200 * 1024) + b'"}'


def answer_big(c):
    # A 200 KiB body: more than ledger-bench's 64 KiB read buffer, so reads fill their room
    # and the rest must be read on (not left for an edge that never comes).
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG_BODY) + BIG_BODY)


def answer_split(c):
    # The header, a pause, then the body: two edges for one response.
    body = b'{"status":"ok"}'
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
    time.sleep(0.02)
    c.sendall(body)


def answer_503(c):
    body = b'{"error":{"code":"overloaded","message":"x"}}'
    c.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def against_ledgerd(ck, srv):
    srv.start()
    key = os.path.join(srv.data_dir, "bootstrap-admin-key")
    common = ["-p", str(srv.port), "--token-file", key]
    rc, f, err, _ = bench(common + ["-S", "20", "-c", "4"])
    ck.eq("setup exits 0", rc, 0, err[-300:])
    first, last = int(f.get("first", 0)), int(f.get("last", 0))
    ck.eq("20 contiguous accounts were created", (f.get("accounts"), f.get("contiguous"), last - first),
          ("20", "1", 19), str(f))
    rng = f"{first}-{last}"
    c = srv.client()
    before = {i: to_minor(c.balance(i), "USD") for i in range(first, last + 1)}
    t_before = transfers_total(c)
    rc, f, err, _ = bench(common + ["-m", "transfer", "-c", "8", "-n", "2000", "-A", rng])
    ck.eq("transfer run exits 0", rc, 0, err[-300:])
    ck.eq("2,000 transfers reported", f.get("transfers"), "2000", str(f))
    ck.eq("all 2,000 answered 201", f.get("s2xx"), "2000", str(f))
    ck.eq("no errors", f.get("errors"), "0", str(f))
    rc, f, err, _ = bench(common + ["-m", "batch", "-b", "50", "-c", "2", "-n", "10", "-A", rng])
    ck.eq("batch run exits 0", rc, 0, err[-300:])
    ck.eq("10 batches of 50 posted: 500 transfers", f.get("transfers"), "500", str(f))
    rc, f, err, _ = bench(common + ["-m", "health", "-c", "8", "-n", "3000"])
    ck.eq("/healthz run exits 0", rc, 0, err[-300:])
    ck.eq("3,000 /healthz answered", f.get("requests"), "3000", str(f))
    rc, f, err, _ = bench(common + ["-m", "transfer", "-c", "8", "-P", "4", "-n", "1000", "-A", rng, "--no-io-uring"])
    ck.eq("pipelined transfer run on plain calls exits 0", rc, 0, err[-300:])
    ck.eq("1,000 more transfers reported", f.get("transfers"), "1000", str(f))
    rc, f, err, _ = bench(common + ["-m", "transfer", "-c", "8", "-P", "4", "-n", "1000", "-A", rng])
    ck.eq("pipelined transfer run through io_uring exits 0", rc, 0, err[-300:])
    ck.eq("1,000 more transfers reported (io_uring)", f.get("transfers"), "1000", str(f))
    uring_checks(ck, err)
    # Two ~0.8 MB batch requests on one connection: sends that the socket takes in part (the
    # rest through the plain path, from the middle of a request).
    rc, f, err, _ = bench(common + ["-m", "batch", "-b", "8190", "-c", "1", "-n", "2", "-A", rng])
    ck.eq("8,190-transfer batch run exits 0", rc, 0, err[-300:])
    ck.eq("2 batches of 8,190 posted", f.get("transfers"), "16380", str(f))
    after = {i: to_minor(c.balance(i), "USD") for i in range(first, last + 1)}
    moved = sum(after.values()) - sum(before.values())
    ck.eq("money among the bench accounts is conserved", moved, 0)
    ck.eq("the ledger holds exactly the 20,880 transfers reported", transfers_total(c) - t_before, 20880)
    changed = sum(1 for i in before if before[i] != after[i])
    ck.check("the transfers moved money", changed > 0, f"{changed} balances changed")
    c.close()
    final_server_checks(ck, srv)


def ceiling(args, tmpdir):
    """Runs ledger-ceiling with TMPDIR=tmpdir; returns (exit status, stdout lines, stderr)."""
    p = subprocess.run([os.path.join(bin_dir(), "ledger-ceiling")] + args, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S, env=dict(os.environ, TMPDIR=tmpdir))
    SANITIZER_REPORTS.extend(l for l in p.stderr.splitlines() if any(m in l for m in SANITIZER_MARKERS))
    return p.returncode, [l for l in p.stdout.splitlines() if l.strip()], p.stderr


def ceiling_open_loop(ck):
    """ledger-ceiling --open-loop: goal 2's floors in bench/run.sh (docs/performance.md)."""
    tmp = tempfile.mkdtemp(prefix="ledger-ceiling-test.")
    try:
        # 20 requests a ms: they come concurrently (an fdatasync takes longer than 50 µs), so
        # the interval holds commits (ledgerd's rule: one request at a time is never held).
        for iv, rate, secs in (("1000", 20000, "0.5"), ("100000", 20000, "0.5")):
            rc, lines, err = ceiling(["--open-loop", str(rate), "-d", secs, "--commit-interval-us", iv], tmp)
            ck.eq(f"interval {iv}: exits 0", rc, 0, err[-300:])
            ck.check(f"interval {iv}: ready line, then the summary",
                     len(lines) == 2 and lines[0].startswith("open_loop_ready ") and lines[1].startswith("open_loop "),
                     str(lines))
            f = dict(re.findall(r"(\w+)=(\S+)", lines[-1])) if lines else {}
            ck.eq(f"interval {iv}: every scheduled request committed", f.get("requests"), str(rate // 2), str(f))
            ck.eq(f"interval {iv}: the interval is reported", f.get("commit_interval_us"), iv, str(f))
            pct = [float(f.get(k, "-1")) for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms")]
            ck.check(f"interval {iv}: 0 < p50 <= p99 <= p99.9 <= max < 1 s",
                     0 < pct[0] <= pct[1] <= pct[2] <= pct[3] < 1000, str(pct))
            syncs = int(f.get("fdatasyncs", "0"))
            ck.check(f"interval {iv}: between 1 and one fdatasync per request", 1 <= syncs <= rate // 2, str(syncs))
            if iv == "100000":
                # After the first commits the writer holds each one until 100 ms after the
                # one before started: ~6 in 0.5 s.
                ck.check("100 ms interval: at most ~6 commits in 0.5 s (and a few at the start)", syncs <= 12, str(syncs))
                ck.check("100 ms interval: the median request waited for the hold", pct[0] >= 20, str(pct))
            else:
                # at most one commit a ms once they are held: ~500 in 0.5 s, not 10,000
                ck.check("1 ms interval: requests are grouped (at most ~1 commit a ms)", syncs <= 600, str(syncs))
        for args in (["--open-loop", "100", "-d", "0"], ["--open-loop", "100", "-d", "1", "--commit-interval-us", "100001"],
                     ["--open-loop", "20000000", "-d", "1"]):
            rc, lines, err = ceiling(args, tmp)
            ck.eq(f"{' '.join(args)}: refused with usage (exit 2)", rc, 2, err[-200:])
        ck.eq("its files and directories are removed", os.listdir(tmp), [])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(ck):
    with ck.section("ledger-ceiling --open-loop"):
        ceiling_open_loop(ck)

    with ck.section("against ledgerd"):
        srv = Server()
        try:
            against_ledgerd(ck, srv)
        finally:
            srv.cleanup()

    for how, extra in (("batched through io_uring", []), ("plain calls", ["--no-io-uring"])):
        with ck.section(f"a peer that answers and closes in one segment ({how})"):
            peer = Peer(answer_then_fin)
            try:
                rc, f, err, secs = bench(["-p", str(peer.port), "-m", "health", "-c", "1", "-n", "5", "-d", "2"] + extra)
            except subprocess.TimeoutExpired:
                rc, f, err, secs = None, {}, "timed out", RUN_TIMEOUT_S
            finally:
                peer.close()
            ck.eq("exit status 1", rc, 1, err[-300:])
            if not extra:
                uring_checks(ck, err)
            ck.check("reported as closed by the server", "closed by the server" in err, err[-300:])
            ck.eq("one connection error", f.get("conn_errors"), "1", str(f))
            ck.check("at once, not after the drain timeout", secs < 10, f"{secs:.1f} s")

        for name, answer, count in (("a 200 KiB body", answer_big, 30), ("header and body apart", answer_split, 30)):
            with ck.section(f"a peer that answers with {name} ({how})"):
                peer = Peer(answer)
                try:
                    rc, f, err, _ = bench(["-p", str(peer.port), "-m", "health", "-c", "2", "-n", str(count)] + extra)
                except subprocess.TimeoutExpired:
                    rc, f, err = None, {}, "timed out"
                finally:
                    peer.close()
                ck.eq("exit status 0", rc, 0, err[-300:])
                ck.eq(f"{count} answered", f.get("requests"), str(count), str(f))
                ck.eq("no errors", f.get("errors"), "0", str(f))

        with ck.section(f"a peer that answers 503 ({how})"):
            peer = Peer(answer_503)
            try:
                rc, f, err, _ = bench(["-p", str(peer.port), "-m", "health", "-c", "2", "-n", "50"] + extra)
            finally:
                peer.close()
            ck.eq("exit status 1", rc, 1, err[-300:])
            ck.eq("50 answered", f.get("requests"), "50", str(f))
            ck.eq("50 unexpected", f.get("unexpected"), "50", str(f))
            ck.check("the first is echoed to stderr", "unexpected status 503" in err, err[-300:])

    ck.check("no sanitizer report in ledger-bench's stderr", not SANITIZER_REPORTS, "; ".join(SANITIZER_REPORTS[:5]))


if __name__ == "__main__":
    run_main(main)
