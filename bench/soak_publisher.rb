# frozen_string_literal: true

# One publisher process of bench/soak (not run by CI).
#   ruby bench/soak_publisher.rb INDEX PUBLISHERS COUNT INTERVAL_MS
# Publishes COUNT messages {"n": INDEX + PUBLISHERS * i, "t": µs since epoch}
# to /bench, INTERVAL_MS apart, on the backend of spec/support/spec_helpers.rb
# (MESSAGE_BUS_BACKEND, as the server), then prints one summary JSON line.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "message_bus"
require "json"
require "logger"
require_relative "../spec/support/spec_helpers"

index, publishers, count, interval_ms = ARGV.map { |a| Integer(a) }
bus = MessageBus::Instance.new
bus.configure(SpecHelpers.backend_config.merge(logger: Logger.new($stderr, level: Logger::WARN), keepalive_interval: 0))
published = 0
errors = []
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
count.times do |i|
  begin
    bus.publish("/bench", { "n" => index + (publishers * i), "t" => (Time.now.to_r * 1_000_000).to_i })
    published += 1
  rescue StandardError => e
    errors << "#{e.class}: #{e.message[0, 120]}"
  end
  # Keep the schedule (publish time included).
  delay = started + ((i + 1) * interval_ms / 1000.0) - Process.clock_gettime(Process::CLOCK_MONOTONIC)
  sleep delay if delay.positive?
end
puts JSON.generate(publisher: index, published: published, errors: errors.size, first_errors: errors.first(3))
bus.destroy
