# frozen_string_literal: true

RSpec.describe "MessageBus#publish" do
  it "returns increasing message ids and stores the data" do
    ids = 3.times.map { |i| bus.publish("/chan", "m#{i}") }
    expect(ids).to eq(ids.sort)
    expect(ids.uniq.length).to eq(3)
    expect(bus.backlog("/chan").map(&:data)).to eq(%w[m0 m1 m2])
  end

  it "stores the codec envelope with targets, nil targets kept" do
    bus.publish("/chan", { "a" => 1 }, user_ids: [1, 2], client_ids: ["c"])
    raw = bus.backend_instance.backlog("/chan", 0).first
    expect(raw.data).to eq('{"data":{"a":1},"user_ids":[1,2],"group_ids":null,"client_ids":["c"]}')
    msg = bus.backlog("/chan").first
    expect([msg.data, msg.user_ids, msg.group_ids, msg.client_ids]).to eq([{ "a" => 1 }, [1, 2], nil, ["c"]])
  end

  it "stores an untargeted envelope byte for byte as the codec would encode the whole Hash" do
    values = [nil, "", "h\u00e9 \"q\" \\ \u2028 </script>", 0, -7, 2.5, true, [1, "2", nil], { "a" => { "b" => [{}] } },
              { sym: :val }, "x" * 5000]
    values.each { |v| bus.publish("/enc", v) }
    with_opts = bus.publish("/enc", "opts", max_backlog_size: 100)
    stored = bus.backend_instance.backlog(bus.send(:encode_channel_name, "/enc"), 0).map(&:data)
    expected = (values + ["opts"]).map do |v|
      JSON.generate({ "data" => v, "user_ids" => nil, "group_ids" => nil, "client_ids" => nil })
    end
    expect(with_opts).to be_a(Integer)
    expect(stored).to eq(expected)
  end

  # The extension writes envelopes of plain data itself; every value, plain
  # or not, must come out as Ruby's generator writes the whole Hash.
  it "writes random data's envelope byte for byte as Ruby's JSON generator does" do
    rng = Random.new(20_261_202)
    chars = ["a", "\u00e9", "\u2028", "\u{1f600}", "\"", "\\", "/", "\u0000", "\u001f", "\n", "\t", "\b", "\f", "\r",
             "\u007f", " "]
    text = -> { Array.new(rng.rand(0..6)) { chars.sample(random: rng) }.join }
    value = lambda do |depth|
      case rng.rand(depth > 3 ? 7 : 10)
      when 0 then nil
      when 1 then rng.rand(2).zero?
      when 2 then rng.rand(-2**62..2**62)
      when 3 then text.call
      when 4 then [2**64 + rng.rand(100), rng.rand * 1e6, :sym, text.call.b, 1.0 / 3].sample(random: rng)
      when 5 then text.call.encode("UTF-16LE")
      when 6 then rng.rand(-1000..1000)
      when 7 then Array.new(rng.rand(0..4)) { value.call(depth + 1) }
      else
        Array.new(rng.rand(0..4)) { [[text.call, text.call.to_sym].sample(random: rng), value.call(depth + 1)] }.to_h
      end
    end
    values = Array.new(300) { value.call(0) }
    values << Array.new(40) { [] }.inject([1]) { |inner, _| [inner] } # deeper than the extension goes
    values.each { |v| bus.publish("/rand", v) }
    stored = bus.backend_instance.backlog(bus.send(:encode_channel_name, "/rand"), 0).map(&:data)
    expected = values.map { |v| JSON.generate({ "data" => v, "user_ids" => nil, "group_ids" => nil, "client_ids" => nil }) }
    expect(stored.size).to eq(values.size)
    stored.zip(expected, values).each do |got, want, v|
      expect(got).to eq(want), "for #{v.inspect}"
    end
  end

  it "refuses data the JSON generator refuses, with InvalidMessage, storing nothing" do
    ["\xff".b, "\xff".dup.force_encoding("UTF-8"), { "k" => "\xc3" }, [Float::NAN]].each do |bad|
      expect { bus.publish("/bad", bad) }.to raise_error(MessageBus::InvalidMessage, /cannot encode/)
    end
    expect(bus.last_id("/bad")).to eq(0)
  end

  it "lets application to_json speak for String and Hash subclasses" do
    klass = Class.new(Hash) { def to_json(*) = '"custom"' }
    data = klass.new.merge!("a" => 1)
    bus.publish("/custom", data)
    expect(bus.backend_instance.backlog("/custom", 0).first.data).to eq(
      JSON.generate({ "data" => data, "user_ids" => nil, "group_ids" => nil, "client_ids" => nil })
    )
  end

  it "round-trips data through JSON (symbols become strings)" do
    bus.publish("/chan", { sym: :val, n: 1.5 })
    expect(bus.backlog("/chan").first.data).to eq({ "sym" => "val", "n" => 1.5 })
  end

  it "rejects user_ids and group_ids on /global/ channels but allows client_ids" do
    expect { bus.publish("/global/x", "d", user_ids: [1]) }.to raise_error(MessageBus::InvalidMessage)
    expect { bus.publish("/global/x", "d", group_ids: []) }.to raise_error(MessageBus::InvalidMessage)
    expect(bus.publish("/global/x", "d", client_ids: ["a"])).to be_a(Integer)
  end

  it "rejects empty target lists with InvalidMessageTarget" do
    %i[user_ids group_ids client_ids].each do |key|
      expect { bus.publish("/chan", "d", key => []) }.to raise_error(MessageBus::InvalidMessageTarget)
    end
    expect(MessageBus::InvalidMessageTarget.ancestors).to include(MessageBus::InvalidMessage)
  end

  it "raises a clear error for a non-String channel and keeps working" do
    bus.publish("/chan", "before")
    expect { bus.publish(:chan, "d") }.to raise_error(ArgumentError, /channel must be a String/)
    expect { bus.publish(nil, "d") }.to raise_error(ArgumentError)
    bus.publish("/chan", "after")
    expect(bus.backlog("/chan").map(&:data)).to eq(%w[before after])
  end

  it "raises ArgumentError for a channel containing the site token when sites apply" do
    expect { bus.publish("/a$|$b", "d", site_id: "s") }.to raise_error(ArgumentError)
    bus.site_id_lookup { "s" }
    expect { bus.publish("/a$|$b", "d") }.to raise_error(ArgumentError)
  end

  it "raises InvalidMessage when the codec cannot encode the data, losing nothing stored" do
    bus.publish("/chan", "ok")
    expect { bus.publish("/chan", "\xff\xfe".dup.force_encoding("UTF-8")) }
      .to raise_error(MessageBus::InvalidMessage, /cannot encode/)
    expect { bus.publish("/chan", Float::NAN) }.to raise_error(MessageBus::InvalidMessage)
    expect(bus.backlog("/chan").map(&:data)).to eq(["ok"])
    expect(bus.publish("/chan", "still ok")).to be_a(Integer)
  end

  it "scopes to a site with site_id, which overrides the lookup and is ignored for /global/" do
    bus.site_id_lookup { "lookup" }
    bus.publish("/chan", "a", site_id: "explicit")
    bus.publish("/chan", "b")
    bus.publish("/global/g", "c", site_id: "explicit")
    expect(bus.backlog("/chan", 0, "explicit").map(&:data)).to eq(["a"])
    expect(bus.backlog("/chan").map(&:data)).to eq(["b"])
    msg = bus.backlog("/chan", 0, "explicit").first
    expect([msg.channel, msg.site_id]).to eq(%w[/chan explicit])
    expect(bus.backlog("/global/g").first.site_id).to be_nil
  end

  it "honours max_backlog_size per publish" do
    5.times { |i| bus.publish("/chan", i, max_backlog_size: 2) }
    expect(bus.backlog("/chan").map(&:data)).to eq([3, 4])
  end

  it "honours max_backlog_size and max_backlog_age together" do
    5.times { |i| bus.publish("/chan", i, max_backlog_size: 2, max_backlog_age: 100) }
    expect(bus.backlog("/chan").map(&:data)).to eq([3, 4])
  end

  it "expires a channel after max_backlog_age seconds without publishes" do
    bus.publish("/short", "x", max_backlog_age: 1)
    bus.publish("/long", "y")
    expect(bus.last_id("/short")).to be > 0
    if SpecHelpers.backend_name == :postgres
      # PostgreSQL: rows expire by age, table-wide, only when a publish trims
      # (COMPAT.md §4.3.4, §9 Q7)
      sleep 1.2
      expect(bus.last_id("/short")).to be > 0
      bus.publish("/trigger", "z", max_backlog_age: 1)
      expect(bus.last_id("/short")).to eq(0)
      expect(bus.backlog("/long")).to be_empty
      expect(bus.backlog("/trigger").map(&:data)).to eq(["z"])
    else
      wait_for(timeout: 5, message: "expiry") { bus.last_id("/short").zero? }
      expect(bus.backlog("/short")).to be_empty
      expect(bus.backlog("/long").map(&:data)).to eq(["y"])
    end
  end

  it "returns nil and stores nothing while off; publishes again after on" do
    bus.off
    expect(bus.publish("/chan", "x")).to be_nil
    bus.on
    expect(bus.backlog("/chan")).to be_empty
    bus.off(disable_publish: false)
    expect(bus.publish("/chan", "y")).to be_a(Integer)
    expect(bus.backlog("/chan").map(&:data)).to eq(["y"])
  end

  it "raises BusDestroyed after destroy" do
    b = new_bus
    b.destroy
    expect { b.publish("/chan", "x") }.to raise_error(MessageBus::BusDestroyed)
  end

  it "checks off before destroyed" do
    b = new_bus
    b.destroy
    b.off
    expect(b.publish("/chan", "x")).to be_nil
  end
end
