# frozen_string_literal: true

# The app of spec/gem/smoke.rb: the middleware, a route that publishes its
# query string and one that tells how many long polls are parked.
gem "message_bus"
require "message_bus"

MessageBus.configure(backend: :memory)
middleware = MessageBus::Rack::Middleware.new(->(env) { APP.call(env) })
APP = lambda do |env|
  case env["PATH_INFO"]
  when "/publish" then MessageBus.publish("/smoke", Rack::Utils.unescape(env["QUERY_STRING"]))
                       [200, {}, ["ok"]]
  when "/parked" then [200, {}, [middleware.stats[:parked].to_s]]
  else [404, {}, ["not found"]]
  end
end
run middleware
