# frozen_string_literal: true

require "spec_helper"

# Restarts a private redis-server (no persistence: its data is gone and the
# id counters restart) while two publisher processes publish numbered
# streams and this process subscribes. Runs whatever MESSAGE_BUS_BACKEND is.
#
# Guarantees checked: every publish that returned an id, or nil (queued in
# memory, flushed later), reaches the subscriber exactly once and in
# per-publisher order; publishes that raised are reported and excluded (they
# may or may not be delivered, never twice); the subscriber catches up after
# the restart, including when the new storage's ids pass its old position.
RSpec.describe "Redis restart during publishing", if: PrivateRedis.available? do
  include FaultHelpers

  let(:redis) { PrivateRedis.new.start }
  let(:config) { { backend: :redis, redis_config: { url: redis.url, db: 0 } } }
  let(:received) { Hash.new { |h, k| h[k] = [] } }
  let(:lock) { Mutex.new }

  def private_bus
    b = MessageBus::Instance.new
    b.configure(config.merge(logger: Logger.new(log_output), keepalive_interval: 0))
    (@private_buses ||= []) << b
    b
  end

  def subscribe_all(bus, *channels)
    channels.each do |channel|
      bus.subscribe(channel) { |m| lock.synchronize { received[channel] << m.data["i"] } }
    end
    bus.subscribe("/faults/probe") { |_m| lock.synchronize { received["/faults/probe"] << 1 } }
    wait_for(timeout: 10, message: "the subscription") do
      bus.publish("/faults/probe", { "i" => 0 })
      sleep 0.02
      lock.synchronize { received["/faults/probe"].any? }
    end
  end

  def got(channel) = lock.synchronize { received[channel].dup }

  after do
    (@publishers || []).each(&:stop)
    (@private_buses || []).each(&:destroy)
    redis.stop
  end

  %i[TERM KILL].each do |signal|
    it "delivers every published message exactly once, in order, across a restart (SIG#{signal})" do
      bus = private_bus
      bus.reset!
      channels = %w[/faults/p1 /faults/p2]
      subscribe_all(bus, *channels)
      @publishers = channels.map { |c| FaultHelpers::Publisher.new(config, c, 300, 3) }
      wait_for(timeout: 15, message: "publishers ready") { @publishers.all?(&:ready?) }
      @publishers.each(&:go)

      wait_for(timeout: 15, message: "a third of the messages") { channels.sum { |c| got(c).length } >= 200 }
      restarted_at = monotonic
      redis.restart(signal: signal)
      wait_for(timeout: 40, message: "publishers to finish") { @publishers.all?(&:finished?) }
      reports = nil
      begin
        wait_for(timeout: 15, message: "delivery of every published message") do
          reports = @publishers.map { |p| fault_report(p, got(p.channel)) }
          reports.all? { |r| r[:lost].empty? }
        end
      rescue RuntimeError
        nil # the expectations below say what is missing
      end
      reports = @publishers.map { |p| fault_report(p, got(p.channel)) }
      reports.each { |r| print_fault_report("redis restart SIG#{signal}", r) }
      printf("%-28s everything delivered %.2f s after the restart\n", "redis restart SIG#{signal}", monotonic - restarted_at)
      reports.each { |r| expect_nothing_lost(r) }
    end
  end

  it "catches up when the new storage's ids pass the subscriber's position before it reconnects" do
    bus = private_bus
    bus.reset!
    subscribe_all(bus, "/faults/a")
    publisher = private_bus
    1.upto(20) { |i| publisher.publish("/faults/a", { "i" => i }) }
    wait_for(message: "the first 20") { got("/faults/a").length == 20 }

    redis.restart
    # Right away, before the subscriber's reconnection (>= 100 ms later):
    # more messages than its position (global id 21) in the emptied storage.
    21.upto(80) { |i| publisher.publish("/faults/a", { "i" => i }) }
    wait_for(timeout: 10, message: "the publish queue to drain") { publisher.backend_instance.queued_publishes.zero? }
    begin
      wait_for(timeout: 10, message: "all 80") { got("/faults/a").length >= 80 }
    rescue RuntimeError
      nil
    end
    expect(got("/faults/a")).to eq((1..80).to_a)
  end
end
