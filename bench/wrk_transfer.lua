-- bench/wrk_transfer.lua — wrk + Lua sending single transfers to ledgerd: the baseline that
-- ledger-bench must beat (issue 6, goal 7).
--
-- usage: wrk -t1 -c256 -d20s -s bench/wrk_transfer.lua http://127.0.0.1:PORT -- TOKEN_FILE FIRST LAST
--   TOKEN_FILE: first line is the bearer token (the bootstrap admin key file works as is);
--   FIRST LAST: funded USD accounts FIRST..LAST (ledger-bench -S prints them).
--
-- Every request is built in Lua when wrk asks for it (request()): two distinct random accounts
-- among FIRST..LAST, amount 0.01 USD, "Authorization: Bearer TOKEN" — the same request
-- ledger-bench -m transfer sends. There is no response() callback (it would make wrk parse each
-- response in Lua); wrk itself counts non-2xx/3xx statuses ("Non-2xx or 3xx responses"), which
-- done() prints as status_errors. done() prints one line:
--   wrk_lua requests=N seconds=S req_per_s=X p50_us=.. p99_us=.. status_errors=.. socket_errors=..

local token, first, count
local headers

function init(args)
  local f = assert(io.open(args[1], "r"), "cannot open token file " .. tostring(args[1]))
  token = (f:read("*l") or ""):gsub("^%s+", ""):gsub("%s+$", "")
  f:close()
  first = assert(tonumber(args[2]), "FIRST account id missing")
  local last = assert(tonumber(args[3]), "LAST account id missing")
  count = last - first + 1
  assert(count >= 2, "need at least two accounts")
  headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }
  math.randomseed(42)
end

function request()
  local d = math.random(0, count - 1)
  local c = math.random(0, count - 2)
  if c >= d then c = c + 1 end
  local body = string.format(
    '{"debit_account_id":%d,"credit_account_id":%d,"amount":"0.01","currency":"USD"}',
    first + d, first + c)
  return wrk.format("POST", "/v1/transfers", headers, body)
end

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "wrk_lua requests=%d seconds=%.3f req_per_s=%.0f p50_us=%.1f p99_us=%.1f status_errors=%d" ..
    " socket_errors=%d\n",
    summary.requests, s, summary.requests / s, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
