# frozen_string_literal: true

require "etc"
require "socket"

# Raw-socket clients misbehaving on a parked long poll, against a real Puma
# (issue 12): bytes sent after the request, a half-close, a client that never
# reads, and the close counters of `MessageBus.diagnostics[:web_clients]`.
RSpec.describe "Parked long-poll sockets under misbehaving clients", :integration do
  include ServerHelpers

  let(:first_chunk) { ServerHelpers::FIRST_CHUNK }
  # A message as big as every backend's live path carries (PostgreSQL NOTIFY
  # takes less than 8000 bytes).
  let(:big_data) { "x" * 6000 }

  # The servers started by examples do not reset the store (MB_RESET=0):
  # this one's parked polls would end at the reset it then detects.
  before(:all) do
    @server = start_server(threads: 4, env: { "MB_LONG_POLLING_INTERVAL" => "3000" })
    @servers.delete(@server)
  end

  after(:all) { stop_server(@server) }

  let(:server) { @server }

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  def web_clients(srv = server) = JSON.parse(http(srv.port, "GET", "/diagnostics")[2])["web_clients"]

  def closes(srv = server) = web_clients(srv).fetch("closed", {})

  def park_streaming(client_id, channel, srv: server, seq: nil, socket: nil) = super

  # Bytes the kernel holds unacknowledged for the server's side of the
  # connection whose client end is `client` (the Send-Q of `ss`).
  def server_send_queue(srv, client)
    local = format("0100007F:%04X", srv.port)
    remote = format("0100007F:%04X", client.local_address.ip_port)
    line = File.readlines("/proc/net/tcp").find { |l| l.split[1] == local && l.split[2] == remote }
    line&.split&.at(4)&.split(":")&.first&.to_i(16)
  end

  def cpu_seconds(pid)
    fields = File.read("/proc/#{pid}/stat").split(") ").last.split
    (fields[11].to_i + fields[12].to_i).to_f / Etc.sysconf(Etc::SC_CLK_TCK)
  end

  it "closes a parked connection whose client keeps sending bytes, after a small bound (D2)" do
    before = closes.fetch("unexpected_input", 0)
    socket = park_streaming("chatty", "/chatty")
    cpu_before = cpu_seconds(server.pid)
    limit = 64 * 1024 * 1024
    chunk = "x" * 65_536
    sent = 0
    cut = nil
    deadline = now + 20
    while sent < limit && now < deadline
      begin
        n = socket.write_nonblock(chunk, exception: false)
        n == :wait_writable ? socket.wait_writable(0.5) : sent += n
      rescue Errno::EPIPE, Errno::ECONNRESET => e
        cut = e
        break
      end
    end
    cpu = cpu_seconds(server.pid) - cpu_before
    warn format("  chatty client: cut by %<cut>s after %<mb>.2f MB sent; server CPU %<cpu>.2f s",
                cut: cut ? cut.class : "nothing", mb: sent / 1_048_576.0, cpu: cpu)
    socket.close
    expect(cut).not_to be_nil, "the server read #{sent} bytes sent after the request without closing"
    expect(sent).to be < limit
    wait_for(message: "the close counted") { closes.fetch("unexpected_input", 0) == before + 1 }
  end

  it "keeps answering a client that half-closed after its request, chunked and Dont-Chunk (D3)" do
    socket = park_streaming("half-chunked", "/half/chunked")
    socket.close_write
    publish_via(server, "/half/chunked", "after the FIN")
    raw = read_all(socket, timeout: 15) # the stream ends at the long-polling interval
    expect(raw).to include(%("data":"after the FIN"))
    expect(raw).to end_with("\r\n|\r\n\r\n7\r\n[]\r\n|\r\n\r\n0\r\n\r\n")

    # A FIN that arrives with the request makes Puma 5.6 drop it unanswered
    # (even for a plain Rack app): half-close once the poll is parked, which
    # its own server's parked count tells.
    own = start_server(threads: 2, env: { "MB_LONG_POLLING_INTERVAL" => "10000", "MB_RESET" => "0" })
    socket = open_request(own.port, poll_request("half-plain", form([["/half/plain", ""]]), headers: { "Dont-Chunk" => "1" }))
    wait_for(message: "the poll parked") { web_clients(own)["parked"] == 1 }
    socket.close_write
    publish_via(own, "/half/plain", "after the FIN")
    raw = read_all(socket)
    expect(raw).to start_with("HTTP/1.1 200 OK\r\n")
    body = JSON.parse(raw.split("\r\n\r\n", 2).last)
    expect(body.map { |m| m["data"] }).to eq(["after the FIN"])
  end

  it "bounds what a never-reading client's socket holds in the kernel (N1)" do
    socket = park_streaming("never-reads", "/never-reads")
    publish_via(server, "/never-reads", big_data, count: 100) # 600 KB: under the outbox bounds
    samples = []
    wait_for(message: "a steady send queue") do
      samples << server_send_queue(server, socket).to_i
      sleep 0.05
      samples.size > 3 && samples.last.positive? && samples.last(3).uniq.size == 1
    end
    warn "  never-reading client: server send queue #{samples.max} bytes after 600 KB were published"
    expect(samples.max).to be <= 256 * 1024
  ensure
    socket&.close
  end

  it "counts every close under its reason (D5)" do
    # No write timeout here: a slow machine must not turn the slow consumer
    # below into one. The write timeout has a server of its own.
    counted = start_server(threads: 4, env: { "MB_LONG_POLLING_INTERVAL" => "10000", "MB_RESET" => "0",
                                              "MESSAGE_BUS_WRITE_TIMEOUT_MS" => "60000" })
    expect(web_clients(counted)).to include("slow_closed" => 0)
    count = ->(reason) { closes(counted).fetch(reason, 0) }

    timed_out = park_streaming("ta", "/ta", srv: counted) # ends at the interval, read last
    wait_for(message: "one parked") { web_clients(counted)["parked"] == 1 }

    answered = open_request(counted.port, poll_request("tb", form([["/tb", ""]]), headers: { "Dont-Chunk" => "1" }))
    wait_for(message: "two parked") { web_clients(counted)["parked"] == 2 }
    publish_via(counted, "/tb", "answer")
    expect(read_all(answered)).to include(%("data":"answer"))

    replaced = park_streaming("tc", "/tc", srv: counted, seq: 1)
    newer = park_streaming("tc", "/tc", srv: counted, seq: 2)
    expect(read_all(replaced)).to end_with("7\r\n[]\r\n|\r\n\r\n0\r\n\r\n")
    reset(newer)
    wait_for(message: "a reset counted") { count.call("peer_closed") == 1 }

    newest = park_streaming("td", "/td", srv: counted, seq: 5)
    stale = open_request(counted.port, poll_request("td", form([["/td", ""], %w[__seq 3]])))
    expect(read_all(stale)).to end_with("7\r\n[]\r\n|\r\n\r\n0\r\n\r\n")
    reset(newest)
    wait_for(message: "a second reset counted") { count.call("peer_closed") == 2 }

    chatty = park_streaming("te", "/te", srv: counted)
    begin
      Timeout.timeout(20) { loop { chatty.write("x" * 65_536) } }
    rescue Errno::EPIPE, Errno::ECONNRESET
      chatty.close
    end
    wait_for(message: "unexpected input counted") { count.call("unexpected_input") == 1 }

    slow = park_streaming("tf", "/tf", srv: counted, socket: small_window_socket(counted.port))
    publish_via(counted, "/tf", big_data, count: 300) # 1.8 MB, 300 messages: over both outbox bounds
    wait_for(timeout: 20, message: "a slow consumer cut") { count.call("slow_consumer") == 1 }
    slow.close

    expect(read_all(timed_out, timeout: 20)).to end_with("7\r\n[]\r\n|\r\n\r\n0\r\n\r\n")
    expected = { "timeout" => 1, "delivered" => 1, "replaced" => 1, "refused" => 1, "peer_closed" => 2,
                 "unexpected_input" => 1, "slow_consumer" => 1, "write_timeout" => 0, "stopped" => 0, "error" => 0,
                 "client_closed" => 0, "protocol_error" => 0, "ping_timeout" => 0 }
    wait_for(message: "every close counted") { closes(counted).values.sum == expected.values.sum }
    stats = web_clients(counted)
    expect(stats["closed"]).to eq(expected)
    expect(stats).to include("parked" => 0, "slow_closed" => 1)
  end

  # The 1,500 slow readers of N1 were all cut by the write timeout, and
  # slow_closed stayed 0.
  it "counts a slow reader cut by the write timeout (D5)" do
    stuck_server = start_server(threads: 2, env: { "MB_LONG_POLLING_INTERVAL" => "60000", "MB_RESET" => "0",
                                                   "MESSAGE_BUS_WRITE_TIMEOUT_MS" => "1000" })
    stuck = park_streaming("tg", "/tg", srv: stuck_server, socket: small_window_socket(stuck_server.port))
    # 360 KB: more than the socket takes, under both outbox bounds.
    publish_via(stuck_server, "/tg", big_data, count: 60)
    wait_for(timeout: 20, message: "a write timeout") { closes(stuck_server)["write_timeout"] == 1 }
    stuck.close
    stats = web_clients(stuck_server)
    expect(stats["closed"].values.sum).to eq(1)
    expect(stats).to include("parked" => 0, "slow_closed" => 1)
  end
end
