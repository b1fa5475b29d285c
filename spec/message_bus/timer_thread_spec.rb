# frozen_string_literal: true

RSpec.describe MessageBus::TimerThread do
  let(:timer) { described_class.new }

  after { timer.stop }

  it "runs queued jobs in due-time order" do
    order = Queue.new
    timer.queue(0.05) { order << :late }
    timer.queue(0.01) { order << :early }
    expect(Array.new(2) { Timeout.timeout(2) { order.pop } }).to eq(%i[early late])
  end

  it "cancels queued and repeating jobs" do
    ran = Queue.new
    timer.queue(0.01) { ran << :canceled }.cancel
    every = timer.every(0.01) { ran << :tick }
    expect(Timeout.timeout(2) { ran.pop }).to eq(:tick)
    every.cancel
    sleep 0.05
    ran.clear
    sleep 0.05
    expect(ran).to be_empty
  end

  it "reports job errors to on_error and keeps running" do
    errors = Queue.new
    ran = Queue.new
    timer.on_error { |e| errors << e.message }
    timer.queue { raise "job failed" }
    timer.queue(0.01) { ran << :after }
    expect(Timeout.timeout(2) { errors.pop }).to eq("job failed")
    expect(Timeout.timeout(2) { ran.pop }).to eq(:after)
  end
end
