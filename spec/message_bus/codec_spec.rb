# frozen_string_literal: true

# The default codec reads plain JSON in the extension; whatever it reads
# must be exactly what JSON.parse reads (same classes, same key order, same
# encodings), and whatever JSON.parse refuses it must refuse the same way.
RSpec.describe MessageBus::Codec::Json do
  subject(:codec) { described_class.new }

  # Same value, class for class (1 and 1.0 differ), keys in the same order.
  def same_value?(got, want)
    return false unless got.instance_of?(want.class)

    case want
    when Hash then got.keys == want.keys && want.all? { |k, v| same_value?(got[k], v) }
    when Array then got.size == want.size && got.zip(want).all? { |g, w| same_value?(g, w) }
    when String then got == want && got.encoding == want.encoding && got.frozen? == want.frozen?
    when Float then got.eql?(want) || (got.nan? && want.nan?)
    else got.eql?(want)
    end
  end

  def expect_read_as_json_parse_does(payload)
    want = JSON.parse(payload)
    got = codec.decode(payload)
    expect(same_value?(got, want)).to be(true), "for #{payload}: #{got.inspect} against #{want.inspect}"
  end

  it "reads random envelopes as JSON.parse does" do
    rng = Random.new(20_261_203)
    chars = ["a", "\u00e9", "\u2028", "\u{1f600}", "\"", "\\", "/", "\u0000", "\u001f", "\n", "\t", "\u007f", " "]
    text = -> { Array.new(rng.rand(0..6)) { chars.sample(random: rng) }.join }
    value = lambda do |depth|
      case rng.rand(depth > 3 ? 7 : 9)
      when 0 then nil
      when 1 then rng.rand(2).zero?
      when 2 then rng.rand(-2**63..(2**64) - 1)
      when 3 then text.call
      when 4 then [2**64 + rng.rand(100), -2**63 - 1, rng.rand * 1e6, 1.0 / 3, -0.0, 1e300].sample(random: rng)
      when 5, 6 then rng.rand(-1000..1000)
      when 7 then Array.new(rng.rand(0..4)) { value.call(depth + 1) }
      else Array.new(rng.rand(0..4)) { [text.call, value.call(depth + 1)] }.to_h
      end
    end
    payloads = Array.new(400) { JSON.generate({ "data" => value.call(0), "user_ids" => [rng.rand(100)] }) }
    payloads << JSON.generate({ "data" => Array.new(60) { [] }.inject([1]) { |inner, _| [inner] } }) # deep, still valid
    payloads.each { |payload| expect_read_as_json_parse_does(payload) }
  end

  it "reads what JSON.parse reads in edge cases: repeated keys, escapes, whitespace, big numbers" do
    ['{"a":1,"b":2,"a":3}', '{"s":"\\u00e9\\ud83d\\ude00\\/\\b\\f\\n\\r\\t\\"\\\\"}', " \n{ \"a\" : [ 1 , -0 , true ] }\t",
     '{"big":123456789012345678901234567890,"neg":-9223372036854775809,"u":18446744073709551615}',
     '{"f":1E2,"g":-0.0,"h":1e-320}', '{"":null}', "[]", '"text"', "12", "null", "false"].each do |payload|
      expect_read_as_json_parse_does(payload)
    end
  end

  it "reads a binary or US-ASCII payload as UTF-8 text, like JSON.parse" do
    payload = JSON.generate({ "data" => "\u00e9t\u00e9" })
    [payload.b, payload.encode("UTF-8").force_encoding("US-ASCII")].each do |encoded|
      expect(same_value?(codec.decode(encoded), JSON.parse(encoded))).to be(true)
    end
  end

  it "refuses what JSON.parse refuses, with its errors" do
    ['{"a":', '{"a":1} x', "{'a':1}", '{"a":NaN}', '{"s":"\\ud800"}', "\xff\xfe".b, ""].each do |payload|
      want = begin
        JSON.parse(payload)
        nil
      rescue JSON::ParserError => e
        e.class
      end
      got = begin
        codec.decode(payload)
        nil
      rescue JSON::ParserError => e
        e.class
      end
      expect(got).to eq(want), "for #{payload.inspect}"
    end
    too_deep = "#{'[' * 101}#{']' * 101}"
    expect { codec.decode(too_deep) }.to raise_error(JSON::NestingError)
  end

  it "reads plain JSON in the extension, and leaves floats and deep data to JSON.parse" do
    plain = '{"data":{"n":1,"t":"x"},"user_ids":null}'
    expect(MessageBus::Native._decode_json(plain)).to eq({ "data" => { "n" => 1, "t" => "x" }, "user_ids" => nil })
    expect(MessageBus::Native._decode_json('{"data":1.5}')).to be_nil
    expect(MessageBus::Native._decode_json("#{'[' * 40}#{']' * 40}")).to be_nil
    expect(MessageBus::Native._decode_json('{"a":')).to be_nil
  end

  it "raises TypeError for a payload that is not a String" do
    expect { codec.decode(nil) }.to raise_error(TypeError)
  end

  it "decodes backlogs and subscriptions through it" do
    bus = MessageBus::Instance.new
    bus.configure(backend: :memory, logger: Logger.new(nil))
    bus.publish("/codec", { "n" => 1, "nested" => [{ "x" => nil }] }, user_ids: [7])
    message = bus.backlog("/codec").last
    expect(message.data).to eq({ "n" => 1, "nested" => [{ "x" => nil }] })
    expect(message.user_ids).to eq([7])
  ensure
    bus&.destroy
  end
end
