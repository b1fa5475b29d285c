# frozen_string_literal: true

require "spec_helper"

# Timeout and Thread#kill interrupt a call blocked on Redis (the calling
# thread waits for the reply itself, GVL released), and the bus keeps
# working afterwards.
RSpec.describe "A Redis call interrupted by Timeout or Thread#kill", if: PrivateRedis.available? do
  let(:redis) { PrivateRedis.new.start }

  def pause(mode)
    system("redis-cli", "-p", redis.port.to_s, "CLIENT", "PAUSE", "5000", mode, out: File::NULL)
  end

  def unpause
    system("redis-cli", "-p", redis.port.to_s, "CLIENT", "UNPAUSE", out: File::NULL)
  end

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  before do
    @bus = MessageBus::Instance.new
    @bus.configure(backend: :redis, redis_config: { url: redis.url, db: 0 }, logger: Logger.new(nil))
    expect(@bus.publish("/interrupted/warmup", "w")).to be_a(Integer)
  end

  after do
    @blocked&.kill
    @bus&.destroy
    redis.stop
  end

  it "lets Timeout end a read long before Redis answers" do
    pause("ALL")
    started = now
    expect { Timeout.timeout(0.3) { @bus.last_id("/interrupted/warmup") } }.to raise_error(Timeout::Error)
    expect(now - started).to be < 4 # the pause lasts 5 s
    unpause
    expect(@bus.last_id("/interrupted/warmup")).to eq(1)
  end

  it "lets Thread#kill end a publish waiting for its reply" do
    pause("WRITE")
    started = now
    @blocked = Thread.new { @bus.publish("/interrupted/killed", "x") }
    deadline = now + 5
    sleep 0.01 until @blocked.status == "sleep" || now > deadline
    @blocked.kill
    expect(@blocked.join(3)).to eq(@blocked)
    expect(now - started).to be < 4
    unpause
    # The killed call's connection was closed, not left with a reply pending.
    10.times { |i| expect(@bus.publish("/interrupted/after", i.to_s)).to eq(i + 1) }
    expect(@bus.backlog("/interrupted/after").map(&:data)).to eq(Array.new(10, &:to_s))
  end
end
