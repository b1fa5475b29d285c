# frozen_string_literal: true

# The backend objects' own methods, as the reference's Backends::Base
# documents them (COMPAT.md §1.12), on the backend of this pass (memory,
# Redis or PostgreSQL): replay then live for `subscribe(channel, last_id)`
# and `global_subscribe(last_id)`, and the rest of the contract.
RSpec.describe "The backend contract" do
  let(:backend) { bus.backend_instance }

  # Runs `blk` (a blocking subscription) in a thread; returns what it yielded.
  def collect(&blk)
    got = Queue.new
    thread = Thread.new { blk.call(got) }
    thread.report_on_exception = false
    (@threads ||= []) << thread
    got
  end

  def take(queue, count, timeout: 10)
    Array.new(count) { Timeout.timeout(timeout) { queue.pop } }
  end

  after do
    backend.global_unsubscribe
    (@threads || []).each { |t| t.join(5) || t.kill }
  end

  it "subscribe(channel, last_id) replays the channel's messages after last_id, then goes live" do
    ids = %w[x0 x1 x2].map { |d| backend.publish("/echo", d) }
    backend.publish("/other", "not mine")
    from_zero = collect { |q| backend.subscribe("/echo", 0) { |m| q << m.data } }
    from_first = collect { |q| backend.subscribe("/echo", ids[0]) { |m| q << m.data } }
    expect(take(from_zero, 3)).to eq(%w[x0 x1 x2])
    expect(take(from_first, 2)).to eq(%w[x1 x2])
    backend.publish("/other", "still not mine")
    backend.publish("/echo", "live")
    expect(take(from_zero, 1)).to eq(["live"])
    expect(take(from_first, 1)).to eq(["live"])
    sleep 0.2
    expect(from_zero).to be_empty, "no duplicate after the replay"
  end

  it "subscribe(channel) without last_id delivers only what is published later" do
    backend.publish("/echo", "old")
    live = collect { |q| backend.subscribe("/echo") { |m| q << m.data } }
    wait_for(message: "subscribed") { backend.subscribed }
    backend.publish("/echo", "new")
    expect(take(live, 1)).to eq(["new"])
  end

  it "global_subscribe(last_id) replays every channel after that global id, then goes live" do
    first = backend.publish("/a", "a1")
    backend.publish("/b", "b1")
    backend.publish("/a", "a2")
    global_first = backend.get_message("/a", first).global_id
    got = collect { |q| backend.global_subscribe(global_first) { |m| q << [m.channel, m.data] } }
    expect(take(got, 2)).to eq([["/b", "b1"], ["/a", "a2"]])
    backend.publish("/b", "b2")
    expect(take(got, 1)).to eq([["/b", "b2"]])
  end

  it "global_unsubscribe ends the blocking subscriptions" do
    thread = Thread.new { backend.global_subscribe { nil } }
    wait_for(message: "subscribed") { backend.subscribed }
    backend.global_unsubscribe
    expect(thread.join(10)).to eq(thread)
  end

  it "has a storage epoch: the same for every process on the store, a new one after reset!" do
    next expect(bus.epoch).to be_nil if SpecHelpers.backend_name == :ruby_memory

    epoch = bus.epoch
    expect(epoch).to match(/\A\h{32}\z/)
    expect(bus.epoch).to eq(epoch)
    other = new_bus(store: 0) # resets the store: a new epoch, which this bus reads again when it looks
    fresh = other.epoch
    expect(fresh).to match(/\A\h{32}\z/)
    expect(fresh).not_to eq(epoch)
    next if SpecHelpers.backend_name == :memory # per process: nothing to share

    expect(bus.backend_instance.native._refresh_epoch).to eq(fresh)
    third = MessageBus::Instance.new
    third.configure(SpecHelpers.backend_config.merge(logger: Logger.new(log_output)))
    expect(third.epoch).to eq(fresh)
  ensure
    third&.destroy
  end

  it "publish options, backlog, last_id(s) and get_message" do
    id1 = backend.publish("/c", "one")
    id2 = backend.publish("/c", "two", max_backlog_size: 1)
    expect(backend.backlog("/c", 0).map(&:data)).to eq(["two"])
    expect(backend.last_id("/c")).to eq(id2)
    expect(backend.last_ids("/c", "/none")).to eq([id2, 0])
    expect(backend.get_message("/c", id2).data).to eq("two")
    expect(backend.get_message("/c", id1)).to be_nil
    expect(backend.global_backlog(0).map(&:data)).to include("two")
  end

  it "ten processes forked right after a publish, each subscribing from 0, get every message" do
    skip "the memory backend is per process" if SpecHelpers.backend_name == :memory

    5.times { |i| backend.publish("/forked", "before #{i}") }
    readers = Array.new(10) do
      reader, writer = IO.pipe
      pid = fork do
        reader.close
        got = []
        Timeout.timeout(20) do
          backend.subscribe("/forked", 0) do |m|
            got << m.data
            break if got.length == 10
          end
        end
        writer.write(JSON.generate(got))
        exit!(0)
      rescue Exception # rubocop:disable Lint/RescueException -- report whatever ended the child
        writer.write(JSON.generate(got))
        exit!(1)
      end
      writer.close
      [pid, reader]
    end
    5.times { |i| backend.publish("/forked", "after #{i}") }
    expected = Array.new(5) { |i| "before #{i}" } + Array.new(5) { |i| "after #{i}" }
    results = readers.map do |pid, reader|
      out = SpecHelpers.read_child(reader, pid)
      Process.wait(pid)
      JSON.parse(out)
    end
    expect(results.sum(&:length)).to eq(100)
    results.each { |got| expect(got).to eq(expected) }
  end
end
