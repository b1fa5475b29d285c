# frozen_string_literal: true

RSpec.describe "Client message filters and custom codecs on the HTTP path", :integration do
  include ServerHelpers

  def poll(server, channels, client_id: "gate")
    raw = read_all(open_request(server.port, poll_request(client_id, form(channels), query: "dlp=t")))
    JSON.parse(raw.split("\r\n\r\n", 2)[1])
  end

  it "withholds backlog and live messages a filter denies, with a status, and leaves other channels alone" do
    server = start_server(env: { "MB_FILTERS" => "1" })
    publish_via(server, "/filtered", "shown")
    publish_via(server, "/filtered", "hidden")
    last = publish_via(server, "/filtered", "shown too")
    publish_via(server, "/other", "hidden") # not under a filter prefix
    publish_via(server, "/rx1", "secret plan")
    publish_via(server, "/rx1", "public plan")

    got = poll(server, [["/filtered", "0"], ["/other", "0"], ["/rx1", "0"]])
    expect(got.reject { |m| m["channel"] == "/__status" }.map { |m| [m["channel"], m["data"]] })
      .to eq([["/filtered", "shown"], ["/filtered", "shown too"], ["/other", "hidden"], ["/rx1", "public plan"]])
    status = got.find { |m| m["channel"] == "/__status" }["data"]
    expect(status.keys).to contain_exactly("/filtered", "/rx1")
    expect(status["/filtered"]).to eq(last)

    socket = open_request(server.port, poll_request("live", form([["/filtered", ""]])))
    read_until(socket, /7\r\n\[\]/)
    publish_via(server, "/filtered", "hidden")
    publish_via(server, "/filtered", "after")
    buffer = read_until(socket, /"after"/)
    expect(buffer).not_to include('"hidden"')
    socket.close
  end

  it "serves web clients when a custom transport codec is configured" do
    server = start_server(env: { "MB_CODEC" => "prefixed" })
    publish_via(server, "/coded", { "n" => 1 }, user_ids: [5])
    last = publish_via(server, "/coded", { "n" => 2 })
    expect(poll(server, [["/coded", "0"]])).to eq(
      [{ "global_id" => 2, "message_id" => last, "channel" => "/coded", "data" => { "n" => 2 } },
       { "global_id" => -1, "message_id" => -1, "channel" => "/__status", "data" => { "/coded" => last } }]
    )
    socket = open_request(server.port, poll_request("live", form([["/coded", ""]])))
    read_until(socket, /7\r\n\[\]/)
    publish_via(server, "/coded", { "n" => 3 })
    expect(read_until(socket, /"n":3/)).to include('"data":{"n":3}')
    socket.close
  end
end
