# frozen_string_literal: true

# The bench's short poll through `MessageBus::Rack::Middleware#call` (as
# inprocess.rb, memory backend), for valgrind's callgrind: instructions are
# repeatable whatever else the machine does. 200 warm-up requests, then N.
#   MODE=poll|pending N=2000 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \
#     ruby bench/shortpoll/instructions.rb
# per request = (total Ir at N - total Ir at N=0) / N. `pending`: a
# non-chunked long poll of a hijackable server (`_poll_pending`), answered at once.
require_relative "request"
require "logger"

bus = MessageBus::Instance.new
bus.configure(backend: :memory, logger: Logger.new(nil), keepalive_interval: 0)
bus.publish("/bench", { n: 0 })
app = MessageBus::Rack::Middleware.new(->(_env) { [404, {}, ["not found"]] }, message_bus: bus)
pending = ENV.fetch("MODE", "poll") == "pending"
request = -> { ShortPollRequest.env(pending: pending) }
body = app.call(request.call)[2].first
abort "unexpected answer #{body}" unless body.include?("/__status")
200.times { app.call(request.call) }
Integer(ENV.fetch("N", "2000")).times { app.call(request.call) }
bus.destroy
