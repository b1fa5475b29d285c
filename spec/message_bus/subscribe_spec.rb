# frozen_string_literal: true

RSpec.describe "MessageBus subscriptions" do
  def collector
    received = Queue.new
    [received, proc { |m| received << m }]
  end

  def drain(queue, count, timeout: 5)
    Array.new(count) { Timeout.timeout(timeout) { queue.pop } }
  end

  it "delivers live messages decoded, on one dispatcher thread" do
    q, blk = collector
    bus.subscribe("/chan", &blk)
    bus.publish("/chan", { "x" => 1 }, user_ids: [7])
    msg = drain(q, 1).first
    expect([msg.channel, msg.data, msg.user_ids, msg.site_id]).to eq(["/chan", { "x" => 1 }, [7], nil])
    expect(msg.message_id).to be > 0
    expect(bus.listening?).to be(true)
  end

  it "delivers every channel to a subscription without a channel" do
    q, blk = collector
    bus.subscribe(&blk)
    bus.publish("/a", 1)
    bus.publish("/b", 2)
    expect(drain(q, 2).map(&:channel)).to eq(%w[/a /b])
  end

  it "keeps delivering to other subscribers when one raises, and logs it" do
    q, blk = collector
    bus.subscribe("/chan") { raise "boom" }
    bus.subscribe("/chan", &blk)
    bus.publish("/chan", "one")
    bus.publish("/chan", "two")
    expect(drain(q, 2).map(&:data)).to eq(%w[one two])
    expect(log_output.string).to include("boom")
  end

  it "unsubscribes one block or a whole channel, and is a no-op when nothing was subscribed" do
    q1, b1 = collector
    q2, b2 = collector
    bus.subscribe("/chan", &b1)
    bus.subscribe("/chan", &b2)
    bus.unsubscribe("/chan", &b1)
    bus.publish("/chan", "x")
    expect(drain(q2, 1).map(&:data)).to eq(["x"])
    expect(q1).to be_empty
    bus.unsubscribe("/chan")
    bus.publish("/chan", "y")
    bus.subscribe("/other", &b2)
    bus.publish("/other", "z")
    expect(drain(q2, 1).map(&:data)).to eq(["z"])
    expect { bus.unsubscribe("/never") }.not_to raise_error
    expect { bus.local_unsubscribe("/never") }.not_to raise_error
  end

  it "subscribe without a site receives every site; local_subscribe only the current one" do
    site = "one"
    bus.site_id_lookup { site }
    all, all_blk = collector
    local, local_blk = collector
    bus.subscribe("/chan", &all_blk)
    bus.local_subscribe("/chan", &local_blk)
    bus.publish("/chan", "for one")
    bus.publish("/chan", "for two", site_id: "two")
    expect(drain(all, 2).map { |m| [m.data, m.site_id] }).to eq([["for one", "one"], ["for two", "two"]])
    expect(drain(local, 1).map(&:data)).to eq(["for one"])
    expect(local).to be_empty
  end

  it "local_subscribe and local_unsubscribe on /global/ channels ignore the site (§9 Q28)" do
    bus.site_id_lookup { "one" }
    q, blk = collector
    bus.local_subscribe("/global/news", &blk)
    bus.publish("/global/news", "hi")
    expect(drain(q, 1).map { |m| [m.data, m.site_id] }).to eq([["hi", nil]])
    bus.local_unsubscribe("/global/news", &blk)
    bus.publish("/global/news", "again")
    bus.publish("/global/other", "sync")
    sleep 0.05
    expect(q).to be_empty
  end

  it "replays from a last id, then goes live, returning the wrapper to unsubscribe with" do
    3.times { |i| bus.publish("/chan", i) }
    first_id = bus.backlog("/chan").first.message_id
    q, blk = collector
    wrapper = bus.subscribe("/chan", first_id, &blk)
    expect(wrapper).not_to equal(blk)
    expect(drain(q, 2).map(&:data)).to eq([1, 2])
    bus.publish("/chan", 3)
    expect(drain(q, 1).map(&:data)).to eq([3])
    bus.unsubscribe("/chan", &wrapper)
    bus.publish("/chan", 4)
    bus.publish("/sync", 0)
    sleep 0.05
    expect(q).to be_empty
  end

  it "replay then live has no gap and no duplicate while another thread publishes" do
    total = 400
    publisher = Thread.new { total.times { |i| bus.publish("/race", i) } }
    sleep 0.001 until bus.last_id("/race").positive?
    seen = Queue.new
    bus.subscribe("/race", 0) { |m| seen << m.data }
    publisher.join
    values = wait_for(message: "all #{total} messages") { seen.size >= total && Array.new(seen.size) { seen.pop } }
    expect(values).to eq((0...total).to_a)
  end

  it "replays the global backlog by global id when no channel is given (§9 Q26)" do
    bus.publish("/a", "a1")
    mark = bus.publish("/b", "b1")
    bus.publish("/a", "a2")
    q, blk = collector
    bus.subscribe(nil, bus.backlog("/b").first.global_id, &blk)
    bus.publish("/c", "c1")
    expect(drain(q, 2).map(&:data)).to eq(%w[a2 c1])
    expect(mark).to be_a(Integer)
  end

  it "blocking_subscribe yields undecoded messages until global_unsubscribe" do
    bus.site_id_lookup { "s" }
    received = Queue.new
    thread = Thread.new { bus.blocking_subscribe("/chan") { |m| received << m } }
    wait_for { bus.backend_instance.subscribed }
    bus.publish("/other", "no")
    bus.publish("/chan", "yes")
    msg = Timeout.timeout(5) { received.pop }
    expect(msg.channel).to eq("/chan$|$s")
    expect(msg.data).to eq('{"data":"yes","user_ids":null,"group_ids":null,"client_ids":null}')
    expect(msg.site_id).to be_nil
    bus.backend_instance.global_unsubscribe
    expect(thread.join(5)).to eq(thread)
  end

  it "returns nil from subscribe while off and raises after destroy" do
    b = new_bus
    b.off
    expect(b.subscribe("/x") { nil }).to be_nil
    expect(b.local_subscribe("/x") { nil }).to be_nil
    b.on
    b.destroy
    expect { b.subscribe("/x") { nil } }.to raise_error(MessageBus::BusDestroyed)
  end

  it "uses a custom transport codec for storing and for subscribers" do
    codec = Class.new do
      def encode(hash) = "CODEC:#{Marshal.dump(hash).unpack1('H*')}"
      def decode(payload) = Marshal.load([payload.delete_prefix("CODEC:")].pack("H*")) # rubocop:disable Security/MarshalLoad
    end.new
    b = new_bus(transport_codec: codec)
    q, blk = collector
    b.subscribe("/chan", &blk)
    b.publish("/chan", { "sym" => :kept }, user_ids: [1])
    expect(b.backend_instance.backlog("/chan", 0).first.data).to start_with("CODEC:")
    msg = drain(q, 1).first
    expect([msg.data, msg.user_ids]).to eq([{ "sym" => :kept }, [1]])
  end

  it "logs and skips a message the codec cannot decode" do
    q, blk = collector
    bus.subscribe("/chan", &blk)
    bus.backend_instance.publish("/chan", "not json")
    bus.publish("/chan", "fine")
    expect(drain(q, 1).map(&:data)).to eq(["fine"])
    expect(log_output.string).to include("failed to decode")
  end

  it "hands warnings of the Rust core to the logger" do
    bus.subscribe("/chan") { nil }
    bus.backend_instance.publish("/chan", "not an envelope")
    request = MessageBus::Native::WebRequest.new("c", nil, "null", "[]", 0, [["/chan", 0]], [], :poll)
    MessageBus::Native::Connections.new(bus.backend_instance.native)._poll(request)
    wait_for(message: "the core's warning in the log") { log_output.string.include?("skipping message") }
  end
end
