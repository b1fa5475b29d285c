# frozen_string_literal: true

# A publisher process for the fault specs (not a spec itself).
#   ruby spec/faults/publisher.rb CONFIG_JSON CHANNEL COUNT INTERVAL_MS
# Publishes {"i" => 1..COUNT} to CHANNEL, INTERVAL_MS apart, and prints one
# JSON line per publish: {"i":n,"r":"id"|"queued"|"error","id":..,"e":..}.
# Then waits (up to 20 s) for its in-memory publish queue to drain and prints
# {"done":true,"queued":q,"dropped":d}. Starts after a line on stdin ("go").

$LOAD_PATH.unshift(File.expand_path("../../lib", __dir__))
require "message_bus"
require "json"
require "logger"

config_json, channel, count, interval_ms = ARGV
config = JSON.parse(config_json, symbolize_names: true)
config[:backend] = config[:backend].to_sym
from = config.delete(:data_from) # tags the data when several publishers share a channel
$stdout.sync = true

bus = MessageBus::Instance.new
bus.configure(config.merge(logger: Logger.new($stderr, level: Logger::WARN), keepalive_interval: 0))
puts JSON.generate(ready: true)
$stdin.gets

interval = interval_ms.to_f / 1000
1.upto(Integer(count)) do |i|
  line = { i: i }
  begin
    id = bus.publish(channel, from ? { "i" => i, "from" => from } : { "i" => i })
    line[:r] = id ? "id" : "queued"
    line[:id] = id
  rescue StandardError => e
    line[:r] = "error"
    line[:e] = "#{e.class}: #{e.message[0, 200]}"
  end
  puts JSON.generate(line)
  sleep interval
end

backend = bus.backend_instance
deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 20
while backend.respond_to?(:queued_publishes) && backend.queued_publishes.positive? &&
      Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
  sleep 0.02
end
queued = backend.respond_to?(:queued_publishes) ? backend.queued_publishes : 0
dropped = backend.respond_to?(:dropped_publishes) ? backend.dropped_publishes : 0
puts JSON.generate(done: true, queued: queued, dropped: dropped)
bus.destroy
