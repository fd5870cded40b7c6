-- wrk script: one random, block-aligned single-range GET per request.
-- usage: wrk ... -s range.lua URL -- FILE_SIZE BLOCK_SIZE
-- Every thread uses a fixed seed, so both servers see the same offset sequence.
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local size = tonumber(args[1])
  block = tonumber(args[2])
  nblocks = math.floor(size / block)
  math.randomseed(4242 + (id or 0))
end

function request()
  local a = math.random(0, nblocks - 1) * block
  return wrk.format(nil, nil, { ["Range"] = "bytes=" .. a .. "-" .. (a + block - 1) }, nil)
end

function done(summary, latency, requests)
  if summary.requests > 0 then
    io.write(string.format("AVG_BYTES %.1f\n", summary.bytes / summary.requests))
  end
end
