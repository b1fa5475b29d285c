# frozen_string_literal: true

# Instructions per publish, for valgrind's callgrind (repeatable whatever
# else the machine does): 200 warm-up publishes on the memory backend, then N.
#   MB_LIB=<checkout>/lib LAT=0|1 N=20000 valgrind --tool=callgrind ruby bench/publish_instructions.rb
# per publish = (total Ir at N=20000 - total Ir at N=0) / 20000.

$LOAD_PATH.unshift(ENV.fetch("MB_LIB", File.expand_path("../lib", __dir__)))
require "message_bus"
require "logger"

bus = MessageBus::Instance.new
bus.configure(backend: :memory, logger: Logger.new(nil), keepalive_interval: 0)
bus.backend_instance.max_backlog_size = 100
MessageBus.latency_metrics = (ENV["LAT"] == "1") if MessageBus.respond_to?(:latency_metrics=)
200.times { |i| bus.publish("/b/#{i % 10}", "hello") }
Integer(ENV.fetch("N", "20000")).times { |i| bus.publish("/b/#{i % 10}", "hello") }
