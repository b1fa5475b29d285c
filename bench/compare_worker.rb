# frozen_string_literal: true

# One side of bench/compare: the request/response workload on one backend
# with the gem found at MB_LIB (this project's lib/ or the reference's). It
# stays up and answers bench/compare on stdin: a line `<cell> <seconds>` runs
# that cell for about that long and prints one JSON line {"rate": calls/s,
# "cpu_us": CPU microseconds of the whole process (every thread) per call};
# `quit` cleans up. Not meant to be run by hand.
#
#   MB_LIB=lib MESSAGE_BUS_BACKEND=redis MB_SIDE=ours ruby bench/compare_worker.rb

$LOAD_PATH.unshift(File.expand_path(ENV.fetch("MB_LIB")))
require "message_bus"
require "logger"
require "json"

backend = ENV.fetch("MESSAGE_BUS_BACKEND").to_sym
# Sides share one Redis db / PostgreSQL database: each uses channels of its own.
side = ENV.fetch("MB_SIDE")
config = { backend: backend, logger: Logger.new(nil), keepalive_interval: 0 }
case backend
when :redis
  config[:redis_config] = { url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/14"), db: 14 }
when :postgres
  config[:backend_options] = { host: ENV.fetch("PGHOST", "127.0.0.1"), port: Integer(ENV.fetch("PGPORT", "5432")),
                               user: ENV.fetch("PGUSER", "postgres"), dbname: ENV.fetch("PGDATABASE", "mb_compare"),
                               # Plain TCP for both gems (and pgbench): libpq's default `prefer` would
                               # give the reference TLS on loopback, which this gem only makes on `require`.
                               sslmode: "disable" }
end

bus = MessageBus::Instance.new
bus.configure(config)
bus.backend_instance.max_backlog_size = 100
bus.backend_instance.max_global_backlog_size = 1000
if ENV["MB_RESET"] # bench/compare empties the storage once before the sides start
  bus.reset!
  bus.destroy
  exit
end

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
def cpu_now = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)

# Calls per second of the block over about `seconds`, spread over `threads`
# Ruby threads (each checks the clock every 20 calls, so a slice is bounded),
# and the process's CPU time per call.
def rate(seconds, threads: 1)
  yield 0, 0 # warm: first connection, script load, prepared statements
  count = 0
  lock = Mutex.new
  cpu_started = cpu_now
  started = now
  deadline = started + seconds
  Array.new(threads) do |t|
    Thread.new do
      n = 0
      20.times { yield t, n += 1 } while now < deadline
      lock.synchronize { count += n }
    end
  end.each(&:join)
  { rate: count / (now - started), cpu_us: (cpu_now - cpu_started) * 1e6 / count }
end

prefix = "/cmp/#{side}"
channels = Array.new(10) { |i| "#{prefix}/#{i}" }
# What a read cell reads is published right before its first slice: the
# publish cells (every side's, before) trim the global backlog, which in the
# memory and PostgreSQL backends removes old messages of every channel.
setups = {
  "last_id" => -> { bus.publish("#{prefix}/one", "hello") },
  "backlog (10 messages)" => lambda {
    10.times { |i| bus.publish("#{prefix}/read", { "n" => i, "text" => "a chat message" }) }
    count = bus.backlog("#{prefix}/read").size
    raise "the backlog cell reads #{count} messages, not 10" unless count == 10
  }
}

cells = {
  "publish" => ->(s) { rate(s) { |_t, n| bus.publish("#{prefix}/#{n % 10}", "hello") } },
  "publish, 4 threads" => ->(s) { rate(s, threads: 4) { |t, n| bus.publish("#{prefix}/#{t}/#{n % 10}", "hello") } },
  "last_id" => ->(s) { rate(s) { bus.last_id("#{prefix}/one") } },
  "last_ids (10 channels)" => ->(s) { rate(s) { bus.last_ids(*channels) } },
  "backlog (10 messages)" => ->(s) { rate(s) { bus.backlog("#{prefix}/read") } }
}
$stdout.sync = true
puts JSON.generate(ready: true)
$stdin.each_line do |line|
  cell, seconds = line.chomp.split("\t")
  break if cell == "quit"

  setups.delete(cell)&.call
  puts JSON.generate(cells.fetch(cell).call(Float(seconds)))
end
bus.destroy
