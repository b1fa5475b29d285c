# frozen_string_literal: true

RSpec.describe "HTTP long polling through a real Puma", :integration do
  include ServerHelpers

  let!(:server) { start_server(threads: 2, env: { "MB_LONG_POLLING_INTERVAL" => "1500" }) }
  let(:client_id) { "5f1c0e2a9b7d4c3e8a6f0b1d2c3e4f5a" }

  head = "cache-control: must-revalidate, private, max-age=0\r\npragma: no-cache\r\nexpires: 0\r\n" \
         "x-messagebus-epoch: EPOCH\r\nconnection: close\r\n"
  # The head, with the storage epoch (32 hex digits) this response carries.
  define_method(:head_of) { |raw| head.sub("EPOCH", raw[/^x-messagebus-epoch: (\h{32})\r$/, 1].to_s) }

  it "streams: head, empty first chunk, one chunk per live message, final chunk at the timeout (example 2)" do
    chat = publish_via(server, "/chat/room-1", "old")
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    socket = open_request(server.port, poll_request(client_id, form([["/chat/room-1", chat.to_s], %w[__seq 8]])))
    buffer = read_until(socket, /7\r\n\[\]\r\n\|\r\n\r\n/)
    expect(buffer).to eq("HTTP/1.1 200 OK\r\n#{head_of(buffer)}content-type: text/plain; charset=utf-8\r\n" \
                         "transfer-encoding: chunked\r\nx-content-type-options: nosniff\r\n\r\n7\r\n[]\r\n|\r\n\r\n")
    publish_via(server, "/chat/room-1", { "from" => "bob", "body" => "see you | later ✓" })
    publish_via(server, "/notices", "private", user_ids: [42])
    rest = read_all(socket, timeout: 30)
    elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
    json = rest[/\A\h+\r\n(.*?)\r\n\|\r\n\r\n/m, 1]
    message = JSON.parse(json).first
    expect(message.slice("channel",
                         "data")).to eq("channel" => "/chat/room-1", "data" => { "from" => "bob", "body" => "see you | later ✓" })
    expect(rest).to start_with("#{(json.bytesize + 5).to_s(16)}\r\n")
    expect(rest).to end_with("\r\n|\r\n\r\n7\r\n[]\r\n|\r\n\r\n0\r\n\r\n")
    # Closed by the timeout (1.5 s after the request arrived), not by the
    # message: a lower bound, which no load can break.
    expect(elapsed).to be >= 1.45
  end

  it "starts a stream with the backlog and the status instead of the empty chunk" do
    id = publish_via(server, "/c", "one")
    raw = read_all(open_request(server.port, poll_request(client_id, form([["/c", "-1"], ["/d", (id - 1).to_s]]))))
    payloads = stream_payloads(raw)
    expect(payloads.first).to eq([{ "global_id" => -1, "message_id" => -1, "channel" => "/__status",
                                    "data" => { "/c" => id } }])
    expect(payloads.last).to eq([])
  end

  it "long-polls without chunking: one message, then close (example 3)" do
    id = publish_via(server, "/chat/room-1", "old")
    request = poll_request(client_id, JSON.generate("/chat/room-1" => id, "__seq" => 9),
                           headers: { "Dont-Chunk" => "true", "Content-Type" => "application/json" })
    socket = open_request(server.port, request)
    sleep 0.2
    new_id = publish_via(server, "/chat/room-1", "bye")
    raw = read_all(socket, timeout: 5)
    body = %([{"global_id":#{new_id_global(new_id)},"message_id":#{new_id},"channel":"/chat/room-1","data":"bye"}])
    expect(raw).to eq("HTTP/1.1 200 OK\r\n#{head_of(raw)}content-type: application/json; charset=utf-8\r\n" \
                      "content-length: #{body.bytesize}\r\n\r\n#{body}")
  end

  def new_id_global(message_id)
    SpecHelpers.backend_name == :redis ? 2 : message_id
  end

  it "answers [] at the timeout without chunking, and never chunks HTTP/1.0 (example 4)" do
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    raw = read_all(open_request(server.port, poll_request(client_id, form([["/quiet", ""]]), version: "1.0")), timeout: 30)
    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be >= 1.45
    expect(raw).to eq("HTTP/1.1 200 OK\r\n#{head_of(raw)}content-type: application/json; charset=utf-8\r\n" \
                      "content-length: 2\r\n\r\n[]")
  end

  it "holds more long polls than Puma has threads and still answers a normal request meanwhile" do
    stop_server(server)
    roomy = start_server(threads: 2, env: { "MB_LONG_POLLING_INTERVAL" => "30000" })
    sockets = Array.new(6) { |i| open_request(roomy.port, poll_request("holder#{i}", form([["/hold", ""]]))) }
    sockets.each { |s| read_until(s, /\r\n\r\n7\r\n/) }
    # Answered while all six are still parked (they end only after 30 s):
    # had they held Puma's two threads, it would wait until then.
    expect(http(roomy.port, "GET", "/elsewhere")[2]).to eq("app")
    publish_via(roomy, "/hold", "to all")
    sockets.each { |s| expect(read_until(s, /to all/)).to include('"data":"to all"') }
    sockets.each(&:close)
  end

  it "a newer request of the same client replaces the older one; an older seq is closed at once" do
    old = open_request(server.port, poll_request(client_id, form([["/r", ""], %w[__seq 2]])))
    read_until(old, /7\r\n\[\]/)
    newer = open_request(server.port, poll_request(client_id, form([["/r", ""], %w[__seq 3]])))
    read_until(newer, /7\r\n\[\]/)
    expect(read_all(old, timeout: 3)).to end_with("7\r\n[]\r\n|\r\n\r\n0\r\n\r\n")
    stale = read_all(open_request(server.port, poll_request(client_id, form([["/r", ""], %w[__seq 1]]))), timeout: 3)
    expect(stale).to end_with("7\r\n[]\r\n|\r\n\r\n0\r\n\r\n")
    publish_via(server, "/r", "still live") # the stale request did not unregister the newer one (§9 Q36)
    expect(read_until(newer, /still live/)).to include("still live")
    newer.close
  end

  it "survives a peer closing mid-stream and keeps serving the others" do
    other = open_request(server.port, poll_request("other", form([["/p", ""]])))
    read_until(other, /7\r\n\[\]/)
    5.times do |i|
      s = open_request(server.port, poll_request("leaver#{i}", form([["/p", ""]])))
      read_until(s, /7\r\n\[\]/)
      s.close
    end
    publish_via(server, "/p", "after leavers")
    expect(read_until(other, /after leavers/)).to include("after leavers")
    other.close
    expect(File.read(server.log)).not_to match(/EPIPE|ECONNRESET|Broken pipe/i)
  end

  # A streaming socket whose reader never reads, with a small receive buffer
  # (set before connecting, so the window it advertises stays small).
  def unread_socket(port, request)
    socket = Socket.new(:INET, :STREAM)
    socket.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
    socket.connect(Socket.sockaddr_in(port, "127.0.0.1"))
    socket.write(request)
    socket
  end

  it "a slow reader does not delay the others; past its queue bound it is closed and reconnects losing nothing" do
    stop_server(server)
    server = start_server(threads: 2, env: { "MB_LONG_POLLING_INTERVAL" => "60000" })
    slow = unread_socket(server.port, poll_request("slow", form([["/s", ""]])))
    fast = open_request(server.port, poll_request("fast", form([["/s", ""]])))
    read_until(fast, /7\r\n\[\]/)
    wait_for(message: "both parked") { JSON.parse(http(server.port, "GET", "/diagnostics")[2])["web_clients"]["parked"] == 2 }
    # Small enough that 256 messages stay under the outbox's 1 MiB bound, so
    # that the message bound is the one reached.
    payload = "x" * 2_000
    received = +""
    searched = 0
    published = []
    # Past what the kernel buffers (a 64 KiB send buffer), the queue bound is
    # 256 messages. The channel keeps them all (max_backlog_size),
    # so that the reconnect finds everything.
    until published.length >= 1_800
      published << publish_via(server, "/s", "#{published.length}#{payload}", max_backlog_size: 5_000)
      mark = %("data":"#{published.length - 1}x)
      until (found = received.index(mark, searched))
        raise "the fast client stopped after #{searched} bytes" unless fast.wait_readable(10)

        chunk = fast.read_nonblock(1 << 20, exception: false)
        raise "the fast client's stream ended" if chunk.nil?

        received << chunk unless chunk == :wait_readable
      end
      searched = found + mark.length
      next unless (published.length % 25).zero?
      break if JSON.parse(http(server.port, "GET", "/diagnostics")[2])["web_clients"]["slow_closed"] >= 1
    end
    stats = JSON.parse(http(server.port, "GET", "/diagnostics")[2])["web_clients"]
    expect(stats["slow_closed"]).to eq(1), "closed past the bound after #{published.length} messages: #{stats}"
    expect(stats["closed"]["slow_consumer"]).to eq(1)
    expect(published.length).to be > 256
    # The fast client got every message, in order, meanwhile.
    expect(received.scan(/"data":"(\d+)x/).flatten.map(&:to_i)).to eq((0...published.length).to_a)
    # The slow one reads what reached it, then the end of the connection
    # (no final chunk: it was cut, not answered).
    raw = read_all(slow, timeout: 30)
    expect(raw).not_to end_with("0\r\n\r\n")
    got = complete_records(raw).reject { |m| m["channel"] == "/__status" }
    expect(got.map { |m| m["data"].to_i }).to eq((0...got.length).to_a)
    expect(got.length).to be < published.length
    # It reconnects with its last id and gets all the rest from the backlog.
    last = got.empty? ? published.first - 1 : got.last["message_id"]
    rest = read_all(open_request(server.port, poll_request("slow", form([["/s", last.to_s]]), headers: { "Dont-Chunk" => "1" })))
    rest = JSON.parse(rest.split("\r\n\r\n", 2)[1])
    expect((got + rest).map { |m| m["data"].to_i }).to eq((0...published.length).to_a)
    puts format("slow reader: closed after %d messages; it had read %d, its reconnect got the other %d from the backlog",
                published.length, got.length, rest.length)
    fast.close
  end

  it "falls back to immediate answers beyond max_active_clients" do
    stop_server(server)
    small = start_server(env: { "MB_MAX_ACTIVE_CLIENTS" => "2", "MB_LONG_POLLING_INTERVAL" => "3000" })
    parked = Array.new(2) { |i| open_request(small.port, poll_request("p#{i}", form([["/m", ""]]))) }
    parked.each { |s| read_until(s, /7\r\n\[\]/) }
    # Answered at once: a complete response (not a stream), while the two
    # others are still parked (for 3 s).
    raw = read_all(open_request(small.port, poll_request("third", form([["/m", ""]]))))
    expect(raw).to include("Content-Length: 2").and end_with("[]")
    expect(raw).not_to include("transfer-encoding")
    parked.each(&:close)
  end

  it "never delivers a targeted message to anyone else (random targets and identities)" do
    rng = Random.new(RSpec.configuration.seed)
    identities = Array.new(6) do |i|
      { user: [1, 2, 3, nil].sample(random: rng), groups: [[], [10], [20], [10, 20]].sample(random: rng), id: "who#{i}" }
    end
    sockets = identities.map do |who|
      headers = { "X-User-Id" => JSON.generate(who[:user]), "X-Group-Ids" => JSON.generate(who[:groups]) }
      s = open_request(server.port, poll_request(who[:id], form([["/t", ""]]), headers: headers))
      read_until(s, /7\r\n\[\]/)
      s
    end
    sent = Array.new(12) do |n|
      opts = {}
      opts[:user_ids] = [[1], [2], [1, 3]].sample(random: rng) if rng.rand < 0.6
      opts[:group_ids] = [[10], [20]].sample(random: rng) if rng.rand < 0.4
      opts[:client_ids] = [identities.sample(random: rng)[:id]] if rng.rand < 0.3
      publish_via(server, "/t", "m#{n}", opts)
      ["m#{n}", opts]
    end
    publish_via(server, "/t", "end")
    identities.zip(sockets).each do |who, socket|
      got = read_until(socket, /"data":"end"/).scan(/"data":"(m\d+)"/).flatten
      expected = sent.select do |_, o|
        client_ok = o[:client_ids].nil? || o[:client_ids].include?(who[:id])
        users = o[:user_ids] || []
        groups = o[:group_ids] || []
        client_ok && ((users.empty? && groups.empty?) || users.include?(who[:user]) || !(groups & who[:groups]).empty?)
      end.map(&:first)
      expect(got).to eq(expected), "identity #{who.inspect}"
      socket.close
    end
  end
end
