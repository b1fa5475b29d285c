# frozen_string_literal: true

# The app the integration specs run under a real server. Configuration comes
# from the environment; identities from request headers; `/publish` publishes
# inside the server process (the memory backend is per process).
$LOAD_PATH.unshift(File.expand_path("../../lib", __dir__))
require "message_bus"
require "json"
require "logger"
require "uri"
require_relative "../support/spec_helpers"

MessageBus.configure(SpecHelpers.backend_config)
MessageBus.configure(
  logger: Logger.new($stderr, level: Logger::WARN),
  keepalive_interval: 0,
  long_polling_interval: Integer(ENV.fetch("MB_LONG_POLLING_INTERVAL", "2000")),
  max_active_clients: Integer(ENV.fetch("MB_MAX_ACTIVE_CLIENTS", "1000")),
  base_route: ENV.fetch("MB_BASE_ROUTE", "/")
)
# MB_DEFAULT_BROADCAST=1 leaves allow_broadcast unset (the computed default).
MessageBus.configure(allow_broadcast: ENV["MB_ALLOW_BROADCAST"] == "1") unless ENV["MB_DEFAULT_BROADCAST"] == "1"
MessageBus.reset! if ENV["MB_RESET"] == "1"
# MB_LATENCY_METRICS=0: latency histograms off (bench/metrics_overhead compares).
MessageBus.latency_metrics = false if ENV["MB_LATENCY_METRICS"] == "0" && MessageBus.respond_to?(:latency_metrics=)
MessageBus.user_id_lookup { |env| env["HTTP_X_USER_ID"] && JSON.parse(env["HTTP_X_USER_ID"]) }
MessageBus.group_ids_lookup { |env| env["HTTP_X_GROUP_IDS"] && JSON.parse(env["HTTP_X_GROUP_IDS"]) }
MessageBus.site_id_lookup { |env = nil| env && env["HTTP_X_SITE_ID"] } if ENV["MB_MULTISITE"] == "1"
MessageBus.extra_response_headers_lookup { |env| { "x-extra" => "yes" } if env["HTTP_X_WANT_EXTRA"] }

MessageBus.websocket_enabled = false if ENV["MB_WEBSOCKET"] == "off"
MessageBus.sse_enabled = false if ENV["MB_SSE"] == "off"
MessageBus.websocket_ping_interval = Float(ENV["MB_WS_PING"]) if ENV["MB_WS_PING"]
MessageBus.sse_keepalive_interval = Float(ENV["MB_SSE_KEEPALIVE"]) if ENV["MB_SSE_KEEPALIVE"]
case ENV.fetch("MB_ALLOWED_ORIGINS", nil)
when "proc" then MessageBus.allowed_origins = ->(env) { env["HTTP_ORIGIN"].to_s.end_with?(".trusted.test") }
when String then MessageBus.allowed_origins = ENV["MB_ALLOWED_ORIGINS"].split(",")
end

if ENV["MB_FILTERS"] == "1"
  MessageBus.register_client_message_filter("/filtered") { |msg| msg.data != "hidden" }
  MessageBus.register_client_message_filter(%r{/rx\d}) { |msg| !msg.data.to_s.start_with?("secret") }
end

# A codec only Ruby can read: JSON behind a prefix.
class PrefixedCodec
  def encode(hash) = "PFX#{JSON.generate(hash)}"
  def decode(payload) = JSON.parse(payload.delete_prefix("PFX"))
end
MessageBus.transport_codec = PrefixedCodec.new if ENV["MB_CODEC"] == "prefixed"

# MB_ECHO=1: a subscription made when the app loads (in the master when it
# is preloaded), whose deliveries `/echoed` reports, as in-process code
# (DistributedCache, cache busting) relies on in every worker.
ECHOED = [] # rubocop:disable Style/MutableConstant -- appended to by the subscription
ECHO_LOCK = Mutex.new
MessageBus.subscribe("/echo") { |m| ECHO_LOCK.synchronize { ECHOED << m.data } } if ENV["MB_ECHO"] == "1"

# `/fork_probe?report=PATH&seconds=N`: forks a child that never calls
# MessageBus.after_fork. It publishes to /echo and checks that the app's
# subscription delivers in it, writes what it found to PATH, then lives N
# seconds holding whatever it inherited.
def fork_probe(query)
  params = URI.decode_www_form(query.to_s).to_h
  pid = fork do
    mark = "from child #{Process.pid}"
    MessageBus.publish("/echo", mark)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    sleep 0.01 until ECHO_LOCK.synchronize { ECHOED.include?(mark) } || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    report = { pid: Process.pid, delivered: ECHO_LOCK.synchronize { ECHOED.include?(mark) },
               held: MessageBus::Native.respond_to?(:_held_sockets) ? MessageBus::Native._held_sockets : nil }
    File.write("#{params['report']}.tmp", JSON.generate(report))
    File.rename("#{params['report']}.tmp", params["report"])
    sleep Float(params.fetch("seconds", "30"))
    exit!(0)
  end
  Process.detach(pid)
  pid
end

# Counts the requests under /message-bus/ (reported by `/requests`).
class RequestCounter
  LOCK = Mutex.new
  @count = 0

  class << self
    attr_accessor :count
  end

  def initialize(app)
    @app = app
  end

  def call(env)
    LOCK.synchronize { RequestCounter.count += 1 } if env["PATH_INFO"].include?("/message-bus/")
    @app.call(env)
  end
end

use RequestCounter
use MessageBus::Rack::Middleware
require "message_bus/rack/metrics"
map("/metrics") { run MessageBus::Rack::Metrics.new }
run lambda { |env|
  case env["PATH_INFO"]
  when "/publish"
    req = JSON.parse(env["rack.input"].read)
    opts = (req["opts"] || {}).transform_keys(&:to_sym)
    # "count": the same message published that many times (returns the last id).
    id = Array.new(Integer(req.fetch("count", 1))) { MessageBus.publish(req["channel"], req["data"], opts) }.last
    [200, { "content-type" => "application/json" }, [JSON.generate(id)]]
  when "/requests"
    [200, { "content-type" => "text/plain" }, [RequestCounter.count.to_s]]
  when "/diagnostics"
    [200, { "content-type" => "application/json" }, [JSON.generate(MessageBus.diagnostics)]]
  when "/pid"
    [200, { "content-type" => "text/plain" }, [Process.pid.to_s]]
  when "/echoed"
    [200, { "content-type" => "application/json" }, [JSON.generate(pid: Process.pid, data: ECHO_LOCK.synchronize { ECHOED.dup })]]
  when "/fork_probe"
    [200, { "content-type" => "text/plain" }, [fork_probe(env["QUERY_STRING"]).to_s]]
  else
    [200, { "content-type" => "text/plain" }, ["app"]]
  end
}
