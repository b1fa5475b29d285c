# frozen_string_literal: true

# The native poll calls alone (`Connections#_poll`, `#_poll_pending`), this
# thread's CPU time per call, with the request shape of the checkout it runs
# in: one MessageBus::Native::WebRequest (the PollRequest), or before issue 15
# positional arguments (copy this file into such a checkout to compare):
#   MESSAGE_BUS_BACKEND=memory ruby bench/shortpoll/native_poll.rb [calls]
require_relative "request"
require_relative "../../spec/support/spec_helpers"

MessageBus.configure(SpecHelpers.backend_config.merge(keepalive_interval: 0))
MessageBus.reset!
MessageBus.publish("/bench", { n: 0 })
conns = MessageBus::Native::Connections.new(MessageBus.backend_instance.native)
r = MessageBus::Rack::PollRequest.new(ShortPollRequest.env, MessageBus, "x")
new_api = MessageBus::Native.const_defined?(:WebRequest)
poll = if new_api
         -> { conns._poll(r.as_poll) }
       else
         -> { conns._poll(r.client_id, r.site_id, r.user_json, r.groups_json, r.channels) }
       end
pending = if new_api
            -> { conns._poll_pending(r.as_poll) }
          else
            -> { conns._poll_pending(r.client_id, r.site_id, r.user_json, r.groups_json, r.channels, r.seq) }
          end
n = Integer(ARGV[0] || 200_000)
{ "_poll" => poll, "_poll_pending" => pending }.each do |name, call|
  call.call
  best = 5.times.map do
    cpu = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
    n.times { call.call }
    (Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID) - cpu) / n * 1e6
  end
  puts format("%<api>s %<name>-14s CPU us/call: best %<best>.2f, median %<med>.2f", api: new_api ? "new" : "old",
                                                                                    name: name, best: best.min, med: best.sort[2])
end
MessageBus.destroy
