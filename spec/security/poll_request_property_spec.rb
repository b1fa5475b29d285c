# frozen_string_literal: true

require "rack/mock"
require "message_bus/rack/poll_request"

# Property test of the poll body parser: random form and JSON bodies (invalid
# UTF-8, huge numbers, nested JSON, duplicate keys, truncated text) always give
# either a parsed request with sane values or a PollRequest::BadRequest with a
# 4xx status, never another exception. Seeded from the RSpec seed
# (`rspec --seed N` replays a run). ITERATIONS via MB_PROP_ITERATIONS.
RSpec.describe MessageBus::Rack::PollRequest do
  iterations = Integer(ENV.fetch("MB_PROP_ITERATIONS", "3000"))
  int64 = (-(2**63)..((2**63) - 1))
  bus_class = Struct.new(:user_id_lookup, :group_ids_lookup, :site_id_lookup) do
    def chunked_encoding_enabled? = true
  end

  def parse(body, content_type: "application/x-www-form-urlencoded", client_id: "c")
    env = Rack::MockRequest.env_for("/message-bus/c/poll", :method => "POST", :input => body.b, "CONTENT_TYPE" => content_type)
    described_class.new(env, bus, client_id)
  rescue described_class::BadRequest => e
    e.status
  end

  it "rejects a form body with raw invalid UTF-8 bytes with a 4xx" do
    expect(parse("%2Fa=1&\xFF=2".b)).to be_between(400, 499)
  end

  it "rejects a percent-escaped invalid UTF-8 last id with a 4xx" do
    expect(parse("%2Fa=%FF")).to be_between(400, 499)
  end

  it "reads no further than CONTENT_LENGTH (Puma 5 leaves pipelined bytes in rack.input)" do
    env = Rack::MockRequest.env_for("/message-bus/c/poll", :method => "POST", :input => "%2Fa=-1GET / HTTP/1.1\r\n\r\n",
                                                           "CONTENT_LENGTH" => "7")
    expect(described_class.new(env, bus, "c").channels).to eq([["/a", -1]])
  end

  it "clamps or rejects an infinite JSON __seq (1e400)" do
    result = parse(%({"/a":1,"__seq":1e400}), content_type: "application/json")
    expect(result).to be_a(described_class)
    expect(result.seq).to be_a(Integer)
  end

  let(:rng) { Random.new(RSpec.configuration.seed) }
  let(:bus) { bus_class.new(->(_) { 1 }, ->(_) { [1, "2"] }, ->(env = nil) { env && env["HTTP_X_SITE_ID"] }) }

  def site_of(lookup, headers = {})
    bus.site_id_lookup = lookup
    env = Rack::MockRequest.env_for("/message-bus/c/poll", { method: "POST", input: "" }.merge(headers))
    described_class.new(env, bus, "c").site_id
  end

  it "encodes a client without a site as the reference does: with the lookup called without a request" do
    header_lookup = bus.site_id_lookup
    expect(site_of(nil, "HTTP_X_SITE_ID" => "a")).to be_nil
    expect(site_of(header_lookup, "HTTP_X_SITE_ID" => "a")).to eq("a")
    expect(site_of(header_lookup)).to eq("")
    expect(site_of(->(env = nil) { env ? nil : :default })).to eq("default")
    expect { site_of(->(env) { env["HTTP_X_SITE_ID"] }) }
      .to raise_error(ArgumentError, /site_id_lookup returned nil for this request and cannot be called without one/)
  end

  it "rejects the site token in a channel name with a 400, with or without a site" do
    header_lookup = bus.site_id_lookup
    [nil, header_lookup].each do |lookup|
      bus.site_id_lookup = lookup
      [{}, { "HTTP_X_SITE_ID" => "b" }].each do |headers|
        env = Rack::MockRequest.env_for("/message-bus/c/poll", { method: "POST", input: "%2Fs%24%7C%24a=0" }.merge(headers))
        expect { described_class.new(env, bus, "c") }.to raise_error(described_class::BadRequest, /must not contain \$\|\$/)
      end
    end
  end

  def pick(*options) = options[rng.rand(options.size)]

  def random_bytes(max)
    Array.new(rng.rand(max + 1)) { rng.rand(256) }.pack("C*")
  end

  def random_text
    case rng.rand(8)
    when 0 then random_bytes(12)
    when 1 then "/chan/#{rng.rand(5)}"
    when 2 then "/#{pick('é', '✓', "\u0000", '$|$', '|', '$$123$$', ' ', '%', "\xFF".b, "\xC3".b)}x".b
    when 3 then "__seq"
    when 4 then ""
    when 5 then pick("9" * rng.rand(1..60), "-#{'9' * rng.rand(1..60)}", "1e400", "-1e400", "1.5", " 3 ", "0x10", "NaN")
    when 6 then rng.rand(-(2**70)..(2**70)).to_s
    else "/c#{rng.rand(3)}"
    end
  end

  def escape_form(text)
    text.b.gsub(/[^a-zA-Z0-9_.\-~]/n) { |c| rng.rand(4).zero? && c.match?(/[^&=]/n) ? c : format("%%%02X", c.ord) }
  end

  def form_body
    pairs = Array.new(rng.rand(0..8)) do
      key = escape_form(random_text)
      rng.rand(6).zero? ? key : "#{key}=#{escape_form(random_text)}"
    end
    body = pairs.join("&")
    body = body.b + random_bytes(4) if rng.rand(10).zero?
    body = "&&=&#{body}%" if rng.rand(15).zero?
    body
  end

  def json_value(depth = 0)
    case rng.rand(depth > 2 ? 6 : 8)
    when 0 then rng.rand(-(2**80)..(2**80))
    when 1 then rng.rand(-1000..1000)
    when 2 then (rng.rand * 10**rng.rand(0..30)) * pick(1, -1)
    when 3 then pick(nil, true, false, "", "5", "abc", "-2")
    when 4 then random_text.dup.force_encoding(Encoding::UTF_8).scrub
    when 5 then rng.rand(-5..5)
    when 6 then Array.new(rng.rand(0..3)) { json_value(depth + 1) }
    else Array.new(rng.rand(0..3)) { [random_text.dup.force_encoding(Encoding::UTF_8).scrub, json_value(depth + 1)] }.to_h
    end
  end

  # Hand-built so that keys may repeat and numbers may be out of any range.
  def json_object_text
    members = Array.new(rng.rand(0..6)) do
      key = pick("__seq", "/a", "/a", "/b", random_text.dup.force_encoding(Encoding::UTF_8).scrub)
      value = pick(JSON.generate(json_value), "1e400", "-1e400", "1#{'0' * rng.rand(1..400)}", "-0", "1.0e-400",
                   JSON.generate(json_value))
      "#{JSON.generate(key)}:#{value}"
    end
    text = "{#{members.join(',')}}"
    case rng.rand(12)
    when 0 then text[0, rng.rand(text.size + 1)]
    when 1 then text.b.sub("/a", "/\xFF\xFEa".b)
    when 2 then JSON.generate(json_value)
    when 3 then random_bytes(20)
    when 4 then "[#{text}]"
    else text
    end
  end

  def random_env
    json = rng.rand(2).zero?
    body = json ? json_object_text : form_body
    content_type = if json
                     pick("application/json",
                          "application/json; charset=utf-8")
                   else
                     pick("application/x-www-form-urlencoded", nil, "text/plain")
                   end
    opts = { method: "POST", input: body.b }
    opts["CONTENT_TYPE"] = content_type if content_type
    opts["HTTP_X_SITE_ID"] = "s1" if rng.rand(2).zero?
    opts["CONTENT_LENGTH"] = pick(body.bytesize.to_s, "-1", "99999999999", "abc") if rng.rand(10).zero?
    [Rack::MockRequest.env_for("/message-bus/c/poll", opts), body]
  end

  it "parses or rejects with a 4xx every random body, never raising anything else" do
    outcomes = Hash.new(0)
    failures = {}
    iterations.times do
      env, body = random_env
      client_id = rng.rand(20).zero? ? random_text.b : "client-1" # PATH_INFO is binary under Puma
      begin
        request = described_class.new(env, bus, client_id)
        outcomes[:parsed] += 1
        expect(int64).to cover(request.seq)
        request.channels.each do |channel, id|
          expect(channel).to be_a(String)
          expect(channel.encoding).to eq(Encoding::UTF_8)
          expect(channel).to be_valid_encoding
          expect(channel).not_to include("$|$")
          expect(id.nil? || int64.cover?(id)).to be(true), "id #{id.inspect} for #{channel.inspect}"
        end
      rescue described_class::BadRequest => e
        outcomes[:rejected] += 1
        expect(e.status).to be_between(400, 499)
      rescue StandardError => e
        raise if ENV["MB_PROP_STRICT"] == "1"

        where = e.backtrace.find { |l| l.include?("lib/message_bus") }.to_s[/[\w.]+:\d+/]
        (failures[[e.class, where]] ||= []) << "#{e.message[0, 80]} for #{body.inspect[0, 120]} (#{env['CONTENT_TYPE'].inspect})"
      end
    end
    warn "  #{iterations} bodies: #{outcomes[:parsed]} parsed, #{outcomes[:rejected]} rejected with 4xx, " \
         "#{failures.values.sum(&:size)} other exceptions"
    expect(failures).to be_empty
    # Both outcomes must be well represented, or the generator is too narrow.
    expect(outcomes[:parsed]).to be > iterations / 10
    expect(outcomes[:rejected]).to be > iterations / 10
  end
end
