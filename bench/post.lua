-- wrk script for bench/bench.py: POST one JSON body, optionally with a fresh bearer token per request.
--
--   wrk -s bench/post.lua URL -- BODY_FILE [TOKEN_FILE_PREFIX]
--
-- Without a token prefix every request is the same prebuilt POST. With one, thread N reads
-- TOKEN_FILE_PREFIX.N (one JWT a line, N from 1) and uses each token once, because the service
-- accepts a jti only once (wrk calls request() once before the run to check the script: that
-- token is never sent); a thread that runs out stops and done() reports it. done() prints one
-- line "BENCH-RESULT {json}" that bench.py parses (latencies in microseconds).

local thread_count = 0
local threads = {}

function setup(thread)
   thread_count = thread_count + 1
   thread:set("id", thread_count)
   table.insert(threads, thread)
end

local function read_file(path)
   local file = assert(io.open(path, "rb"))
   local text = file:read("*a")
   file:close()
   return text
end

local body, prebuilt
local tokens, next_token = nil, 1
exhausted = 0

function init(args)
   body = read_file(args[1])
   local prefix = args[2]
   if prefix then
      tokens = {}
      for line in io.lines(prefix .. "." .. id) do
         if #line > 0 then table.insert(tokens, line) end
      end
   else
      prebuilt = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
   end
end

function request()
   if prebuilt then
      return prebuilt
   end
   local token = tokens[next_token]
   if token == nil then
      exhausted = 1
      wrk.thread:stop()
      token = "exhausted"  -- the request still goes out; the 401 it earns counts as an error too
   end
   next_token = next_token + 1
   return wrk.format("POST", nil, {["Content-Type"] = "application/json",
                                   ["Authorization"] = "Bearer " .. token}, body)
end

function done(summary, latency, requests)
   local threads_out_of_tokens = 0
   for _, thread in ipairs(threads) do
      threads_out_of_tokens = threads_out_of_tokens + (thread:get("exhausted") or 0)
   end
   local errors = summary.errors
   io.write(string.format(
      'BENCH-RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, ' ..
      '"threads_out_of_tokens": %d}\n',
      summary.requests, summary.duration, summary.bytes,
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      threads_out_of_tokens))
end
