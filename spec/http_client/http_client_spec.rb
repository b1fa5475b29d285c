# frozen_string_literal: true

require "message_bus/http_client"

RSpec.describe MessageBus::HTTPClient do
  # Stands in for a Net::HTTPResponse of a streamed long poll; yields the body in pieces.
  fake_response = Struct.new(:pieces) do
    def code = "200"
    def [](name) = { "content-type" => "text/plain; charset=utf-8" }[name]
    def read_body(&) = pieces.each(&)
  end

  describe "without a server" do
    let(:client) { described_class.new("http://127.0.0.1:1") }

    after { client.stop }

    it "validates subscriptions" do
      expect { client.subscribe("nope") { nil } }.to raise_error(described_class::InvalidChannel)
      expect { client.subscribe("/ok") }.to raise_error(described_class::MissingBlock)
      expect(described_class::VERSION).to eq("1.0.0.pre1")
      expect(client.status).to eq(described_class::STOPPED)
    end

    it "starts on subscribe, removes callbacks and channels, and stops when none remain" do
      a = proc { nil }
      b = proc { nil }
      expect(client.subscribe("/a", last_message_id: "x", &a)).to eq(described_class::STARTED)
      client.subscribe("/a", &b)
      client.subscribe("/b", last_message_id: 4, &a)
      expect(client.channels["/a"].last_message_id).to eq(-1)
      expect(client.channels["/b"].last_message_id).to eq(4)
      expect(client.start).to be(client)
      client.unsubscribe("/a", &a)
      expect(client.channels["/a"].callbacks).to eq([b])
      client.unsubscribe("/a", &b)
      expect(client.channels.keys).to eq(["/b"])
      expect(client.unsubscribe("/b")).to eq(described_class::STOPPED)
      expect(client.status).to eq(described_class::STOPPED)
    end

    it "parses streamed records split across reads, several per read, and the || escape" do
      got = []
      client.channels["/c"] = MessageBus::HTTPClient::Channel.new(callbacks: [proc { |*args| got << args }])
      one = JSON.generate([{ global_id: 5, message_id: 2, channel: "/c", data: "a" }])
      two = JSON.generate([{ global_id: 6, message_id: 3, channel: "/c", data: { "x" => 1 } },
                           { global_id: -1, message_id: -1, channel: "/__status", data: { "/c" => 9 } }])
      stream = "#{one}\r\n|\r\n#{two}\r\n|\r\n[]\r\n|\r\n"
      pieces = [stream[0, 7], stream[7, 40], stream[47..]]
      client.send(:read_response, fake_response.new(pieces))
      expect(got).to eq([["a", 2, 5], [{ "x" => 1 }, 3, 6]])
      expect(client.channels["/c"].last_message_id).to eq(9)
      escaped = %(["a\r\n||\r\nb"]\r\n|\r\n)
      client.channels["/d"] = MessageBus::HTTPClient::Channel.new
      expect(JSON).to receive(:parse).with(%(["a\r\n|\r\nb"])).and_return([])
      client.send(:read_response, fake_response.new([escaped]))
    end
  end

  describe "the storage epoch" do
    let(:client) { described_class.new("http://127.0.0.1:1") }

    after { client.stop }

    # A non-streamed answer carrying `epoch` in X-MessageBus-Epoch.
    def answer(epoch, messages)
      body = JSON.generate(messages)
      Struct.new(:code) do
        define_method(:[]) { |name| { "content-type" => "application/json", "x-messagebus-epoch" => epoch }[name] }
        define_method(:read_body) { body }
      end.new("200")
    end

    it "drops an answer with a new epoch, restarts every position from 0 and calls on_reset once per channel" do
      got = []
      resets = []
      client.on_reset { |channel| resets << channel }
      client.channels["/a"] = MessageBus::HTTPClient::Channel.new(callbacks: [proc { |data| got << data }])
      client.channels["/b"] = MessageBus::HTTPClient::Channel.new(last_message_id: -1)
      client.send(:read_response, answer("e1", [{ global_id: 7, message_id: 7, channel: "/a", data: "old" }]))
      expect([client.epoch, got, client.channels["/a"].last_message_id]).to eq(["e1", ["old"], 7])
      expect do
        client.send(:read_response, answer("e2", [{ global_id: 9, message_id: 9, channel: "/a", data: "dropped" }]))
      end.to raise_error(described_class.const_get(:Aborted))
      expect(client.epoch).to eq("e2")
      expect(got).to eq(["old"])
      expect(client.channels["/a"].last_message_id).to eq(0)
      expect(client.channels["/b"].last_message_id).to eq(-1) # "from now" stays so
      expect(resets).to eq(%w[/a /b])
      client.send(:read_response, answer("e2", [{ global_id: 1, message_id: 1, channel: "/a", data: "new" }]))
      expect(got).to eq(%w[old new])
      expect(resets.length).to eq(2)
      expect { client.on_reset }.to raise_error(described_class::MissingBlock)
    end
  end

  describe "against a real server", :integration do
    include ServerHelpers

    let(:received) { Queue.new }
    let(:env) { { "MB_LONG_POLLING_INTERVAL" => "2000" } }
    let(:server) { start_server(env: env) }
    let(:client_options) { { min_poll_interval: 0.05, max_poll_interval: 1 } }
    let(:client) { described_class.new("http://127.0.0.1:#{server.port}", **client_options) }

    after { client.stop }

    def take(count, timeout: 10)
      Array.new(count) do
        Timeout.timeout(timeout) { received.pop }
      end
    end

    def requests(port = server.port)
      http(port, "GET", "/requests")[2].to_i
    end

    {
      "chunked streaming" => {},
      "long polling without chunking" => { enable_chunked_encoding: false },
      "polling (dlp=t)" => { enable_long_polling: false, background_callback_interval: 0.2 }
    }.each do |transport, options|
      it "receives messages in order with #{transport}" do
        client_options.merge!(options)
        publish_via(server, "/hc", "m1")
        client.subscribe("/hc", last_message_id: 0) { |data, message_id, global_id| received << [data, message_id, global_id] }
        first = take(1).first
        expect(first[0]).to eq("m1")
        (2..5).each do |i|
          publish_via(server, "/hc", "m#{i}")
          sleep 0.05 if i == 3
        end
        rest = take(4)
        expect(rest.map(&:first)).to eq(%w[m2 m3 m4 m5])
        ids = [first, *rest].map { |m| m[1] }
        expect(ids).to eq(ids.sort)
        expect(ids.uniq.length).to eq(5)
        expect(client.stats.failed).to eq(0)
        if options[:enable_long_polling] == false
          # Polling is answered at once: several requests within one long-poll interval.
          before = requests
          sleep 1
          expect(requests - before).to be >= 3
        end
      end
    end

    it "honours the path of the base URL" do
      env["MB_BASE_ROUTE"] = "/sub/"
      client = described_class.new("http://127.0.0.1:#{server.port}/sub/", min_poll_interval: 0.05)
      client.subscribe("/hc", last_message_id: 0) { |data| received << data }
      publish_via(server, "/hc", "under /sub")
      expect(take(1)).to eq(["under /sub"])
    ensure
      client&.stop
    end

    it "keeps receiving after the server restarts on the same port" do
      client.subscribe("/hc", last_message_id: 0) { |data| received << data }
      publish_via(server, "/hc", "before")
      expect(take(1)).to eq(["before"])
      port = server.port
      stop_server(server)
      wait_for(timeout: 10, message: "a failed poll while the server is down") { client.stats.failed.positive? }
      # Memory keeps nothing across the restart; Redis and PostgreSQL keep the backlog.
      restarted = start_server(port: port, env: env.merge("MB_RESET" => SpecHelpers.backend_name == :memory ? "1" : "0"))
      got = nil
      wait_for(timeout: 15, message: "a message after the restart") do
        publish_via(restarted, "/hc", "after")
        got = Timeout.timeout(0.5) { received.pop }
      rescue Timeout::Error
        nil
      end
      expect(got).to eq("after")
      expect(client.status).to eq(described_class::STARTED)
    end

    it "stops cleanly: the request in flight is ended, the thread is gone, no further requests" do
      env["MB_LONG_POLLING_INTERVAL"] = "20000"
      client.subscribe("/hc", last_message_id: 0) { |data| received << data }
      publish_via(server, "/hc", "one")
      expect(take(1)).to eq(["one"])
      sleep 0.3 # the client is parked in a 20 s long poll
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      client.stop
      # well before the 20 s long poll would have ended by itself
      expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 15
      expect(client.status).to eq(described_class::STOPPED)
      expect(Thread.list.select { |t| t.name == "MessageBus::HTTPClient" }).to be_empty
      count = requests
      publish_via(server, "/hc", "two")
      sleep 1
      expect(requests).to eq(count)
    end
  end
end
