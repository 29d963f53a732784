-- wrk script: a different bearer token on every request.
--   wrk -t1 -c32 -d10s -s benches/distinct.lua http://127.0.0.1:PORT/ -- TOKENS_FILE [OFFSET]
-- TOKENS_FILE holds one JWT per line (benches/mint_tokens.py --distinct N). Requests are
-- formatted once at start-up, so the per-request Lua work is an index increment: wrk's
-- cost per request stays close to a plain `-H` run and the comparison stays fair.
-- The list is cycled in order; OFFSET (default 0) is where the first request starts.

local reqs = {}
local n = 0
local i = 0

function init(args)
  local path = args[1]
  if path == nil then
    error("usage: wrk ... -s distinct.lua URL -- TOKENS_FILE [OFFSET]")
  end
  local f = assert(io.open(path, "r"))
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  for line in f:lines() do
    if #line > 0 then
      headers["Authorization"] = "Bearer " .. line
      n = n + 1
      reqs[n] = wrk.format(nil, nil, headers)
    end
  end
  f:close()
  if n == 0 then error("no tokens in " .. path) end
  i = (tonumber(args[2] or "0") or 0) % n
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end
