# frozen_string_literal: true

# Instructions per call on the memory backend, for valgrind's callgrind
# (repeatable whatever else the machine does): 200 warm-up calls, then N.
#   MB_LIB=<gem>/lib CALL=publish|publish_hash|last_id|backlog|backend_backlog|decode LAT=0|1 N=20000 [MAX_GLOBAL=1000] \
#     valgrind --tool=callgrind ruby bench/call_instructions.rb
# per call = (total Ir at N - total Ir at N=0) / N. bench/memory_instructions
# runs it for this gem and the reference and prints the table.

$LOAD_PATH.unshift(ENV.fetch("MB_LIB", File.expand_path("../lib", __dir__)))
require "message_bus"
require "logger"

bus = MessageBus::Instance.new
bus.configure(backend: :memory, logger: Logger.new(nil), keepalive_interval: 0)
bus.backend_instance.max_backlog_size = 100
# MAX_GLOBAL=1000: bench/compare's setting, where every publish also trims
# the global backlog (at the default, 2000, the 10 channels of 100 never reach it).
bus.backend_instance.max_global_backlog_size = Integer(ENV["MAX_GLOBAL"]) if ENV["MAX_GLOBAL"]
MessageBus.latency_metrics = (ENV["LAT"] == "1") if MessageBus.respond_to?(:latency_metrics=)
10.times { |i| bus.publish("/read", { "n" => i, "text" => "a chat message" }) }

call =
  case ENV.fetch("CALL", "publish")
  when "publish" then ->(i) { bus.publish("/b/#{i % 10}", "hello") }
  when "publish_hash" then ->(i) { bus.publish("/b/#{i % 10}", { "n" => i, "text" => "a chat message" }) }
  when "last_id" then ->(_) { bus.last_id("/read") }
  when "backlog" then ->(_) { bus.backlog("/read") }
  when "backend_backlog" then ->(_) { bus.backend_instance.backlog("/read", 0) }
  when "decode" then ->(_) { bus.backend_instance.backlog("/read", 0).each { |m| bus.send(:decode_message!, m) } }
  else abort "CALL must be publish, publish_hash, last_id, backlog, backend_backlog or decode"
  end
200.times(&call)
Integer(ENV.fetch("N", "20000")).times(&call)
