# frozen_string_literal: true

RSpec.describe "MessageBus backlog reads" do
  it "reads a channel's backlog after a last id, ascending" do
    ids = 4.times.map { |i| bus.publish("/chan", i) }
    expect(bus.backlog("/chan").map(&:data)).to eq([0, 1, 2, 3])
    expect(bus.backlog("/chan", ids[1]).map(&:data)).to eq([2, 3])
    expect(bus.backlog("/chan", ids[1].to_s).map(&:data)).to eq([2, 3])
    expect(bus.backlog("/chan", ids.last)).to eq([])
    expect(bus.backlog("/nothing")).to eq([])
  end

  it "reads the global backlog in global id order with decoded channels and sites" do
    bus.publish("/a", 1)
    bus.publish("/b", 2, site_id: "s")
    bus.publish("/a", 3)
    msgs = bus.global_backlog
    expect(msgs.map { |m| [m.channel, m.site_id, m.data] }).to eq([["/a", nil, 1], ["/b", "s", 2], ["/a", nil, 3]])
    expect(msgs.map(&:global_id)).to eq(msgs.map(&:global_id).sort)
    expect(bus.global_backlog(msgs[1].global_id).map(&:data)).to eq([3])
    expect(bus.backlog(nil, msgs[0].global_id).map(&:data)).to eq([2, 3])
  end

  it "answers last_id, last_ids (in argument order, 0 for unknown) and last_message" do
    bus.publish("/a", "a1")
    id_b = bus.publish("/b", "b1")
    id_a = bus.publish("/a", "a2")
    expect(bus.last_id("/a")).to eq(id_a)
    expect(bus.last_id("/zzz")).to eq(0)
    expect(bus.last_ids("/b", "/zzz", "/a")).to eq({ "/b" => id_b, "/zzz" => 0, "/a" => id_a })
    expect(bus.last_ids).to eq({})
    expect(bus.last_message("/a").data).to eq("a2")
    expect(bus.last_message("/zzz")).to be_nil
  end

  it "keeps sites apart, reads them with an explicit site id, and shares /global/ channels" do
    bus.publish("/chan", "s1", site_id: "s1")
    bus.publish("/chan", "s2", site_id: "s2")
    bus.publish("/global/all", "g", site_id: "s1")
    expect(bus.backlog("/chan", 0, "s1").map(&:data)).to eq(["s1"])
    expect(bus.backlog("/chan", 0, "s2").map(&:data)).to eq(["s2"])
    expect(bus.backlog("/chan")).to eq([])
    expect(bus.last_ids("/chan", site_id: "s2").values.first).to be > 0
    expect(bus.backlog("/global/all", 0, "s2").map(&:data)).to eq(["g"])
  end

  it "encodes channels with the site lookup, called without arguments" do
    site = "alpha"
    bus.site_id_lookup do |*args|
      raise "lookup got #{args}" unless args.empty?

      site
    end
    bus.publish("/chan", "a")
    site = "beta"
    bus.publish("/chan", "b")
    expect(bus.backlog("/chan").map(&:data)).to eq(["b"])
    expect(bus.backlog("/chan", 0, "alpha").map(&:data)).to eq(["a"])
    expect(bus.encode_channel_name("/chan")).to eq("/chan$|$beta")
    expect(bus.encode_channel_name("/global/x")).to eq("/global/x")
    expect(bus.decode_channel_name("/chan$|$beta")).to eq(["/chan", "beta"])
    expect(bus.decode_channel_name("/chan$|$")).to eq(["/chan", nil])
  end

  it "a lookup returning nil still appends the site token (§9 Q29)" do
    bus.site_id_lookup { nil }
    bus.publish("/chan", "x")
    expect(bus.backend_instance.last_id("/chan$|$")).to be > 0
    expect(bus.backlog("/chan").first.site_id).to be_nil
  end

  it "raises a clear error for ids that are not integers, and keeps working" do
    bus.publish("/chan", "x")
    expect { bus.backlog("/chan", "abc") }.to raise_error(ArgumentError, /message id must be an Integer/)
    expect { bus.backlog("/chan", Object.new) }.to raise_error(ArgumentError)
    expect { bus.subscribe("/chan", "nope") { nil } }.to raise_error(ArgumentError)
    expect { bus.last_id(42) }.to raise_error(ArgumentError, /channel must be a String/)
    expect(bus.backlog("/chan").map(&:data)).to eq(["x"])
  end

  it "exposes the backend methods on backend_instance with encoded channels and undecoded messages" do
    backend = bus.backend_instance
    expect(backend).to be_a(MessageBus::Backends::Base)
    id = backend.publish("/raw", '{"data":1,"user_ids":null,"group_ids":null,"client_ids":null}')
    expect(backend.last_id("/raw")).to eq(id)
    expect(backend.last_ids("/raw", "/none")).to eq([id, 0])
    msg = backend.get_message("/raw", id)
    expect([msg.channel, msg.data]).to eq(["/raw", '{"data":1,"user_ids":null,"group_ids":null,"client_ids":null}'])
    expect(backend.get_message("/raw", id + 100)).to be_nil
    expect(backend.backlog("/raw", 0).length).to eq(1)
    expect(backend.global_backlog(0).map(&:global_id)).to include(msg.global_id)
    expect(MessageBus::Backends::Base::UNSUB_MESSAGE).to eq("$$UNSUBSCRIBE")
  end

  it "trims by max_backlog_size and max_global_backlog_size set on the backend" do
    backend = bus.backend_instance
    expect([backend.max_backlog_size, backend.max_global_backlog_size, backend.clear_every]).to eq([1000, 2000, 1])
    backend.max_backlog_size = 2
    backend.max_global_backlog_size = 3
    4.times { |i| bus.publish("/a", i) }
    expect(bus.backlog("/a").map(&:data)).to eq([2, 3])
    bus.publish("/b", "b")
    bus.publish("/b", "c")
    expect(bus.global_backlog.map(&:data)).to eq([3, "b", "c"])
  end

  it "clear_every from the configuration delays trimming" do
    b = new_bus(clear_every: 3)
    b.backend_instance.max_backlog_size = 1
    b.publish("/a", 1)
    b.publish("/a", 2)
    expect(b.backlog("/a").length).to eq(2)
    b.publish("/a", 3)
    expect(b.backlog("/a").map(&:data)).to eq([3])
    expect { b.backend_instance.clear_every = 0 }.to raise_error(ArgumentError)
  end

  it "reset! deletes everything and restarts ids; expire_all_backlogs! empties backlogs" do
    bus.publish("/a", 1)
    bus.publish("/a", 2)
    bus.backend_instance.expire_all_backlogs!
    expect(bus.backlog("/a")).to eq([])
    bus.reset!
    expect(bus.last_id("/a")).to eq(0)
    expect(bus.publish("/a", 3)).to eq(1)
  end
end
