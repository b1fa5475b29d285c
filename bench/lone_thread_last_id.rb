# frozen_string_literal: true

# `last_id` calls per second from a process whose main thread is its only
# thread (a script, a job runner's boot), where Ruby treats unblocking
# functions specially (docs/BENCHMARKS.md). Run it for both gems in turn:
#   for lib in lib ../shared/reference/message_bus-4.5.2/lib; do
#     MB_LIB=$lib BACKEND=postgres ruby bench/lone_thread_last_id.rb; done
# BACKEND=redis|postgres (Redis db 13; PostgreSQL database `test`), SECS=2.

$LOAD_PATH.unshift(File.expand_path(ENV.fetch("MB_LIB", File.expand_path("../lib", __dir__))))
require "message_bus"
require "logger"

backend = ENV.fetch("BACKEND", "redis").to_sym
options =
  case backend
  when :redis then { url: "redis://127.0.0.1:6379/13" }
  when :postgres then { backend_options: { host: "127.0.0.1", user: "postgres", dbname: "test" } }
  else abort "BACKEND must be redis or postgres"
  end
bus = MessageBus::Instance.new
bus.configure(backend: backend, logger: Logger.new(nil), keepalive_interval: 0, **options)
bus.publish("/bench/lone", "hello")
abort "another thread is running: #{Thread.list.inspect}" unless Thread.list.size == 1

seconds = Float(ENV.fetch("SECS", "2"))
calls = 0
start = Process.clock_gettime(Process::CLOCK_MONOTONIC)
while Process.clock_gettime(Process::CLOCK_MONOTONIC) - start < seconds
  bus.last_id("/bench/lone")
  calls += 1
end
gem = File.basename(File.dirname(File.expand_path(ENV.fetch("MB_LIB", "lib"))))
puts format("%-20s %-8s last_id %8d/s (lone main thread)", gem, backend, calls / seconds)
