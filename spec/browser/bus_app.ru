# frozen_string_literal: true

# The app the browser specs (spec/browser/*.test.mjs) run under a real Puma:
# the gem's middleware on the memory backend, a bare page that loads the
# browser client from assets/, and test hooks:
#
#   POST /publish  {"channel":..,"data":..,"opts":{..}}  -> {"id":..,"t":..}
#   GET  /log?client=<client id>  -> the poll requests the server saw
#   GET  /waiting  -> MessageBus.diagnostics[:web_clients] (parked clients, closes)
#
# Times ("t") are milliseconds of the server's monotonic clock.
#
# Environment: MB_LONG_POLLING_INTERVAL (ms, default 1000), MB_BASE_ROUTE
# (default "/").
root = File.expand_path("../..", __dir__)
$LOAD_PATH.unshift(File.join(root, "lib"))
require "message_bus"
require "json"
require "logger"

# MB_BACKEND=redis: Redis database 12 (emptied when MB_RESET=1), so that a
# restarted server finds its backlog again. MB_BACKEND_CONFIG (JSON, e.g.
# {"backend":"redis","redis_config":{"url":...}}) names any store instead.
backend_config =
  if ENV["MB_BACKEND_CONFIG"]
    JSON.parse(ENV["MB_BACKEND_CONFIG"], symbolize_names: true).tap { |c| c[:backend] = c[:backend].to_sym }
  elsif ENV["MB_BACKEND"] == "redis"
    { backend: :redis, redis_config: { db: 12 } }
  else
    { backend: :memory }
  end
MessageBus.configure(
  **backend_config,
  logger: Logger.new($stderr, level: Logger::WARN),
  keepalive_interval: 0,
  long_polling_interval: Integer(ENV.fetch("MB_LONG_POLLING_INTERVAL", "1000")),
  base_route: ENV.fetch("MB_BASE_ROUTE", "/")
)
MessageBus.reset! if ENV["MB_RESET"] == "1"
# MB_WEBSOCKET=off: the WebSocket route answers 404 (the client long polls).
MessageBus.websocket_enabled = false if ENV["MB_WEBSOCKET"] == "off"
# Identities from request headers, which the page sets through MessageBus.headers.
MessageBus.user_id_lookup { |env| env["HTTP_X_USER_ID"]&.to_i }
MessageBus.group_ids_lookup { |env| env["HTTP_X_GROUP_IDS"].to_s.split(",").map(&:to_i) }
MessageBus.extra_response_headers_lookup { |env| { "x-extra" => "yes" } if env["HTTP_X_WANT_EXTRA"] }

# Milliseconds of the monotonic clock (config.ru runs inside a Rack::Builder:
# a constant, not a method, is visible from the classes below).
NOW_MS = -> { (Process.clock_gettime(Process::CLOCK_MONOTONIC) * 1000).round }

# Records every request to the message bus route before the middleware sees it.
class PollLog
  def initialize(app, prefix)
    @app = app
    @prefix = prefix
    @entries = []
    @lock = Mutex.new
  end

  def call(env)
    path = env["PATH_INFO"]
    return entries(env) if path == "/log"

    record(env) if path.start_with?(@prefix)
    @app.call(env)
  end

  private

  def record(env)
    input = env["rack.input"]
    body = input ? input.read.to_s : ""
    input&.rewind
    entry = {
      t: NOW_MS.call, method: env["REQUEST_METHOD"], path: env["PATH_INFO"], query: env["QUERY_STRING"].to_s,
      client: env["PATH_INFO"][@prefix.length..].to_s.split("/").first, body: body,
      dont_chunk: env.key?("HTTP_DONT_CHUNK"), user: env["HTTP_X_USER_ID"], groups: env["HTTP_X_GROUP_IDS"]
    }
    @lock.synchronize { @entries << entry }
  end

  def entries(env)
    client = Rack::Request.new(env).params["client"]
    list = @lock.synchronize { @entries.dup }
    list.select! { |e| e[:client] == client } if client
    [200, { "content-type" => "application/json", "cache-control" => "no-store" }, [JSON.generate(list)]]
  end
end

PAGE = <<~HTML
  <!doctype html>
  <html><head><meta charset="utf-8"><title>bus</title></head><body>
  <script src="/assets/message-bus.js"></script>
  <script src="/assets/message-bus-ajax.js"></script>
  <script>window.got = [];</script>
  </body></html>
HTML

# The ES module build as an importmap page loads it (spec/browser/esm.test.mjs).
ESM_PAGE = <<~HTML
  <!doctype html>
  <html><head><meta charset="utf-8"><title>esm</title>
  <script type="importmap">
    { "imports": { "message-bus": "/assets/message-bus.mjs", "message-bus-ajax": "/assets/message-bus-ajax.js" } }
  </script>
  <script type="module">
    import MessageBus from "message-bus";
    import "message-bus-ajax";
    window.got = [];
    window.imported = MessageBus;
  </script>
  </head><body></body></html>
HTML

# Browsers run module scripts only when served as JavaScript; Rack 2 does not know .mjs.
Rack::Mime::MIME_TYPES[".mjs"] = "text/javascript"
use Rack::Static, urls: ["/assets"], root: root, header_rules: [[:all, { "cache-control" => "no-cache" }]]
use PollLog, "#{MessageBus.base_route}message-bus/"
use MessageBus::Rack::Middleware
run lambda { |env|
  case env["PATH_INFO"]
  when "/"
    [200, { "content-type" => "text/html; charset=utf-8", "cache-control" => "no-cache" }, [PAGE]]
  when "/esm"
    [200, { "content-type" => "text/html; charset=utf-8", "cache-control" => "no-cache" }, [ESM_PAGE]]
  when "/publish"
    req = JSON.parse(env["rack.input"].read)
    opts = (req["opts"] || {}).transform_keys(&:to_sym)
    id = MessageBus.publish(req["channel"], req["data"], opts)
    [200, { "content-type" => "application/json" }, [JSON.generate(id: id, t: NOW_MS.call)]]
  when "/now"
    [200, { "content-type" => "application/json" }, [JSON.generate(t: NOW_MS.call)]]
  when "/waiting"
    [200, { "content-type" => "application/json" }, [JSON.generate(MessageBus.diagnostics[:web_clients])]]
  else
    [404, { "content-type" => "text/plain" }, ["not found"]]
  end
}
