# frozen_string_literal: true

RSpec.describe MessageBus::LogLimiter do
  let(:limiter) { described_class.new(window: 10.0, burst: 3) }

  it "lets a burst through per category and window, then says how many it suppressed" do
    lines = (1..8).flat_map { |n| limiter.lines(:reconnect, "lost #{n}", 100.0 + n * 0.1) }
    expect(lines).to eq(["MessageBus: lost 1", "MessageBus: lost 2", "MessageBus: lost 3"])
    expect(limiter.lines(:other, "different", 101.0)).to eq(["MessageBus: different"])
    expect(limiter.lines(:reconnect, "lost 9", 111.0)).to eq(
      ["MessageBus: 5 similar warnings suppressed in the last 10 s: reconnect", "MessageBus: lost 9"]
    )
    expect(limiter.suppressed_total).to eq(5)
  end

  it "rate-limits a storm of the core's warnings on a bus's logger" do
    bus = new_bus(logger: Logger.new(log_output))
    50.times { |n| bus.log_warning("client #{n} went away") }
    expect(log_output.string.lines.grep(/MessageBus: client \d+ went away/).length).to eq(MessageBus::LogLimiter::BURST)
    expect(bus.metrics_text).to match(/^message_bus_log_lines_dropped_total #{50 - MessageBus::LogLimiter::BURST}$/)
  end
end
