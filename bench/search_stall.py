#!/usr/bin/env python3
"""bench/search_stall.py — what a text search (GET /v1/transfers?q=) costs everyone else.

usage: bench/search_stall.py BIN_DIR [BIN_DIR ...]   (e.g. build/bin, or an older build's)

For each ledgerd given (in turn, ROUNDS times, alternated): a fresh server on CPU 0 (taskset),
N transfers with a description each (batch requests), then
  - a q search that matches nothing (it reads its whole budget of descriptions), and one that
    matches every transfer (a page of 50 fills at once): median of 5 each;
  - single transfers from one connection (2 ms apart) for SECS seconds: p50 / p99 / max;
  - the same while a second connection runs that q search back to back.
Prints one line per server and round. Bounded: N transfers, 2 x SECS seconds of transfers.
Environment: N [200000], SECS [3], ROUNDS [2]. The client runs on CPU 1.
"""
import http.client, json, os, re, shutil, statistics, subprocess, sys, tempfile, threading, time

N = int(os.environ.get("N", "200000"))
SECS = float(os.environ.get("SECS", "3"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))


def start(bin_dir):
    d = tempfile.mkdtemp(prefix="ledger-search-stall-")
    out = open(os.path.join(d, "out"), "w+")
    p = subprocess.Popen(["taskset", "-c", "0", os.path.join(bin_dir, "ledgerd"), "--listen", "127.0.0.1:0",
                          "--data-dir", os.path.join(d, "data"), "--rate-limit", "off"],
                         stdout=out, stderr=subprocess.DEVNULL)
    for _ in range(200):
        out.seek(0)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", out.read())
        if m:
            token = open(os.path.join(d, "data", "bootstrap-admin-key")).read().split()[0]
            return p, d, int(m.group(1)), token
        time.sleep(0.05)
    p.kill()
    raise SystemExit(f"search_stall: {bin_dir}/ledgerd did not start")


def call(c, token, method, path, body=None):
    c.request(method, path, body=None if body is None else json.dumps(body),
              headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    return r.status, data


def pct(a, p):
    a = sorted(a)
    return a[min(len(a) - 1, int(len(a) * p))]


def transfers(port, token, ids, secs):
    c = http.client.HTTPConnection("127.0.0.1", port)
    lat, end = [], time.monotonic() + secs
    while time.monotonic() < end:
        t = time.monotonic()
        s, _ = call(c, token, "POST", "/v1/transfers", {"debit_account_id": ids[0], "credit_account_id": ids[1], "amount": "0.01"})
        if s != 201 and s != 200:
            raise SystemExit(f"search_stall: transfer answered {s}")
        lat.append((time.monotonic() - t) * 1e3)
        time.sleep(0.002)
    return lat


def one(bin_dir):
    p, d, port, token = start(bin_dir)
    try:
        c = http.client.HTTPConnection("127.0.0.1", port)
        ids = []
        for _ in range(2):
            s, data = call(c, token, "POST", "/v1/accounts", {"currency": "USD"})
            ids.append(json.loads(data)["id"])
        s, _ = call(c, token, "POST", "/v1/deposits", {"account_id": ids[0], "amount": "100000000.00"})
        for k in range(0, N, 4000):
            items = [{"debit_account_id": ids[0], "credit_account_id": ids[1], "amount": "0.01",
                      "description": f"payment for invoice {k + j} of order xyz"} for j in range(min(4000, N - k))]
            s, data = call(c, token, "POST", "/v1/transfers/batch", {"transfers": items})
            if s != 200:
                raise SystemExit(f"search_stall: batch answered {s}: {data[:200]}")
        q = "/v1/transfers?q=nothing-has-this&limit=50"
        ts, tb = [], []
        for _ in range(5):
            t = time.monotonic()
            s, _ = call(c, token, "GET", q)
            ts.append((time.monotonic() - t) * 1e3)
        for _ in range(5):  # a word in every description: the page fills at once
            t = time.monotonic()
            s, data = call(c, token, "GET", "/v1/transfers?q=invoice&limit=50")
            tb.append((time.monotonic() - t) * 1e3)
            if s != 200 or data.count(b'"seq"') != 50:
                raise SystemExit(f"search_stall: q=invoice answered {s} with {data.count(b'seq')} rows")
        alone = transfers(port, token, ids, SECS)
        stop, searches = [False], [0]

        def searcher():
            sc = http.client.HTTPConnection("127.0.0.1", port)
            while not stop[0]:
                call(sc, token, "GET", q)
                searches[0] += 1

        th = threading.Thread(target=searcher)
        th.start()
        busy = transfers(port, token, ids, SECS)
        stop[0] = True
        th.join()
        print(f"{bin_dir}: {N} described transfers; q search (no match) median {statistics.median(ts):.1f} ms, "
              f"(every one matches, page of 50) {statistics.median(tb):.1f} ms; "
              f"transfers alone p50 {pct(alone, .5):.2f} p99 {pct(alone, .99):.2f} max {max(alone):.2f} ms (n {len(alone)}); "
              f"with a q searcher p50 {pct(busy, .5):.2f} p99 {pct(busy, .99):.2f} max {max(busy):.2f} ms "
              f"(n {len(busy)}, {searches[0]} searches)", flush=True)
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    os.sched_setaffinity(0, {1})
    for r in range(ROUNDS):
        bins = sys.argv[1:] if r % 2 == 0 else list(reversed(sys.argv[1:]))
        for b in bins:
            one(b)


if __name__ == "__main__":
    main()
