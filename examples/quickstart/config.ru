# frozen_string_literal: true

# The README's first app: `puma examples/quickstart/config.ru`, then
#   curl -d '/hello=0' -H 'Dont-Chunk: 1' localhost:9292/message-bus/me/poll   # waits...
#   curl 'localhost:9292/?hi'                                                  # ...and it prints the message
# (bin/gem-smoke runs exactly this against the installed gems.)
require "message_bus"

MessageBus.configure(backend: :memory) # or :redis, :postgres (see "Backends")
use MessageBus::Rack::Middleware
run lambda { |env|
  MessageBus.publish("/hello", Rack::Utils.unescape(env["QUERY_STRING"]))
  [200, { "content-type" => "text/plain" }, ["published\n"]]
}
