# frozen_string_literal: true

# The bench's short poll (`%2Fbench=-1&__seq=1`, `?dlp=t`) through
# `MessageBus::Rack::Middleware#call` in this process, without Puma:
#   MESSAGE_BUS_BACKEND=redis ruby bench/shortpoll/inprocess.rb [requests] [poll|pending]
# `pending`: the same request as a non-chunked long poll of a hijackable
# server (`Connections#_poll_pending`), answered at once (`/__status`).
# Uses the spec configuration (Redis database 9) and resets it.
require_relative "request"
require_relative "../../spec/support/spec_helpers"

MessageBus.configure(SpecHelpers.backend_config.merge(keepalive_interval: 0))
MessageBus.reset!
MessageBus.publish("/bench", { n: 0 })
app = MessageBus::Rack::Middleware.new(->(_env) { [404, {}, ["not found"]] })
PENDING = ARGV[1] == "pending"
request = -> { ShortPollRequest.env(pending: PENDING) }
puts app.call(request.call)[2].first
sleep 0.3 # the firehose subscribes
n = Integer(ARGV[0] || 20_000)
# Wall time, and this thread's CPU time (less sensitive to other load on the box).
3.times do
  started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  cpu = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
  n.times { app.call(request.call) }
  cpu = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID) - cpu
  elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
  puts format("%<backend>s%<path>s: %<us>.1f us/request, %<cpu>.1f us CPU", backend: SpecHelpers.backend_name,
                                                                            path: PENDING ? " (pending)" : "",
                                                                            us: elapsed / n * 1e6, cpu: cpu / n * 1e6)
end
MessageBus.destroy
