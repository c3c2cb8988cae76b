-- wrk script of the fault lab: "Connection: close" on every request (each one exercises the
-- accept path), successful responses (2xx) counted per 100 ms of wall-clock time (epoch
-- deciseconds, so the Python side can align them with the fault's timestamps), and one JSON
-- line "CHAOSJSON {...}" at the end with wrk's totals and the per-bucket series.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } chaos_timeval;
int gettimeofday(chaos_timeval *tv, void *tz);
]]
local tv = ffi.new("chaos_timeval")
local function decisecond()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 10 + math.floor(tonumber(tv.tv_usec) / 100000)
end

wrk.headers["Connection"] = "close"
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok = {}
  bad = {}
  issued = 0
end

-- Counting requests as they are written: wrk itself never reports a request that got no
-- answer at all (a hung connection is neither an error nor a timeout), so the Python side
-- takes issued - answered - read/write errors as the unanswered ones.
function request()
  issued = issued + 1
  return wrk.format()
end

function response(status, headers, body)
  local d = decisecond()
  if status >= 200 and status < 300 then
    ok[d] = (ok[d] or 0) + 1
  else
    bad[d] = (bad[d] or 0) + 1
  end
end

local function merge(into, t)
  for k, v in pairs(t) do into[k] = (into[k] or 0) + v end
end

local function encode(t)
  local parts = {}
  for k, v in pairs(t) do parts[#parts + 1] = string.format('"%d": %d', k, v) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local all_ok, all_bad, all_issued = {}, {}, 0
  for _, t in ipairs(threads) do
    all_issued = all_issued + (t:get("issued") or 0)
    merge(all_ok, t:get("ok") or {})
    merge(all_bad, t:get("bad") or {})
  end
  local e = summary.errors
  io.write(string.format(
    'CHAOSJSON {"duration_us": %d, "requests": %d, "issued": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p99": %d, "max": %d}, "ok_per_ds": %s, "bad_per_ds": %s}\n',
    summary.duration, summary.requests, all_issued, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, encode(all_ok), encode(all_bad)))
end
