# frozen_string_literal: true

require "spec_helper"

# A signal whose Ruby handler raises nothing interrupts a publish that waits
# for Redis: the publish resumes and is stored once, not sent again.
RSpec.describe "A publish interrupted by a handled signal", if: PrivateRedis.available? do
  let(:redis) { PrivateRedis.new.start }

  after do
    @bus&.destroy
    redis.stop
    trap("USR2", "DEFAULT")
  end

  it "is stored exactly once" do
    @bus = MessageBus::Instance.new
    @bus.configure(backend: :redis, redis_config: { url: redis.url, db: 0 }, logger: Logger.new(nil))
    expect(@bus.publish("/interrupted/warmup", "w")).to be_a(Integer)
    handled = 0
    trap("USR2") { handled += 1 }
    # Writes (and scripts) wait 600 ms; meanwhile the handler runs twice.
    system("redis-cli", "-p", redis.port.to_s, "CLIENT", "PAUSE", "600", "WRITE", out: File::NULL)
    signaller = Thread.new do
      2.times do
        sleep 0.15
        Process.kill("USR2", Process.pid)
      end
    end
    id = @bus.publish("/interrupted", "once")
    signaller.join
    expect(handled).to eq(2)
    expect(id).to eq(1)
    expect(@bus.backlog("/interrupted").map(&:data)).to eq(["once"])
    expect(@bus.last_id("/interrupted")).to eq(1)
  end
end
