# frozen_string_literal: true

RSpec.describe "MessageBus under concurrency" do
  it "many threads publishing at once: no id reused, none lost, per-channel order kept" do
    threads = 8
    per_thread = 250
    received = Queue.new
    bus.subscribe { |m| received << m }
    ids = Queue.new
    workers = Array.new(threads) do |t|
      Thread.new do
        per_thread.times { |i| ids << [t, i, bus.publish("/t#{t % 4}", [t, i])] }
      end
    end
    workers.each(&:join)
    all_ids = Array.new(ids.size) { ids.pop }
    expect(all_ids.length).to eq(threads * per_thread)
    # ids are unique per channel (Redis: dense per channel; memory: global)
    all_ids.group_by { |t, _, _| t % 4 }.each_value do |list|
      expect(list.map(&:last).uniq.length).to eq(list.length)
    end

    msgs = wait_for(message: "every message delivered") do
      received.size >= threads * per_thread && Array.new(received.size) { received.pop }
    end
    expect(msgs.length).to eq(threads * per_thread)
    expect(msgs.map(&:global_id)).to eq(msgs.map(&:global_id).sort)
    msgs.group_by(&:channel).each_value do |list|
      ids_in_channel = list.map(&:message_id)
      expect(ids_in_channel).to eq(ids_in_channel.sort)
      list.group_by { |m| m.data[0] }.each_value do |from_thread|
        expect(from_thread.map { |m| m.data[1] }).to eq((0...per_thread).to_a)
      end
    end
  end

  it "reads backlogs while other threads publish" do
    bus # created (and reset) once, before the writer thread can race to create another
    writer = Thread.new { 500.times { |i| bus.publish("/rw", i) } }
    reads = 0
    while writer.alive?
      data = bus.backlog("/rw").map(&:data)
      expect(data).to eq((0...data.length).to_a)
      reads += 1
    end
    writer.join
    expect(bus.backlog("/rw").length).to eq(500)
    expect(reads).to be > 0
  end
end
