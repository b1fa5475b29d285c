# frozen_string_literal: true

require "digest"
require_relative "../support/websocket_client"

RSpec.describe "WebSocket through a real Puma", :integration do
  include ServerHelpers

  let!(:server) { start_server(threads: 2, env: server_env) }
  let(:server_env) { {} }

  def ws(client_id = "ws1", **opts)
    client = WebSocketClient.open(server.port, client_id, **opts)
    (@clients ||= []) << client
    client
  end

  after { (@clients || []).each(&:close_socket) }

  def stats
    JSON.parse(http(server.port, "GET", "/diagnostics")[2])["web_clients"]
  end

  def closes(reason)
    stats["closed"].fetch(reason, 0)
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
    # Unsubscribed: no more of /chat; a later subscribe starts where asked.
    client.unsubscribe(["/chat"])
    client.subscribe("/other" => 0)
    publish_via(server, "/other", "probe")
    # From 0: the probe, from the backlog or live, whichever comes first.
    client.messages_until { |m| m.any? { |x| x["data"] == "probe" } }
    publish_via(server, "/chat", "not for you")
    publish_via(server, "/other", "last")
    seen = client.messages_until { |m| m.any? { |x| x["data"] == "last" } }
    expect(seen.map { |m| m["channel"] }.uniq).to eq(["/other"])
  end
end
