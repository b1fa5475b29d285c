# frozen_string_literal: true

# The cost of metrics on publishes: rounds of 1 s of publishing from one
# thread, alternating latency histograms on and off in one process (the
# counters always count), then the median of each.
#   ruby -Ilib bench/metrics_overhead.rb                  (memory backend)
#   MESSAGE_BUS_BACKEND=redis ruby -Ilib bench/metrics_overhead.rb
#   MB_LIB=<other checkout>/lib ruby bench/metrics_overhead.rb  (a build without metrics: "off" only)
# Bounded: ROUNDS (default 7) x 2 x 1 s.

$LOAD_PATH.unshift(ENV.fetch("MB_LIB", File.expand_path("../lib", __dir__)))
require "message_bus"
require "logger"

backend = (ENV["MESSAGE_BUS_BACKEND"] || "memory").to_sym
config = { backend: backend, logger: Logger.new(nil), keepalive_interval: 0 }
config[:redis_config] = { url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/"), db: 14 } if backend == :redis
bus = MessageBus::Instance.new
bus.configure(config)
bus.reset!
bus.backend_instance.max_backlog_size = 100
bus.backend_instance.max_global_backlog_size = 1000

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

def round(bus)
  n = 0
  started = now
  deadline = started + 1.0
  while now < deadline
    50.times { |i| bus.publish("/bench/#{i % 10}", "hello") }
    n += 50
  end
  n / (now - started)
end

toggle = MessageBus.respond_to?(:latency_metrics=)
rates = { on: [], off: [] }
Integer(ENV.fetch("ROUNDS", "7")).times do
  %i[on off].each do |mode|
    next if mode == :on && !toggle

    MessageBus.latency_metrics = (mode == :on) if toggle
    rates[mode] << round(bus)
  end
end
median = ->(a) { a.sort[a.length / 2] }
label = toggle ? "" : " (no metrics in this build)"
puts "backend: #{backend}#{label}"
rates.each do |mode, list|
  next if list.empty?

  printf("publish, 1 thread, latency metrics %-3s  median %8.0f /s  (%s)\n", mode, median.call(list),
         list.map { |r| r.round.to_s }.join(" "))
end
printf("ratio on/off: %.3f\n", median.call(rates[:on]) / median.call(rates[:off])) if toggle
bus.reset!
bus.destroy
