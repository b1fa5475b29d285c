# frozen_string_literal: true

RSpec.describe "MessageBus.diagnostics in a server", :integration do
  include ServerHelpers

  def diagnostics(server)
    JSON.parse(http(server.port, "GET", "/diagnostics")[2])
  end

  it "counts the waiting web clients and delivered messages of the middleware" do
    server = start_server(env: { "MB_LONG_POLLING_INTERVAL" => "10000" })
    expect(diagnostics(server)["web_clients"]).to include("parked" => 0)
    socket = open_request(server.port, poll_request("diag", form([["/diag", "-1"]])))
    read_until(socket, %r{/__status.*\r\n\|\r\n\r\n}m)
    wait_for(message: "one parked client") { diagnostics(server)["web_clients"]["parked"] == 1 }
    publish_via(server, "/diag", "hello")
    read_until(socket, /hello/)
    # Counted by the fan-out thread once its write returned: maybe just after the client read it.
    wait_for(message: "the delivery counted") { diagnostics(server)["web_clients"]["delivered"] >= 1 }
  ensure
    socket&.close
  end
end
