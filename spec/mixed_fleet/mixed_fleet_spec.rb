# frozen_string_literal: true

require "open3"
require "set"
require "message_bus/distributed_cache"

# A rolling deploy: processes running the reference gem next to ours, on one
# Redis or one PostgreSQL (COMPAT.md §4). Real reference-gem processes
# (`ruby -I $MB_REFERENCE_LIB spec/mixed_fleet/peer.rb`), both directions:
# every message arrives, in order, and DistributedCache values travel.
# bin/test points MB_REFERENCE_LIB at the reference gem when it is there.
MIXED_REFERENCE_LIB = ENV.fetch("MB_REFERENCE_LIB", nil)
MIXED_PEER = File.expand_path("peer.rb", __dir__)
MIXED_COUNT = 200

RSpec.describe "A mixed fleet of reference-gem and message_bus (Rust) processes", :integration do
  include ServerHelpers

  before do
    skip "set MB_REFERENCE_LIB to the reference gem's lib directory" unless MIXED_REFERENCE_LIB && Dir.exist?(MIXED_REFERENCE_LIB)
    skip "the memory backend is per process; this runs on Redis and PostgreSQL" if SpecHelpers.backend_name == :memory
  end

  after do
    (@peers || []).each do |stdin, _, thread|
      stdin.close unless stdin.closed?
      begin
        Process.kill(:KILL, thread.pid)
      rescue Errno::ESRCH
        nil
      end
      thread.join(5)
    end
  end

  # A reference-gem process running `peer.rb` with this pass's backend.
  def reference_peer(*args)
    config = JSON.generate(SpecHelpers.backend_config)
    stdin, stdout, thread = Open3.popen2("ruby", "-I", MIXED_REFERENCE_LIB, MIXED_PEER, config, *args.map(&:to_s))
    (@peers ||= []) << [stdin, stdout, thread]
    [stdin, stdout]
  end

  def line(io, timeout: 20)
    raise "the reference process said nothing for #{timeout} s" unless io.wait_readable(timeout)

    io.gets or raise "the reference process exited"
  end

  it "what a reference process publishes reaches our subscribers and our web clients, in order, none lost" do
    b = new_bus
    got = Queue.new
    b.subscribe("/mixed/in") { |m| got << m.data }
    server = start_server(env: { "MB_RESET" => "0", "MB_LONG_POLLING_INTERVAL" => "30000" })
    stream = open_request(server.port, poll_request("mixed", form([["/mixed/in", ""]])))
    buffer = read_until(stream, /7\r\n\[\]\r\n\|\r\n\r\n/)
    _, out = reference_peer("publish", "/mixed/in", MIXED_COUNT)
    ids = Array.new(MIXED_COUNT) { Integer(line(out)) }
    expect(line(out)).to eq("done\n")
    expected = Array.new(MIXED_COUNT, &:to_s)
    expect(Array.new(MIXED_COUNT) { Timeout.timeout(20) { got.pop } }).to eq(expected)
    read_until(stream, /"data":"#{MIXED_COUNT - 1}"\}\]\r\n\|\r\n\r\n/, buffer, timeout: 20)
    streamed = stream_payloads(buffer).flatten
    expect(streamed.map { |m| m["data"] }).to eq(expected)
    expect(streamed.map { |m| m["message_id"] }).to eq(ids)
    expect(b.backlog("/mixed/in").map(&:data)).to eq(expected)
    puts format("mixed fleet (%s): reference process -> ours: published %d, our subscriber got %d, our web client %d, " \
                "in order, none lost", SpecHelpers.backend_name, MIXED_COUNT, expected.length, streamed.length)
  end

  it "what our processes publish reaches a reference subscriber, in order, none lost" do
    b = new_bus
    _, out = reference_peer("subscribe", "/mixed/out", MIXED_COUNT)
    expect(line(out)).to eq("ready\n")
    ids = Array.new(MIXED_COUNT) { |i| b.publish("/mixed/out", i.to_s) }
    got = Array.new(MIXED_COUNT) { JSON.parse(line(out)) }
    expect(got.map { |m| m["data"] }).to eq(Array.new(MIXED_COUNT, &:to_s))
    expect(got.map { |m| m["message_id"] }).to eq(ids)
    expect(got.map { |m| m["channel"] }.uniq).to eq(["/mixed/out"])
    puts format("mixed fleet (%s): ours -> reference process: published %d, the reference subscriber got %d, " \
                "in order, none lost", SpecHelpers.backend_name, MIXED_COUNT, got.length)
  end

  it "a reference process works on a store that carries our epoch, and leaves it alone" do
    b = new_bus
    epoch = b.epoch # created in the store (Redis key __mb_epoch, comment on the message_bus table)
    expect(epoch).to match(/\A\h{32}\z/)
    got = Queue.new
    b.subscribe("/mixed/epoch") { |m| got << m.data }
    _, sub_out = reference_peer("subscribe", "/mixed/epoch", 40)
    expect(line(sub_out)).to eq("ready\n")
    _, out = reference_peer("publish", "/mixed/epoch", 20)
    ids = Array.new(20) { Integer(line(out)) }
    expect(line(out)).to eq("done\n")
    20.times { |i| b.publish("/mixed/epoch", (20 + i).to_s) }
    expected = Array.new(40, &:to_s)
    expect(Array.new(40) { Timeout.timeout(20) { got.pop } }).to eq(expected)
    expect(Array.new(40) { JSON.parse(line(sub_out))["data"] }).to eq(expected)
    expect(ids).to eq(ids.sort)
    expect(b.backend_instance.native._refresh_epoch).to eq(epoch) # read again from the store
    puts format("mixed fleet (%s): with our epoch in the store, a reference publisher and subscriber: 40 messages " \
                "each way, in order; the epoch unchanged", SpecHelpers.backend_name)
  end

  it "DistributedCache values travel both ways" do
    b = new_bus
    stdin, out = reference_peer("cache", "mixed")
    expect(line(out)).to eq("ready\n")
    ours = MessageBus::DistributedCache.new("mixed", manager: MessageBus::DistributedCache::Manager.new(b))
    ask = lambda do |request|
      stdin.puts(JSON.generate(request))
      JSON.parse(line(out))
    end
    ours["number"] = 5
    ours["hash"] = { "a" => [1, 2] }
    ours["set"] = Set[3, 1]
    ours["list"] = [1, "two"]
    wait_for(timeout: 20, message: "our values in the reference process") do
      ask.call("get" => "list")["value"] == [1, "two"]
    end
    expect(ask.call("get" => "number")).to eq("value" => 5, "class" => "Integer")
    expect(ask.call("get" => "hash")).to eq("value" => { "a" => [1, 2] }, "class" => "Hash")
    expect(ask.call("get" => "set")).to eq("value" => { "set" => [1, 3] }, "class" => "Set")

    ask.call("set" => ["theirs", "from the reference"])
    ask.call("set" => ["their hash", { "k" => "v" }])
    ask.call("set" => ["their set", { "set" => [7, 8] }])
    wait_for(timeout: 20, message: "the reference process's values in ours") { ours["their set"] }
    expect([ours["theirs"], ours["their hash"], ours["their set"]]).to eq(["from the reference", { "k" => "v" }, Set[7, 8]])
    puts format("mixed fleet (%s): DistributedCache: 4 values ours -> reference, 3 reference -> ours, all equal",
                SpecHelpers.backend_name)
  end
end
