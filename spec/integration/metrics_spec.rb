# frozen_string_literal: true

require "open3"
require_relative "../support/redis_server"
require_relative "../support/websocket_client"

# `MessageBus::Rack::Metrics` mounted at /metrics of the test app, scraped
# from a real Puma and parsed by Python's prometheus_client OpenMetrics
# parser (strict: a malformed scrape fails the example).
RSpec.describe "Metrics scraped from a real server", :integration do
  include ServerHelpers

  parser = File.expand_path("../support/parse_metrics.py", __dir__)
  let(:parser) { parser }

  def scrape(server)
    status, head, body = http(server.port, "GET", "/metrics")
    expect(status).to eq(200)
    expect(head).to match(%r{^content-type: application/openmetrics-text; version=1\.0\.0; charset=utf-8}i)
    out, err, st = Open3.capture3("python3", parser, stdin_data: body)
    raise "prometheus_client could not parse the scrape: #{err}\n#{body}" unless st.success?

    JSON.parse(out)
  end

  # The value of the sample `name` whose labels include `labels`, summed
  # over the others (0 when absent).
  def value(samples, name, labels = {})
    samples.select { |n, l, _| n == name && labels.all? { |k, v| l[k.to_s] == v } }.sum { |_, _, v| v }
  end

  let(:backend) { SpecHelpers.backend_name.to_s }

  it "moves as publishes, parked clients, deliveries and a slow consumer happen" do
    server = start_server(env: { "MB_LONG_POLLING_INTERVAL" => "30000" })
    before = scrape(server)
    expect(value(before, "message_bus_published_total", backend: backend)).to eq(0)

    publish_via(server, "/metrics-a", "x", count: 10)
    after = scrape(server)
    expect(value(after, "message_bus_published_total", backend: backend)).to eq(10)
    expect(value(after, "message_bus_publish_duration_seconds_count", backend: backend)).to eq(10)
    expect(value(after, "message_bus_publish_duration_seconds_bucket", backend: backend, le: "+Inf")).to eq(10)
    expect(value(after, "message_bus_publish_errors_total", backend: backend)).to eq(0)

    clients = Array.new(5) { |n| park_streaming("metrics-#{n}", "/metrics-b", srv: server) }
    wait_for(message: "5 streaming clients waiting") do
      value(scrape(server), "message_bus_web_connections_waiting", transport: "streaming") == 5
    end
    publish_via(server, "/metrics-b", "hello")
    clients.each { |c| read_until(c, /hello/) }
    wait_for(message: "5 deliveries counted") do
      value(scrape(server), "message_bus_web_messages_delivered_total", transport: "streaming") == 5
    end
    samples = scrape(server)
    expect(value(samples, "message_bus_web_connections_opened_total", transport: "streaming")).to eq(5)
    expect(value(samples, "message_bus_web_delivery_duration_seconds_count")).to be_between(1, 5)
    clients.each { |c| reset(c) }

    slow = park_streaming("metrics-slow", "/metrics-c", srv: server, socket: small_window_socket(server.port))
    publish_via(server, "/metrics-c", "y" * 6000, count: 300) # 1.8 MB: over the outbox bounds
    wait_for(timeout: 20, message: "the slow consumer's close counted") do
      value(scrape(server), "message_bus_web_connections_closed_total", reason: "slow_consumer") == 1
    end
    slow.close
    # The readers reset (a FIN alone is noticed at the interval's end): every connection ends under one reason.
    wait_for(message: "every connection closed") do
      s = scrape(server)
      value(s, "message_bus_web_connections_waiting") == 0 &&
        value(s, "message_bus_web_connections_closed_total") == value(s, "message_bus_web_connections_opened_total")
    end
    diagnostics = JSON.parse(http(server.port, "GET", "/diagnostics")[2])["web_clients"]
    s = scrape(server)
    expect(diagnostics["delivered"]).to eq(value(s, "message_bus_web_messages_delivered_total"))
    expect(diagnostics["closed"]["slow_consumer"]).to eq(value(s, "message_bus_web_connections_closed_total",
                                                               reason: "slow_consumer"))
  ensure
    (clients || []).each { |c| c.close unless c.closed? }
    slow&.close unless slow&.closed?
  end

  it "counts gate jobs for client message filters and subscriber blocks run" do
    server = start_server(env: { "MB_FILTERS" => "1", "MB_ECHO" => "1" })
    socket = park_streaming("metrics-f", "/filtered", srv: server)
    publish_via(server, "/filtered", "shown")
    publish_via(server, "/filtered", "hidden")
    publish_via(server, "/filtered", "shown again")
    read_until(socket, /shown again/)
    publish_via(server, "/echo", "e1")
    publish_via(server, "/echo", "e2")
    wait_for(message: "the echo subscription ran twice") do
      value(scrape(server), "message_bus_subscriber_blocks_total") == 2
    end
    s = scrape(server)
    expect(value(s, "message_bus_gate_jobs_total")).to eq(3)
    expect(value(s, "message_bus_gate_jobs_waiting")).to eq(0)
    expect(value(s, "message_bus_subscriber_errors_total")).to eq(0)
    expect(value(s, "message_bus_web_messages_delivered_total", transport: "streaming")).to eq(2)
  ensure
    socket&.close
  end

  it "files WebSocket connections and their messages under transport=\"websocket\"" do
    server = start_server
    client = WebSocketClient.open(server.port, "metrics-ws")
    client.subscribe("/metrics-ws" => -1)
    client.messages_until { |m| m.any? { |x| x["channel"] == "/__status" } }
    publish_via(server, "/metrics-ws", "over ws")
    client.messages_until { |m| m.any? { |x| x["data"] == "over ws" } }
    wait_for(message: "the WebSocket delivery counted") do
      value(scrape(server), "message_bus_web_messages_delivered_total", transport: "websocket") == 1
    end
    s = scrape(server)
    expect(value(s, "message_bus_web_connections_opened_total", transport: "websocket")).to eq(1)
    expect(value(s, "message_bus_web_connections_waiting", transport: "websocket")).to eq(1)
    client.close(1000, "bye")
    wait_for(message: "the WebSocket close counted") do
      value(scrape(server), "message_bus_web_connections_closed_total", transport: "websocket",
                                                                        reason: "client_closed") == 1
    end
    expect(value(scrape(server), "message_bus_web_connections_waiting", transport: "websocket")).to eq(0)
  ensure
    client&.close_socket
  end

  it "answers HEAD without a body and refuses other methods" do
    server = start_server
    status, head, body = http(server.port, "HEAD", "/metrics")
    expect(status).to eq(200)
    expect(head).to match(%r{^content-type: application/openmetrics-text}i)
    expect(body.to_s).to eq("")
    status, head, = http(server.port, "POST", "/metrics", "x")
    expect(status).to eq(405)
    expect(head).to match(/^allow: GET, HEAD/i)
  end

  it "counts a firehose reconnect after its Redis connection is killed", if: SpecHelpers.backend_name == :redis do
    redis = PrivateRedis.new.start
    server = start_server(env: { "REDIS_URL" => redis.url, "MB_LONG_POLLING_INTERVAL" => "60000" })
    # The subscriber thread listens once the first poll or subscription needs it.
    socket = park_streaming("metrics-r", "/metrics-r", srv: server)
    wait_for(message: "the firehose subscribed") do
      out, = Open3.capture2("redis-cli", "-p", redis.port.to_s, "CLIENT", "LIST", "TYPE", "pubsub")
      out.include?("sub=1")
    end
    expect(value(scrape(server), "message_bus_firehose_reconnects_total", backend: "redis")).to eq(0)
    killed, = Open3.capture2("redis-cli", "-p", redis.port.to_s, "CLIENT", "KILL", "TYPE", "pubsub")
    expect(killed.to_i).to be >= 1
    wait_for(timeout: 10, message: "a reconnect counted") do
      value(scrape(server), "message_bus_firehose_reconnects_total", backend: "redis") >= 1
    end
    # And the bus still delivers after it.
    wait_for(timeout: 10, message: "subscribed again") do
      out, = Open3.capture2("redis-cli", "-p", redis.port.to_s, "CLIENT", "LIST", "TYPE", "pubsub")
      out.include?("sub=1")
    end
    publish_via(server, "/metrics-r", "after the reconnect")
    read_until(socket, /after the reconnect/)

    # Redis gone: the publish is queued in memory, then flushed once it is back
    # (into an empty Redis: ids restart, which the epoch of issue 16 is for).
    redis.stop
    expect(publish_via(server, "/metrics-r", "while down")).to be_nil
    s = scrape(server)
    expect(value(s, "message_bus_publishes_queued_total", backend: "redis")).to eq(1)
    expect(value(s, "message_bus_publish_queue_depth")).to eq(1)
    redis.start
    wait_for(timeout: 15, message: "the queue flushed") { value(scrape(server), "message_bus_publish_queue_depth") == 0 }
    expect(value(scrape(server), "message_bus_publishes_dropped_total")).to eq(0)
  ensure
    socket&.close
    redis&.stop
  end
end
