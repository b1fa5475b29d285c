# frozen_string_literal: true

RSpec.describe "HTTP polling through a real Puma", :integration do
  include ServerHelpers

  let!(:server) { start_server }
  let(:client_id) { "5f1c0e2a9b7d4c3e8a6f0b1d2c3e4f5a" }

  # /notices 1-6 (6 for user 42 only), then /chat/room-1 twice; returns the ids.
  def seed_reference_state
    notices = Array.new(5) { |i| publish_via(server, "/notices", { "n" => i + 1, "text" => "notice #{i + 1}" }) }
    notices << publish_via(server, "/notices", "private", user_ids: [42])
    chat = Array.new(2) { publish_via(server, "/chat/room-1", "hi") }
    [notices, chat]
  end

  it "answers a poll with the backlog after the ids and a /__status (COMPAT §3.13 example 1)" do
    notices, chat = seed_reference_state
    body = form([["/chat/room-1", "-1"], ["/notices", notices[3].to_s], %w[__seq 7]])
    raw = read_all(open_request(server.port, poll_request(client_id, body, query: "dlp=t", headers: { "Dont-Chunk" => "true" })))
    head, payload = raw.split("\r\n\r\n", 2)
    expect(head).to start_with("HTTP/1.1 200")
    expect(head).to include("cache-control: must-revalidate, private, max-age=0\r\ncontent-type: application/json; " \
                            "charset=utf-8\r\npragma: no-cache\r\nexpires: 0")
    # global ids 1..8 on both backends; message ids are dense per channel on Redis, global on memory
    expect(payload).to eq(%([{"global_id":5,"message_id":#{notices[4]},"channel":"/notices","data":{"n":5,"text":"notice 5"}},) +
                          %({"global_id":-1,"message_id":-1,"channel":"/__status","data":{"/chat/room-1":#{chat[1]},) +
                          %("/notices":#{notices[5]}}}]))
    as42 = read_all(open_request(server.port, poll_request(client_id, body, query: "dlp=t", headers: { "X-User-Id" => "42" })))
    messages = JSON.parse(as42.split("\r\n\r\n", 2)[1])
    expect(messages.map { |m| m["message_id"] }).to eq([notices[4], notices[5], -1])
    expect(messages.last["data"]).to eq({ "/chat/room-1" => chat[1] })
  end

  it "implements each last-id case: -N look-behind, N, up to date, ahead of the bus, empty" do
    ids = 3.times.map { |i| publish_via(server, "/c", i) }
    poll = lambda do |value|
      raw = read_all(open_request(server.port, poll_request(client_id, form([["/c", value]]), query: "dlp=t")))
      JSON.parse(raw.split("\r\n\r\n", 2)[1])
    end
    expect(poll.call("-2").map { |m| m["data"] }).to eq([2])
    expect(poll.call(ids[0].to_s).map { |m| m["data"] }).to eq([1, 2])
    expect(poll.call(ids[2].to_s)).to eq([])
    ahead = poll.call((ids[2] + 100).to_s)
    expect(ahead).to eq([{ "global_id" => -1, "message_id" => -1, "channel" => "/__status", "data" => { "/c" => ids[2] } }])
    expect(poll.call("")).to eq([])
    expect(poll.call("-1").last["data"]).to eq({ "/c" => ids[2] })
  end

  it "accepts JSON bodies and answers OPTIONS, 404 and other paths like the reference" do
    id = publish_via(server, "/j", "x")
    raw = read_all(open_request(server.port, poll_request(client_id, JSON.generate("/j" => id - 1, "__seq" => 3),
                                                          query: "dlp=t", headers: { "Content-Type" => "application/json" })))
    expect(JSON.parse(raw.split("\r\n\r\n", 2)[1]).map { |m| m["data"] }).to eq(["x"])

    status, head, body = http(server.port, "OPTIONS", "/message-bus/abc/poll", nil, "X-Want-Extra" => "1")
    expect([status, body]).to eq([200, "OK"])
    expect(head).to include("content-type: application/json; charset=utf-8")
    expect(head).to include("x-extra: yes")
    expect(http(server.port, "POST", "/message-bus/")[0, 3].values_at(0, 2)).to eq([404, "not found"])
    expect(http(server.port, "GET", "/elsewhere")[2]).to eq("app")
  end

  it "keeps sites apart and lets /global/ channels through" do
    stop_server(server)
    multi = start_server(env: { "MB_MULTISITE" => "1" })
    publish_via(multi, "/news", "for a", site_id: "a")
    publish_via(multi, "/global/all", "everyone", site_id: "a")
    poll = lambda do |site, channel|
      raw = read_all(open_request(multi.port, poll_request(client_id, form([[channel, "0"]]), query: "dlp=t",
                                                                                              headers: { "X-Site-Id" => site })))
      JSON.parse(raw.split("\r\n\r\n", 2)[1]).map { |m| m["data"] }
    end
    expect(poll.call("a", "/news")).to eq(["for a"])
    expect(poll.call("b", "/news")).to eq([])
    expect(poll.call("b", "/global/all")).to eq(["everyone"])
  end

  it "publishes through the broadcast route only when allowed" do
    status, _, body = http(server.port, "POST", "/message-bus/broadcast", "channel=/b&data=hello",
                           "Content-Type" => "application/x-www-form-urlencoded")
    expect(body).not_to eq("sent") # a client id called "broadcast": a poll
    expect(status).to eq(400) # whose "channel" key has an id that is not a number
    stop_server(server)
    open = start_server(env: { "MB_ALLOW_BROADCAST" => "1" })
    status, head, body = http(open.port, "POST", "/message-bus/broadcast", "channel=/b&data=hello",
                              "Content-Type" => "application/x-www-form-urlencoded")
    expect([status, body]).to eq([200, "sent"])
    expect(head).to include("content-type: text/html")
    raw = read_all(open_request(open.port, poll_request(client_id, form([["/b", "0"]]), query: "dlp=t")))
    expect(JSON.parse(raw.split("\r\n\r\n", 2)[1]).map { |m| m["data"] }).to eq(["hello"])
  end

  it "answers bad input with a clear 4xx and keeps serving" do
    cases = {
      "invalid JSON" => [poll_request(client_id, "{nope", headers: { "Content-Type" => "application/json" }), 400,
                         /invalid JSON/],
      "a JSON array" => [poll_request(client_id, "[1]", headers: { "Content-Type" => "application/json" }), 400, /object/],
      "a non-numeric id" => [poll_request(client_id, form([["/c", "abc"]])), 400, /invalid last id/],
      "an odd client id" => [poll_request("bad%00id'x", form([["/c", "1"]])), 400, /invalid client id/],
      "too many channels" => [poll_request(client_id, form(Array.new(1100) { |i| ["/c#{i}", "1"] })), 413, /too many channels/],
      "a huge body" => [poll_request(client_id, "a=#{'x' * 600_000}"), 413, /too large/],
      "invalid UTF-8 channel" => [poll_request(client_id, "%FF%FE=1"), 400, /UTF-8/]
    }
    cases.each do |name, (request, status, message)|
      raw = read_all(open_request(server.port, request))
      expect(raw[%r{\AHTTP/1\.1 (\d+)}, 1].to_i).to eq(status), "#{name}: #{raw[0, 200]}"
      expect(raw.split("\r\n\r\n", 2)[1]).to match(message), name
    end
    expect(JSON.parse(http(server.port, "GET", "/pid")[2])).to be_a(Integer)
    json = { "Content-Type" => "application/json" }
    empty_json = read_all(open_request(server.port, poll_request(client_id, "", query: "dlp=t", headers: json)))
    expect(empty_json.split("\r\n\r\n", 2)[1]).to eq("[]") # §9 Q50: no channels
  end
end
