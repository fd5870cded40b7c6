-- wrk script: PUT the same body to a new, pre-signed URL on every request.
-- usage: wrk ... -s put.lua URL -- LIST_FILE BODY_FILE NTHREADS
-- LIST_FILE holds one "/upload/<path>?v=<mac>" per line (benchlib.py putlist); line k goes to
-- thread k mod nthreads, so no name is used twice (Sluice answers 409 to an overwrite).
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[2], "rb"))
  body = f:read("*a")
  f:close()
  paths = {}
  local k = 0
  local n = tonumber(args[3])
  for line in io.lines(args[1]) do
    if k % n == id then
      paths[#paths + 1] = line
    end
    k = k + 1
  end
  idx = 0
  exhausted = 0
  headers = { ["Content-Type"] = "application/octet-stream" }
end

function request()
  idx = idx + 1
  local p = paths[idx]
  if p == nil then
    exhausted = 1
    p = paths[#paths]
  end
  return wrk.format("PUT", p, headers, body)
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    if t:get("exhausted") == 1 then
      io.write("EXHAUSTED: the signed URL list was too short; raise PUT_LIST_PER_S\n")
    end
  end
end
