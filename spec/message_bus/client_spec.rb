# frozen_string_literal: true

require "rack"
require "securerandom"
require "socket"

# MessageBus::Client and MessageBus::ConnectionManager with the reference's
# public interface (COMPAT.md §1.15): Ruby clients writing to their io, and
# views of the connections the middleware parks in Rust.
RSpec.describe MessageBus::Client do
  let(:b) { new_bus(long_polling_interval: 2000) }

  def client(**opts)
    MessageBus::Client.new({ client_id: "c1", message_bus: b }.merge(opts))
  end

  # Reads what arrived on `socket` until `pattern` matches.
  def read_socket(socket, pattern, buffer = +"", timeout: 5)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    until buffer.match?(pattern)
      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        raise "timed out waiting for #{pattern.inspect}; got #{buffer.inspect}"
      end

      next unless socket.wait_readable(0.05)

      chunk = socket.read_nonblock(65_536, exception: false)
      break if chunk.nil?

      buffer << chunk unless chunk == :wait_readable
    end
    buffer
  end

  it "takes the reference's constructor options and defaults" do
    c = client(user_id: 7, group_ids: [1, 2], site_id: "s", seq: "3")
    expect([c.client_id, c.user_id, c.group_ids, c.site_id, c.seq]).to eq(["c1", 7, [1, 2], "s", 3])
    expect(c.connect_time).to be_a(Time)
    d = MessageBus::Client.new(client_id: "x")
    expect([d.group_ids, d.seq, d.io, d.headers, d.use_chunked, d.cleanup_timer, d.async_response])
      .to eq([[], 0, nil, nil, false, nil, nil])
    expect(d.closed?).to be(true)
  end

  it "subscribes from an id, or from the channel's last id (of the client's site) for nil and \"\"" do
    id = b.publish("/a", "x")
    c = client
    c.subscribe("/a", nil)
    c.subscribe("/b", "")
    c.subscribe("/c", "4")
    expect(c.subscriptions).to eq("/a" => id, "/b" => 0, "/c" => 4)
  end

  it "computes the backlog with the web poll's rules: look-behind, -1, ahead of the bus, withheld messages" do
    b.publish("/chat", "one")
    b.publish("/chat", "two")
    b.publish("/private", "secret", user_ids: [42])
    c = client
    c.subscribe("/chat", -3) # the last two ids
    c.subscribe("/fresh", -1)
    c.subscribe("/private", 0)
    c.subscribe("/ahead", 99)
    messages = c.backlog
    expect(messages.map { |m| [m.channel, m.data] }.first(2)).to eq([["/chat", "one"], ["/chat", "two"]])
    status = messages.last
    expect([status.global_id, status.message_id, status.channel]).to eq([-1, -1, "/__status"])
    expect(status.data).to eq("/fresh" => 0, "/private" => b.last_id("/private"), "/ahead" => 0)
    expect(c.subscriptions["/fresh"]).to eq(0)
    expect(messages.map(&:channel)).not_to include("/private")
    c42 = client(user_id: 42)
    c42.subscribe("/private", 0)
    expect(c42.backlog.map(&:data)).to eq(["secret"])
  end

  it "matches the middleware's answer for the same subscriptions (the same Rust code)" do
    b.publish("/m", { "k" => [1, 2] })
    b.publish("/m", "second", group_ids: [5])
    middleware = MessageBus::Rack::Middleware.new(->(_) { [404, {}, []] }, message_bus: b)
    env = Rack::MockRequest.env_for("/message-bus/c1/poll?dlp=t", method: "POST", input: "%2Fm=0&%2Fn=-1")
    _, _, body = middleware.call(env)
    c = client
    c.subscribe("/m", 0)
    c.subscribe("/n", -1)
    expect(MessageBus::Rack::Middleware.backlog_to_json(c.backlog)).to eq(body.join)
  ensure
    middleware&.stop_listener
  end

  it "allowed? checks users, groups and client ids, then the client message filters" do
    b.register_client_message_filter("/f") { |m| m.data != "hidden" }
    msg = lambda do |channel, data, **targets|
      m = MessageBus::Message.new(1, 1, channel, data)
      m.user_ids, m.group_ids, m.client_ids = targets.values_at(:user_ids, :group_ids, :client_ids)
      m
    end
    c = client(user_id: 1, group_ids: [10])
    expect(c.allowed?(msg.call("/x", "a"))).to be(true)
    expect(c.allowed?(msg.call("/x", "a", user_ids: [2]))).to be(false)
    expect(c.allowed?(msg.call("/x", "a", user_ids: [2], group_ids: [10]))).to be(true)
    expect(c.allowed?(msg.call("/x", "a", client_ids: ["other"]))).to be(false)
    expect(c.allowed?(msg.call("/x", "a", user_ids: [1.0]))).to be(true)
    expect(c.allowed?(msg.call("/x", "a", group_ids: ["10"]))).to be(false)
    expect(c.allowed?(msg.call("/f", "shown"))).to be(true)
    expect(c.allowed?(msg.call("/f", "hidden"))).to be(false)
  end

  it "writes a streamed response to its io: head, backlog, messages, the close output" do
    ours, theirs = Socket.pair(:UNIX, :STREAM)
    c = client
    c.io = ours
    c.headers = { "cache-control" => "no-cache", "content-type" => "ignored", "x-extra" => "1" }
    c.use_chunked = true
    c.ensure_first_chunk_sent
    buffer = read_socket(theirs, /7\r\n\[\]\r\n\|\r\n\r\n/)
    expect(buffer).to eq("HTTP/1.1 200 OK\r\ncache-control: no-cache\r\nx-extra: 1\r\nconnection: close\r\n" \
                         "content-type: text/plain; charset=utf-8\r\ntransfer-encoding: chunked\r\n" \
                         "x-content-type-options: nosniff\r\n\r\n7\r\n[]\r\n|\r\n\r\n")
    c << MessageBus::Message.new(5, 3, "/a", { "x" => 1 })
    read_socket(theirs, /"message_id":3/, buffer)
    json = %([{"global_id":5,"message_id":3,"channel":"/a","data":{"x":1}}])
    expect(buffer).to end_with("#{(json.bytesize + 5).to_s(16)}\r\n#{json}\r\n|\r\n\r\n")
    c.close
    expect(theirs.read).to eq("7\r\n[]\r\n|\r\n\r\n0\r\n\r\n")
    expect(c.closed?).to be(true)
  end

  it "writes a complete response without chunking and closes" do
    ours, theirs = Socket.pair(:UNIX, :STREAM)
    c = client
    c.io = ours
    c.headers = {}
    c.deliver_backlog([MessageBus::Message.new(1, 1, "/a", "x")])
    json = %([{"global_id":1,"message_id":1,"channel":"/a","data":"x"}])
    expect(theirs.read).to eq("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: application/json; charset=utf-8\r\n" \
                              "content-length: #{json.bytesize}\r\n\r\n#{json}")
    expect(c.closed?).to be(true)
  end

  describe MessageBus::ConnectionManager do
    let(:manager) { MessageBus::ConnectionManager.new(b) }

    def waiting_client(id, seq: 0, channel: "/live")
      ours, theirs = Socket.pair(:UNIX, :STREAM)
      c = client(client_id: id, seq: seq)
      c.subscribe(channel, -1)
      c.io = ours
      c.headers = {}
      c.use_chunked = true
      c.ensure_first_chunk_sent
      [c, theirs]
    end

    it "adds, replaces by seq, refuses older seqs, looks up, notifies and removes clients" do
      first, first_peer = waiting_client("a", seq: 1)
      expect(manager.add_client(first)).to be(true)
      expect([manager.client_count, manager.lookup_client("a")]).to eq([1, first])
      newer, newer_peer = waiting_client("a", seq: 2)
      manager.add_client(newer)
      expect(first_peer.read).to end_with("0\r\n\r\n") # replaced: closed
      stale, stale_peer = waiting_client("a", seq: 1)
      expect(manager.add_client(stale)).to be(false)
      expect(stale_peer.read).to end_with("0\r\n\r\n")
      manager.remove_client(first) # not the registered one (§9 Q36)
      expect(manager.lookup_client("a")).to eq(newer)
      msg = MessageBus::Message.new(9, 9, "/live", "hello")
      manager.notify_clients(msg)
      expect(read_socket(newer_peer, /hello/)).to include('"data":"hello"')
      expect(manager.stats).to include(parked: 1)
      manager.remove_client(newer)
      expect([manager.client_count, manager.lookup_client("a")]).to eq([0, nil])
      newer.close
    end
  end

  describe "views of the connections parked in Rust" do
    let(:middleware) { MessageBus::Rack::Middleware.new(->(_) { [404, {}, []] }, message_bus: b) }

    after { middleware.stop_listener }

    def park(client_id, body, user: nil)
      ours, theirs = Socket.pair(:UNIX, :STREAM)
      env = Rack::MockRequest.env_for("/message-bus/#{client_id}/poll", method: "POST", input: body)
      env["SERVER_PROTOCOL"] = "HTTP/1.1"
      env["rack.hijack"] = -> { env["rack.hijack_io"] = ours }
      b.user_id_lookup { |e| e["HTTP_X_USER"]&.to_i }
      env["HTTP_X_USER"] = user.to_s if user
      expect(middleware.call(env).first).to eq(418)
      read_socket(theirs, /7\r\n\[\]\r\n\|\r\n\r\n/)
      theirs
    end

    it "looks up, notifies, writes to and closes a parked client; no Ruby object per waiting client" do
      GC.start
      before = ObjectSpace.each_object(MessageBus::Client).count
      peers = Array.new(20) { |i| park("p#{i}", "%2Fv=&__seq=4", user: 3) }
      GC.start
      expect(ObjectSpace.each_object(MessageBus::Client).count).to be <= before
      manager = middleware.instance_variable_get(:@connection_manager)
      expect(manager).to equal(middleware.connection_manager)
      expect(manager.client_count).to eq(20)
      view = manager.lookup_client("p0")
      expect([view.view?, view.client_id, view.user_id, view.group_ids, view.seq, view.io, view.use_chunked])
        .to eq([true, "p0", 3, [], 4, nil, true])
      expect(view.subscriptions.keys).to eq(["/v"])
      expect(view.closed?).to be(false)
      view << MessageBus::Message.new(77, 77, "/v", "direct")
      expect(read_socket(peers[0], /direct/)).to include('"data":"direct"')
      msg = MessageBus::Message.new(78, 78, "/v", "to all")
      manager.notify_clients(msg)
      peers.each { |p| read_socket(p, /to all/) }
      view.close
      expect(peers[0].read).to end_with("7\r\n[]\r\n|\r\n\r\n0\r\n\r\n")
      wait_for(message: "the closed client unregistered") { manager.client_count == 19 }
      expect(view.closed?).to be(true)
      expect(manager.lookup_client("nobody")).to be_nil
    end
  end

  it "lets a Discourse-style refork hook walk the clients in a forked child" do
    pid = fork do
      ObjectSpace.each_object(MessageBus::Client) { |c| c.io&.close }
      exit!(0)
    end
    _, status = Process.wait2(pid)
    expect(status.exitstatus).to eq(0)
  end
end
