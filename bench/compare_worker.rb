# frozen_string_literal: true

# One side of bench/compare: runs the request/response workload on one backend
# with the gem found at MB_LIB (this project's lib/ or the reference's) and
# prints one JSON object, call name => calls per second. Not meant to be run by
# hand; bench/compare starts it once per (gem, backend) and prints the ratios.
#
#   MB_LIB=lib MESSAGE_BUS_BACKEND=redis CELL_SECONDS=1 ruby bench/compare_worker.rb

$LOAD_PATH.unshift(File.expand_path(ENV.fetch("MB_LIB")))
require "message_bus"
require "logger"
require "json"

backend = ENV.fetch("MESSAGE_BUS_BACKEND").to_sym
cell_seconds = Float(ENV.fetch("CELL_SECONDS", "1"))
config = { backend: backend, logger: Logger.new(nil), keepalive_interval: 0 }
case backend
when :redis
  config[:redis_config] = { url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/14"), db: 14 }
when :postgres
  config[:backend_options] = { host: ENV.fetch("PGHOST", "127.0.0.1"), port: Integer(ENV.fetch("PGPORT", "5432")),
                               user: ENV.fetch("PGUSER", "postgres"), dbname: ENV.fetch("PGDATABASE", "mb_compare") }
end

bus = MessageBus::Instance.new
bus.configure(config)
bus.reset!
bus.backend_instance.max_backlog_size = 100
bus.backend_instance.max_global_backlog_size = 1000

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

# Calls per second of the block over about `seconds`, spread over `threads`
# Ruby threads (each checks the clock every 20 calls, so a round is bounded).
def rate(seconds, threads: 1)
  yield 0, 0 # warm: first connection, script load, prepared statements
  count = 0
  lock = Mutex.new
  started = now
  deadline = started + seconds
  Array.new(threads) do |t|
    Thread.new do
      n = 0
      20.times { yield t, n += 1 } while now < deadline
      lock.synchronize { count += n }
    end
  end.each(&:join)
  count / (now - started)
end

results = {}
results["publish"] = rate(cell_seconds) { |_t, n| bus.publish("/cmp/#{n % 10}", "hello") }
unless backend == :memory
  results["publish, 4 threads"] = rate(cell_seconds, threads: 4) { |t, n| bus.publish("/cmp/#{t}/#{n % 10}", "hello") }
end
bus.publish("/cmp/one", "hello")
results["last_id"] = rate(cell_seconds) { bus.last_id("/cmp/one") }
channels = Array.new(10) { |i| "/cmp/#{i}" }
results["last_ids (10 channels)"] = rate(cell_seconds) { bus.last_ids(*channels) } unless backend == :memory
10.times { |i| bus.publish("/cmp/read", { "n" => i, "text" => "a chat message" }) }
results["backlog (10 messages)"] = rate(cell_seconds) { bus.backlog("/cmp/read") }

bus.reset!
bus.destroy
puts JSON.generate(results)
