# frozen_string_literal: true

RSpec.describe MessageBus::Message do
  it "is a Struct of the four stored fields with extra decoded attributes" do
    m = described_class.new(1, 2, "/c", "d")
    m.site_id = "s"
    m.user_ids = [1]
    expect(m.to_a).to eq([1, 2, "/c", "d"])
    expect(m.to_h).to eq(global_id: 1, message_id: 2, channel: "/c", data: "d")
    expect(described_class.members).to eq(%i[global_id message_id channel data])
    expect(m).to eq(described_class.new(1, 2, "/c", "d"))
    expect(m).not_to eq(described_class.new(1, 3, "/c", "d"))
    expect([m.site_id, m.user_ids, m.group_ids, m.client_ids]).to eq(["s", [1], nil, nil])
  end

  it "encodes and decodes the reference wire string, escaping pipes in channels" do
    m = described_class.new(3, 1, "/foo$|$s1", "x|y")
    expect(m.encode).to eq("3|1|/foo$$$123$$$s1|x|y")
    expect(m.encode_without_ids).to eq("/foo$$$123$$$s1|x|y")
    expect(described_class.decode(m.encode)).to eq(m)
    expect { described_class.decode("1|2") }.to raise_error(ArgumentError)
  end
end
