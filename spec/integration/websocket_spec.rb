# frozen_string_literal: true

require "digest"
require_relative "../support/websocket_client"

# The WebSocket transport against a real Puma, with a raw-socket client
# (spec/support/websocket_client.rb): the upgrade and its refusals, the
# client messages, the poll rules for positions, targeting and filters,
# every close code with its reason, keepalive, replacement by client id,
# and the sockets in the fork table.
RSpec.describe "WebSocket through a real Puma", :integration do
  include ServerHelpers
  include ForkHelpers

  let!(:server) { start_server(threads: 2, env: server_env) }
  let(:server_env) { {} }

  def ws(client_id = "ws1", srv: server, **opts)
    client = WebSocketClient.open(srv.port, client_id, **opts)
    (@clients ||= []) << client
    client
  end

  after { (@clients || []).each(&:close_socket) }

  def stats(srv = server)
    JSON.parse(http(srv.port, "GET", "/diagnostics")[2])["web_clients"]
  end

  def closes(reason, srv = server)
    stats(srv)["closed"].fetch(reason, 0)
  end

  # Subscribes and waits for the subscription to be applied: the answer to
  # a position ahead of the bus is a status, sent once registered.
  def subscribed(client, positions)
    client.subscribe(positions.merge("/__probe" => 1 << 40))
    client.messages_until { |m| m.any? { |x| x["channel"] == "/__status" && x["data"].key?("/__probe") } }
  end

  def refusal(headers: {}, key: SecureRandom.random_bytes(16), client_id: "r1", srv: server)
    client = ws(client_id, srv: srv, headers: headers, key: key, handshake: false)
    status = client.read_response(expect_upgrade: false)
    [status, client.response, client.body_after_refusal]
  end

  it "upgrades with the RFC 6455 accept key, then sends the backlog and live messages as poll arrays" do
    id = publish_via(server, "/chat", "old")
    client = ws
    expect(client.response).to start_with("HTTP/1.1 101 Switching Protocols\r\n")
    expect(client.accept_header).to eq(client.expected_accept)
    client.subscribe("/chat" => id - 1, "/quiet" => -1)
    backlog = client.read_frame.json
    expect(backlog.first).to include("channel" => "/chat", "data" => "old", "message_id" => id)
    expect(backlog.last).to include("channel" => "/__status", "data" => { "/quiet" => 0 })
    live = publish_via(server, "/chat", { "text" => "new ✓" })
    frame = client.read_frame
    expect(frame).to be_text
    expect(frame.json).to eq([{ "global_id" => frame.json.first["global_id"], "message_id" => live,
                                "channel" => "/chat", "data" => { "text" => "new ✓" } }])
    client.unsubscribe(["/chat"])
    client.subscribe("/other" => 0)
    publish_via(server, "/other", "probe")
    # From 0: the probe, from the backlog or live, whichever comes first.
    client.messages_until { |m| m.any? { |x| x["data"] == "probe" } }
    publish_via(server, "/chat", "not for you")
    publish_via(server, "/other", "last")
    seen = client.messages_until { |m| m.any? { |x| x["data"] == "last" } }
    expect(seen.map { |m| m["channel"] }.uniq).to eq(["/other"])
    expect(seen.count { |m| m["data"] == "probe" }).to eq(0)
  end

  it "opens with the storage epoch, the one poll responses carry in X-MessageBus-Epoch" do
    _, head, = http(server.port, "POST", "/message-bus/e1/poll?dlp=t", "/e=-1",
                    "Content-Type" => "application/x-www-form-urlencoded")
    header = head[/^x-messagebus-epoch: (\S+)/i, 1]
    expect(header).to match(/\A\h{32}\z/)
    client = ws
    frame = client.read_frame(epoch_frame: true)
    expect(frame.json).to eq([{ "global_id" => -1, "message_id" => -1, "channel" => "/__epoch", "data" => header }])
    client.subscribe("/e" => -1)
    expect(client.read_frame.json.map { |m| m["channel"] }).to eq(["/__status"])
  end

  it "applies subscribe before unsubscribe in one message: a channel in both ends unsubscribed" do
    client = ws
    subscribed(client, "/both" => -1)
    client.send_json("subscribe" => { "/both" => -1, "/kept" => -1 }, "unsubscribe" => ["/both"])
    client.messages_until { |m| m.any? { |x| x["channel"] == "/__status" && x["data"].key?("/kept") } }
    publish_via(server, "/both", "gone")
    publish_via(server, "/kept", "here")
    seen = client.messages_until { |m| m.any? { |x| x["data"] == "here" } }
    expect(seen.map { |m| m["data"] }).to eq(["here"])
  end

  it "follows a poll's last-id rules: -1, -N, N, ahead of the bus; a moved position reads from there" do
    ids = Array.new(5) { |i| publish_via(server, "/p", "m#{i}") }
    client = ws
    client.subscribe("/p" => -1)
    expect(client.read_frame.json).to eq([{ "global_id" => -1, "message_id" => -1, "channel" => "/__status",
                                            "data" => { "/p" => ids.last } }])
    client.subscribe("/p" => -3)
    expect(client.read_frame.json.map { |m| m["data"] }).to eq(%w[m3 m4])
    client.subscribe("/p" => ids[1])
    expect(client.read_frame.json.map { |m| m["data"] }).to eq(%w[m2 m3 m4])
    client.subscribe("/p" => ids.last + 100)
    expect(client.read_frame.json).to eq([{ "global_id" => -1, "message_id" => -1, "channel" => "/__status",
                                            "data" => { "/p" => ids.last } }])
    publish_via(server, "/p", "live")
    expect(client.read_frame.json.map { |m| m["data"] }).to eq(["live"])
  end

  it "keeps every message exactly once while subscriptions change under a stream of publishes" do
    client = ws
    subscribed(client, "/flow" => 0)
    publisher = Thread.new { Array.new(60) { |i| publish_via(server, "/flow", i) } }
    10.times { |i| client.subscribe("/side#{i}" => -1) }
    publisher.join
    seen = client.messages_until { |m| m.count { |x| x["channel"] == "/flow" } >= 60 }
    expect(seen.select { |m| m["channel"] == "/flow" }.map { |m| m["data"] }).to eq((0...60).to_a)
    publish_via(server, "/flow", "end")
    more = client.messages_until { |m| m.any? { |x| x["data"] == "end" } }
    expect(more.select { |m| m["channel"] == "/flow" }.map { |m| m["data"] }).to eq(["end"])
  end

  context "with users, groups and sites" do
    let(:server_env) { { "MB_MULTISITE" => "1" } }

    it "targets by user, group, client id and site as polls do; /global/ reaches every site" do
      alice = ws("alice-c", headers: { "X-User-Id" => "1", "X-Group-Ids" => "[10]", "X-Site-Id" => "a" })
      bob = ws("bob-c", headers: { "X-User-Id" => "2", "X-Group-Ids" => "[20]", "X-Site-Id" => "b" })
      [alice, bob].each { |c| subscribed(c, "/t" => -1, "/global/t" => -1) }
      publish_via(server, "/t", "for user 1", user_ids: [1], site_id: "a")
      publish_via(server, "/t", "for group 20", group_ids: [20], site_id: "b")
      publish_via(server, "/t", "for bob's client", client_ids: ["bob-c"], site_id: "b")
      publish_via(server, "/t", "for user 2 on site a", user_ids: [2], site_id: "a")
      publish_via(server, "/t", "site a", site_id: "a")
      publish_via(server, "/global/t", "everyone")
      got = lambda do |client|
        client.messages_until { |m| m.any? { |x| x["data"] == "everyone" } }.map { |m| m["data"] }
      end
      expect(got.call(alice)).to eq(["for user 1", "site a", "everyone"])
      expect(got.call(bob)).to eq(["for group 20", "for bob's client", "everyone"])
    end
  end

  context "with client message filters" do
    let(:server_env) { { "MB_FILTERS" => "1" } }

    it "applies register_client_message_filter to the backlog and to live messages" do
      publish_via(server, "/filtered", "hidden")
      publish_via(server, "/filtered", "shown")
      client = ws
      client.subscribe("/filtered" => 0)
      # The withheld message's id comes in a status, as a poll's would.
      expect(client.read_frame.json.map { |m| m["data"] }).to eq(["shown", { "/filtered" => 2 }])
      publish_via(server, "/filtered", "hidden")
      publish_via(server, "/filtered", "live")
      expect(client.messages_until { |m| m.any? { |x| x["data"] == "live" } }.map { |m| m["data"] }).to eq(["live"])
    end
  end

  describe "the upgrade" do
    it "refuses a missing or bad key (400) and another version (426) before upgrading" do
      status, = refusal(key: nil)
      expect(status).to eq(400)
      status, _, body = refusal(key: "short")
      expect([status, body]).to eq([400, "missing or invalid Sec-WebSocket-Key: 16 bytes, base64-encoded"])
      raw = read_until(open_request(server.port, "GET /message-bus/v8/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n" \
                                                 "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n" \
                                                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"), /must be 13/)
      expect(raw).to start_with("HTTP/1.1 426")
      expect(raw).to match(/^sec-websocket-version: 13\r$/i)
      expect(http(server.port, "GET", "/message-bus/plain/ws")[0]).to eq(400)
    end

    it "allows no Origin and the page's own host; refuses another origin with 403" do
      expect(ws("o1", headers: { "Origin" => "http://127.0.0.1" }).response).to start_with("HTTP/1.1 101")
      status, _, body = refusal(headers: { "Origin" => "https://evil.test" })
      expect(status).to eq(403)
      expect(body).to include("may not open a WebSocket here")
      status, = refusal(headers: { "Origin" => "http://127.0.0.1:1" })
      expect(status).to eq(403)
    end

    context "with allowed_origins" do
      let(:server_env) { { "MB_ALLOWED_ORIGINS" => "https://app.test,https://other.test" } }

      it "allows the listed origins only" do
        expect(ws("l1", headers: { "Origin" => "https://app.test" }).response).to start_with("HTTP/1.1 101")
        expect(refusal(headers: { "Origin" => "https://app.test.evil" }).first).to eq(403)
      end
    end

    context "with an allowed_origins proc" do
      let(:server_env) { { "MB_ALLOWED_ORIGINS" => "proc" } }

      it "asks the proc" do
        expect(ws("p1", headers: { "Origin" => "https://x.trusted.test" }).response).to start_with("HTTP/1.1 101")
        expect(refusal(headers: { "Origin" => "https://x.untrusted" }).first).to eq(403)
      end
    end

    context "with max_active_clients 2" do
      let(:server_env) { { "MB_MAX_ACTIVE_CLIENTS" => "2" } }

      it "refuses a stream past the limit with 503 (the client polls instead), and takes one again below it" do
        first = ws("m1")
        subscribed(first, "/m" => -1)
        second = ws("m2")
        subscribed(second, "/m" => -1)
        status, response, body = refusal(client_id: "m3")
        expect(status).to eq(503)
        expect(response).to match(/^retry-after: 10/i)
        expect(body).to include("max_active_clients (2)")
        first.close(1000, "bye")
        expect(first.read_close.close_code).to eq(1000)
        wait_for(message: "one client left") { stats["parked"] == 1 }
        third = ws("m3")
        expect(third.response).to start_with("HTTP/1.1 101")
        subscribed(third, "/m" => -1)
        publish_via(server, "/m", "both")
        [second, third].each { |c| c.messages_until { |m| m.any? { |x| x["data"] == "both" } } }
      end
    end

    context "with websocket_enabled = false" do
      let(:server_env) { { "MB_WEBSOCKET" => "off" } }

      it "answers 404 with a reason, and long polls still work" do
        status, _, body = refusal
        expect([status, body]).to eq([404, "WebSocket is off on this server (websocket_enabled = false): long poll instead"])
        expect(http(server.port, "POST", "/message-bus/lp/poll?dlp=t", "/x=-1",
                    "Content-Type" => "application/x-www-form-urlencoded")[0]).to eq(200)
      end
    end
  end

  describe "close codes" do
    def closed_with(client)
      frame = client.read_close
      [frame.close_code, frame.close_reason]
    end

    it "1007 for invalid UTF-8, 1003 for binary, 1002 for unmasked or fragmented control frames, 1009 past 64 KiB" do
      a = ws("c1")
      a.send_frame(1, "\xff\xfe".b)
      expect(closed_with(a)).to eq([1007, "text frames must be valid UTF-8"])
      b = ws("c2")
      b.send_frame(2, "\x00")
      expect(closed_with(b)).to eq([1003, "binary frames are not accepted: send JSON text"])
      c = ws("c3")
      c.send_frame(1, "{}", mask: false)
      expect(closed_with(c)).to eq([1002, "client frames must be masked"])
      d = ws("c4")
      d.send_frame(9, "", fin: false)
      expect(closed_with(d).first).to eq(1002)
      e = ws("c5")
      e.send_frame(1, "x" * 70_000)
      expect(closed_with(e)).to eq([1009, "message too big: at most 65536 bytes"])
      expect(e.eof?).to be(true)
      wait_for(message: "the closes counted") { closes("protocol_error") == 5 }
    end

    it "1008 with a reason for bad JSON, an unknown command, a bad last id, too many channels, the site token" do
      {
        "not json" => "invalid JSON",
        '{"publish":{}}' => 'unknown command "publish"',
        '{"subscribe":{"/a":"x"}}' => 'invalid last id for channel "/a"',
        JSON.generate("subscribe" => (0..1000).to_h { |i| ["/c#{i}", -1] }) => "too many channels (at most 1000)",
        '{"subscribe":{"/a$|$b":-1}}' => "channel names must not contain $|$"
      }.each_with_index do |(text, reason), i|
        client = ws("j#{i}")
        client.send_text(text)
        code, got = closed_with(client)
        expect(code).to eq(1008)
        expect(got).to start_with(reason)
      end
    end

    it "answers a fragmented message split around pings, answers pings, and echoes the client's close (1000)" do
      client = ws("f1")
      text = JSON.generate("subscribe" => { "/frag" => -1 })
      client.send_frame(1, text[0, 5], fin: false)
      client.ping("p1")
      client.send_frame(0, text[5, 5], fin: false)
      client.send_frame(0, text[10..])
      pong = client.read_frame(pongs: false)
      expect([pong.opcode, pong.payload]).to eq([10, "p1"])
      expect(client.read_frame.json.first["channel"]).to eq("/__status")
      client.close(1000, "bye")
      expect(closed_with(client)).to eq([1000, ""])
      expect(client.eof?).to be(true)
      wait_for(message: "the close counted") { closes("client_closed") == 1 }
    end

    it "answers a flood of pings, then still serves the client" do
      client = ws("flood")
      client.socket.write(Array.new(2000) { |i| client.frame_bytes(9, "p#{i}") }.join)
      pongs = Array.new(2000) { client.read_frame(pongs: false) }
      expect(pongs.map(&:opcode).uniq).to eq([10])
      expect(pongs.last.payload).to eq("p1999")
      subscribed(client, "/after-flood" => -1)
    end

    it "1001 when the server stops" do
      client = ws("s1")
      subscribed(client, "/s" => -1)
      Process.kill(:TERM, server.pid)
      expect(closed_with(client)).to eq([1001, "server stopping"])
    end

    it "1008 for a slow consumer past its outbox bound; it resumes from its last id with nothing lost" do
      client = ws("slow")
      subscribed(client, "/big" => -1)
      client.socket.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
      # Not read meanwhile: 2.4 MB, far past the outbox bounds and the socket buffers.
      last = publish_via(server, "/big", "x" * 6000, count: 400)
      seen = []
      frame = nil
      loop do
        frame = client.read_frame
        break if frame.close?

        seen.concat(frame.json)
      end
      expect([frame.close_code, frame.close_reason]).to eq(
        [1008, "too slow: more than 256 messages or 1 MiB waiting; reconnect with your last ids"]
      )
      expect(closes("slow_consumer")).to eq(1)
      resumed = ws("slow")
      from = seen.map { |m| m["message_id"] }.max
      resumed.subscribe("/big" => from)
      rest = resumed.messages_until { |m| m.any? { |x| x["message_id"] == last } }
      expect(seen.map { |m| m["message_id"] } + rest.map { |m| m["message_id"] }).to eq((1..last).to_a)
    end
  end

  context "with a short ping interval" do
    let(:server_env) { { "MB_WS_PING" => "0.2" } }

    it "pings; a peer that answers stays, one that stops is closed with 1008" do
      alive = ws("alive")
      pings = 0
      while pings < 4
        frame = alive.read_frame(pongs: false)
        expect(frame).to be_ping
        alive.pong(frame.payload)
        pings += 1
      end
      subscribed(alive, "/alive" => -1)
      publish_via(server, "/alive", "still here")
      expect(alive.messages_until { |m| m.any? { |x| x["data"] == "still here" } }.last["data"]).to eq("still here")
      expect(closes("ping_timeout")).to eq(0)

      silent = ws("silent")
      frame = silent.read_frame(pongs: false) while frame.nil? || frame.ping?
      expect([frame.close_code, frame.close_reason]).to eq([1008, "no pong: the peer stopped answering pings"])
      wait_for(message: "the dead peer counted") { closes("ping_timeout") >= 1 }
    end
  end

  it "a newer connection of the same client id (WebSocket or poll) replaces the older one, counted replaced" do
    first = ws("shared")
    subscribed(first, "/r" => -1)
    second = ws("shared")
    frame = first.read_close
    expect([frame.close_code, frame.close_reason]).to eq([1000, "replaced by a newer connection of this client id"])
    subscribed(second, "/r" => -1)
    publish_via(server, "/r", "to the newest")
    expect(second.messages_until { |m| m.any? { |x| x["data"] == "to the newest" } }.last["data"]).to eq("to the newest")
    poll = open_request(server.port, poll_request("shared", form([["/r", ""]])))
    expect(second.read_close.close_code).to eq(1000)
    read_until(poll, /7\r\n\[\]\r\n\|\r\n\r\n/)
    poll.close
    wait_for(message: "both replacements counted") { closes("replaced") == 2 }
  end

  it "keeps WebSocket sockets in the fork table: a forked child holds none, the parent's clients keep receiving" do
    clients = Array.new(5) { |i| ws("fork#{i}") }
    clients.each { |c| subscribed(c, "/held" => -1) }
    inodes = server_side_inodes(server.port, clients.map(&:socket))
    expect((socket_inodes(server.pid) & inodes.to_set).size).to eq(5)
    held = JSON.parse(http(server.port, "GET", "/diagnostics")[2])
    expect(held["web_clients"]["parked"]).to eq(5)
    report = File.join(Dir.tmpdir, "mb-ws-fork-probe-#{server.port}.json")
    probe = open_request(server.port, "GET /fork_probe?seconds=30&report=#{report} HTTP/1.1\r\nHost: x\r\n\r\n")
    child = read_until(probe, /\r\n\r\n\d+\z/)[/\d+\z/].to_i
    probe.close
    wait_for(timeout: 20, message: "the forked child's report") { File.exist?(report) }
    expect((socket_inodes(child) & inodes.to_set).size).to eq(0)
    publish_via(server, "/held", "after the fork")
    clients.each { |c| expect(c.messages_until { |m| m.any? { |x| x["data"] == "after the fork" } }).not_to be_empty }
  ensure
    begin
      Process.kill(:KILL, child) if child&.positive?
    rescue Errno::ESRCH
      nil
    end
    File.delete(report) if report && File.exist?(report)
  end
end

RSpec.describe "WebSocket clients of a Puma worker killed with SIGKILL", :integration do
  include ServerHelpers
  include ForkHelpers

  after { (@clients || []).each(&:close_socket) }

  def publisher
    @publisher ||= begin
      b = MessageBus::Instance.new
      b.configure(SpecHelpers.backend_config.merge(logger: Logger.new(log_output), keepalive_interval: 0))
      (@buses ||= []) << b
      b
    end
  end

  it "reconnect with their last ids to the respawned worker and lose nothing" do
    skip "needs a backend shared by processes (Redis, PostgreSQL)" if SpecHelpers.backend_name == :memory
    new_bus # empties the store; the workers do not
    server = start_server(workers: 1, threads: 2, env: { "MB_RESET" => "0" })
    worker = wait_for(timeout: 20, message: "the worker") { puma_workers(server.pid)[0] }
    clients = Array.new(5) { |i| WebSocketClient.open(server.port, "killed#{i}") }
    @clients = clients
    clients.each { |c| c.subscribe("/k" => 0) }
    first = publisher.publish("/k", "before")
    last_ids = clients.map do |c|
      c.messages_until { |m| m.any? { |x| x["data"] == "before" } }.map { |x| x["message_id"] }.max
    end
    expect(last_ids).to all(eq(first))
    Process.kill(:KILL, worker)
    clients.each { |c| expect(c.eof?(timeout: 10)).to be(true) }
    during = Array.new(3) { |i| publisher.publish("/k", "during #{i}") }
    wait_for(timeout: 30, message: "a new worker") { (w = puma_workers(server.pid)[0]) && w != worker }
    resumed = Array.new(5) do |i|
      c = wait_for(timeout: 20, message: "the new worker accepting") do
        WebSocketClient.open(server.port, "killed#{i}")
      rescue RuntimeError, SystemCallError, EOFError
        nil
      end
      @clients << c
      c.subscribe("/k" => last_ids[i])
      c
    end
    after = publisher.publish("/k", "after")
    resumed.each do |c|
      got = c.messages_until { |m| m.any? { |x| x["message_id"] == after } }
      expect(got.map { |x| x["message_id"] }).to eq(during + [after])
    end
  end
end
