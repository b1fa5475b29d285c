# frozen_string_literal: true

require "spec_helper"

# Timeout and Thread#kill interrupt a call blocked on Redis, whether the
# calling thread waits for the reply itself (GVL released) or through the
# runtime, and the bus keeps working afterwards. Redis is frozen (SIGSTOP)
# for as long as the call must stay blocked, so the interruption provably
# ends the call before Redis could answer, however slow the machine.
RSpec.describe "A Redis call interrupted by Timeout or Thread#kill", if: PrivateRedis.available? do
  let(:redis) { PrivateRedis.new.start }

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  before do
    @bus = MessageBus::Instance.new
    @bus.configure(backend: :redis, redis_config: { url: redis.url, db: 0 }, logger: Logger.new(nil))
    expect(@bus.publish("/interrupted/warmup", "w")).to be_a(Integer)
  end

  after do
    redis.thaw
    @blocked&.kill
    @bus&.destroy
    redis.stop
  end

  FaultHelpers.on_both_call_paths(self, "MESSAGE_BUS_REDIS_DIRECT") do
    it "lets Timeout end a read while Redis cannot answer" do
      redis.freeze
      @blocked = Thread.new do
        Timeout.timeout(0.3) { @bus.last_id("/interrupted/warmup") }
      rescue Timeout::Error => e
        e
      end
      expect(@blocked.join(30)).to eq(@blocked), "the read was still blocked 30 s after its 0.3 s Timeout"
      expect(@blocked.value).to be_a(Timeout::Error)
      redis.thaw
      expect(@bus.last_id("/interrupted/warmup")).to eq(1)
    end

    it "lets Thread#kill end a publish waiting for its reply" do
      redis.freeze
      @blocked = Thread.new { @bus.publish("/interrupted/killed", "x") }
      deadline = now + 30
      sleep 0.01 until @blocked.status == "sleep" || now > deadline
      expect(@blocked.status).to eq("sleep")
      @blocked.kill
      expect(@blocked.join(30)).to eq(@blocked), "the killed publish was still blocked 30 s later"
      redis.thaw
      # The killed call's connection was closed, not left with a reply pending.
      10.times { |i| expect(@bus.publish("/interrupted/after", i.to_s)).to eq(i + 1) }
      expect(@bus.backlog("/interrupted/after").map(&:data)).to eq(Array.new(10, &:to_s))
    end
  end
end
