# frozen_string_literal: true

# Publish / read / latency benchmark.
#   ruby -Ilib bench/publish.rb                    (memory backend)
#   MESSAGE_BUS_BACKEND=redis ruby -Ilib bench/publish.rb
#   MESSAGE_BUS_BACKEND=postgres ruby -Ilib bench/publish.rb  (database mb_bench)
#   CLEAR_EVERY=100 MESSAGE_BUS_BACKEND=postgres ruby -Ilib bench/publish.rb
# Prints one line per measurement; bounded in time (about 10 s in all).

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "message_bus"
require "logger"
require "etc"

backend = (ENV["MESSAGE_BUS_BACKEND"] || "memory").to_sym
config = { backend: backend, logger: Logger.new(nil), keepalive_interval: 0 }
config[:redis_config] = { url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/"), db: 14 } if backend == :redis
if backend == :postgres
  pg = { host: ENV.fetch("PGHOST", "127.0.0.1"), port: ENV.fetch("PGPORT", "5432"), user: ENV.fetch("PGUSER", "postgres") }
  system("psql", "-h", pg[:host], "-p", pg[:port].to_s, "-U", pg[:user], "-d", "postgres", "-qc",
         "CREATE DATABASE mb_bench", out: File::NULL, err: File::NULL)
  config[:backend_options] = pg.merge(dbname: "mb_bench")
end
bus = MessageBus::Instance.new
bus.configure(config)
bus.reset!
bus.backend_instance.max_backlog_size = 100
bus.backend_instance.max_global_backlog_size = 1000
# Trimming runs on every publish by default (clear_every 1); CLEAR_EVERY=n trims every n-th.
bus.backend_instance.clear_every = Integer(ENV["CLEAR_EVERY"]) if ENV["CLEAR_EVERY"]

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

def rate(label, seconds: 2.0, threads: 1)
  count = 0
  lock = Mutex.new
  deadline = now + seconds
  started = now
  Array.new(threads) do |t|
    Thread.new do
      n = 0
      100.times { yield t, n += 1 } while now < deadline
      lock.synchronize { count += n }
    end
  end.each(&:join)
  printf("%-45s %12.0f /s\n", label, count / (now - started))
end

puts "backend: #{backend}, ruby #{RUBY_VERSION}, #{Etc.respond_to?(:nprocessors) ? Etc.nprocessors : '?'} cpus"
rate("publish, 1 thread") { |_t, n| bus.publish("/bench/#{n % 10}", "hello") }
rate("publish, 4 threads", threads: 4) { |t, n| bus.publish("/bench/#{t}/#{n % 10}", "hello") }
100.times { |i| bus.publish("/bench/read", { "n" => i, "text" => "a chat message" }) }
rate("backlog read (100 messages)") { bus.backlog("/bench/read") }
channels = Array.new(100) { |i| "/bench/#{i}" }
rate("last_ids for 100 channels") { bus.last_ids(*channels) }

latencies = []
done = Queue.new
sent_at = {}
bus.subscribe("/latency") do |m|
  latencies << (now - sent_at[m.data]) * 1000
  done << true if latencies.length == 2000
end
2000.times do |i|
  sent_at[i] = now
  bus.publish("/latency", i)
  sleep 0.0005 if (i % 10).zero?
end
done.pop
latencies.sort!
printf("%-45s p50 %.3f ms  p99 %.3f ms  max %.3f ms\n", "publish -> subscriber block latency",
       latencies[latencies.length / 2], latencies[(latencies.length * 0.99).floor], latencies.last)
bus.reset!
bus.destroy
