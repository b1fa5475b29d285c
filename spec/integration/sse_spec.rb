# frozen_string_literal: true

# Server-Sent Events against a real Puma: the stream's head, one event per
# payload (data: the poll array, id: the positions it covers), resuming
# with Last-Event-ID with no gap and no duplicate, keepalive comments, and
# the route turned off.
require_relative "../support/sse_client"

RSpec.describe "Server-Sent Events through a real Puma", :integration do
  include ServerHelpers

  let!(:server) { start_server(threads: 2, env: server_env) }
  let(:server_env) { {} }

  def open_stream(client_id, query, headers = {})
    socket = open_request(server.port, SseClient.request(client_id, query, headers))
    (@sockets ||= []) << socket
    socket
  end

  after { (@sockets || []).each { |s| s.close unless s.closed? } }

  # Parsed events (id, data) in `buffer` after the head.
  def events(buffer) = SseClient.events(buffer)

  it "streams the backlog, then live messages, each event's id the positions it covers" do
    first = publish_via(server, "/news", "old")
    socket = open_stream("sse1", form([["/news", (first - 1).to_s], ["/quiet", "-1"]]))
    buffer = read_until(socket, /\n\n/)
    head = buffer.split("\r\n\r\n").first
    expect(head).to start_with("HTTP/1.1 200 OK\r\n")
    expect(head).to include("content-type: text/event-stream; charset=utf-8")
    id, data = events(buffer).first
    expect(data.first).to include("channel" => "/news", "data" => "old")
    expect(data.last).to include("channel" => "/__status", "data" => { "/quiet" => 0 })
    expect(JSON.parse(id)).to eq("/news" => first, "/quiet" => 0)
    second = publish_via(server, "/news", { "line" => "two\nlines" })
    read_until(socket, /two\\nlines.*\n\n/m, buffer)
    id, data = events(buffer).last
    expect(data).to eq([{ "global_id" => data.first["global_id"], "message_id" => second, "channel" => "/news",
                          "data" => { "line" => "two\nlines" } }])
    expect(JSON.parse(id)).to eq("/news" => second, "/quiet" => 0)
  end

  it "targets by user and client id as polls do" do
    mine = open_stream("sse-u1", form([["/t", "-1"]]), "X-User-Id" => "1")
    other = open_stream("sse-u2", form([["/t", "-1"]]), "X-User-Id" => "2")
    buffers = [mine, other].to_h { |s| [s, read_until(s, /\n\n/)] }
    publish_via(server, "/t", "for user 1", user_ids: [1])
    publish_via(server, "/t", "for client sse-u2", client_ids: ["sse-u2"])
    publish_via(server, "/t", "everyone")
    got = lambda do |s|
      events(read_until(s, /"everyone".*\n\n/m, buffers[s])).drop(1).flat_map { |_, d| d.map { |m| m["data"] } }
    end
    expect(got.call(mine)).to eq(["for user 1", "everyone"])
    expect(got.call(other)).to eq(["for client sse-u2", "everyone"])
  end

  it "resumes with Last-Event-ID exactly: no gap, no duplicate" do
    socket = open_stream("sse2", form([["/r", "-1"]]))
    buffer = read_until(socket, /\n\n/)
    publish_via(server, "/r", "one")
    read_until(socket, /"one".*\n\n/m, buffer)
    last_id = events(buffer).last.first
    socket.close
    publish_via(server, "/r", "two")
    publish_via(server, "/r", "three")
    resumed = open_stream("sse2", form([["/r", "-1"]]), "Last-Event-ID" => last_id)
    got = read_until(resumed, /"three".*\n\n/m)
    expect(events(got).flat_map { |_, data| data.map { |m| m["data"] } }).to eq(%w[two three])
    expect(http(server.port, "GET", "/message-bus/sse3/sse?%2Fr=1", nil, "Last-Event-ID" => "nope")[0]).to eq(400)
  end

  context "with a short keepalive" do
    let(:server_env) { { "MB_SSE_KEEPALIVE" => "0.1" } }

    it "writes comment lines while idle" do
      socket = open_stream("sse4", form([["/idle", ""]]))
      expect(read_until(socket, /: keepalive\n\n: keepalive\n\n/)).to include(": keepalive")
    end
  end

  context "with sse_enabled = false" do
    let(:server_env) { { "MB_SSE" => "off" } }

    it "answers 404 with a reason" do
      status, _, body = http(server.port, "GET", "/message-bus/sse5/sse?%2Fx=-1")
      expect([status, body]).to eq([404, "Server-Sent Events are off on this server (sse_enabled = false)"])
    end
  end
end
