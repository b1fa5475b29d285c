# frozen_string_literal: true

require "stringio"

# A backend written in Ruby, registered in MessageBus::BACKENDS (COMPAT.md
# §1.12): Backends::Base is instantiable and subclassable, and such a backend
# works end to end, web clients included (served from Ruby, announced once).
RUBY_BACKEND_LIB = File.expand_path("../support/lib", __dir__)

RSpec.describe "A backend written in Ruby" do
  include ServerHelpers

  before { $LOAD_PATH.unshift(RUBY_BACKEND_LIB) unless $LOAD_PATH.include?(RUBY_BACKEND_LIB) }

  def ruby_bus
    b = MessageBus::Instance.new
    b.configure(backend: :ruby_memory, logger: Logger.new(log_output), keepalive_interval: 0)
    (@ruby_buses ||= []) << b
    b
  end

  after { (@ruby_buses || []).each(&:destroy) }

  it "Backends::Base is instantiable; its abstract methods say what to implement" do
    base = MessageBus::Backends::Base.new
    base.max_backlog_size = 5
    expect(base.max_backlog_size).to eq(5)
    expect(base.native).to be_nil
    expect(base.subscribed).to be_falsey
    expect { base.publish("/a", "x") }
      .to raise_error(MessageBus::Backends::Base::ConcreteClassMustImplementError, /must implement publish/)
    expect { base.global_subscribe { nil } }.to raise_error(MessageBus::Backends::Base::ConcreteClassMustImplementError)
  end

  it "publishes, subscribes with replay and reads backlogs through the bus" do
    b = ruby_bus
    expect(b.backend_instance).to be_a(MessageBus::Backends::RubyMemory)
    first = b.publish("/r", "one", user_ids: [1])
    got = Queue.new
    b.subscribe("/r", 0) { |m| got << [m.data, m.user_ids] }
    b.publish("/r", "two")
    expect(Array.new(2) { Timeout.timeout(5) { got.pop } }).to eq([["one", [1]], ["two", nil]])
    expect(b.backlog("/r", first).map(&:data)).to eq(["two"])
    expect(b.last_ids("/r", "/none")).to eq("/r" => first + 1, "/none" => 0)
    client = MessageBus::Client.new(client_id: "c", user_id: 1, message_bus: b)
    client.subscribe("/r", 0)
    client.subscribe("/none", -1)
    expect(client.backlog.map { |m| [m.channel, m.data] })
      .to eq([["/r", "one"], ["/r", "two"], ["/__status", { "/none" => 0 }]])
  end

  describe "web clients under Puma" do
    let(:server) do
      start_server(env: { "MESSAGE_BUS_BACKEND" => "ruby_memory", "MB_LONG_POLLING_INTERVAL" => "1500" })
    end

    it "polls, long-polls with and without streaming, and announces the Ruby path once" do
      first = publish_via(server, "/w", "stored")
      raw = read_all(open_request(server.port, poll_request("p1", form([["/w", "0"], ["/x", "-1"]]), query: "dlp=t")))
      expect(JSON.parse(raw.split("\r\n\r\n", 2)[1])).to eq(
        [{ "global_id" => first, "message_id" => first, "channel" => "/w", "data" => "stored" },
         { "global_id" => -1, "message_id" => -1, "channel" => "/__status", "data" => { "/x" => 0 } }]
      )

      streaming = open_request(server.port, poll_request("s1", form([["/w", first.to_s]])))
      buffer = read_until(streaming, /7\r\n\[\]\r\n\|\r\n\r\n/)
      expect(buffer).to start_with("HTTP/1.1 200 OK\r\n").and include("transfer-encoding: chunked\r\n")
      plain = open_request(server.port, poll_request("n1", form([["/w", first.to_s]]), headers: { "Dont-Chunk" => "1" }))
      wait_for(message: "two parked clients") do
        JSON.parse(http(server.port, "GET", "/diagnostics")[2])["web_clients"]["parked"] == 2
      end
      live = publish_via(server, "/w", "live")
      read_until(streaming, /"data":"live"/, buffer)
      expect(read_all(plain)).to end_with(%([{"global_id":#{live},"message_id":#{live},"channel":"/w","data":"live"}]))
      # the timeout ends the stream with the close output
      expect(read_all(streaming, timeout: 5)).to end_with("7\r\n[]\r\n|\r\n\r\n0\r\n\r\n")
      log = File.read(server.log)
      expect(log.scan("not a built-in one").length).to eq(1)
      expect(log).not_to match(/Error|exception/i)
    end
  end
end
