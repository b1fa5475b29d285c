# frozen_string_literal: true

# Publish -> subscriber latency ACROSS TWO PROCESSES: this process publishes,
# a child process (this script with --subscriber) subscribes and measures
# CLOCK_MONOTONIC (system-wide on Linux) against the timestamp in the message.
#   MESSAGE_BUS_BACKEND=redis ruby -Ilib bench/cross_process.rb
#   MESSAGE_BUS_BACKEND=postgres ruby -Ilib bench/cross_process.rb
# COUNT (default 2000) messages, one every ~0.5 ms; bounded (about 10 s).

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "message_bus"
require "logger"
require "json"
require "open3"

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

def bench_config
  backend = (ENV["MESSAGE_BUS_BACKEND"] || "redis").to_sym
  config = { backend: backend, logger: Logger.new(nil), keepalive_interval: 0 }
  case backend
  when :redis then config[:redis_config] = { url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/"), db: 13 }
  when :postgres
    base = { host: ENV.fetch("PGHOST", "127.0.0.1"), port: ENV.fetch("PGPORT", "5432"), user: ENV.fetch("PGUSER", "postgres") }
    system("psql", "-h", base[:host], "-p", base[:port].to_s, "-U", base[:user], "-d", "postgres", "-qc",
           "CREATE DATABASE mb_bench", out: File::NULL, err: File::NULL)
    config[:backend_options] = base.merge(dbname: "mb_bench")
  else abort "cross-process latency needs MESSAGE_BUS_BACKEND=redis or postgres"
  end
  config
end

COUNT = Integer(ENV.fetch("COUNT", 2000))

if ARGV.first == "--subscriber"
  $stdout.sync = true
  bus = MessageBus::Instance.new
  bus.configure(bench_config)
  latencies = []
  done = Queue.new
  ready = Queue.new
  bus.subscribe("/xp/ready") { |_m| ready << true }
  bus.subscribe("/xp/latency") do |m|
    latencies << (now - m.data["t"]) * 1000
    done << :all if latencies.length == COUNT
  end
  puts "subscribed"
  ready.pop
  puts "ready"
  Thread.new { sleep 30; done << :timeout } # rubocop:disable Style/Semicolon
  puts JSON.generate(done.pop == :all ? latencies : [])
  bus.destroy
  exit
end

config = bench_config
bus = MessageBus::Instance.new
bus.configure(config)
bus.reset!
stdin, stdout, wait = Open3.popen2(RbConfig.ruby, __FILE__, "--subscriber")
begin
  stdout.gets # "subscribed"
  ready = Thread.new { stdout.gets }
  # Until the child's firehose is up, probes may be missed: repeat them.
  bus.publish("/xp/ready", 1) while ready.join(0.05).nil?
  sleep 0.2
  COUNT.times do |i|
    bus.publish("/xp/latency", { "t" => now })
    sleep 0.0005 if (i % 10).zero?
  end
  latencies = JSON.parse(stdout.gets || "[]").sort
  abort "subscriber did not receive all #{COUNT} messages" if latencies.length < COUNT
  printf("%-10s cross-process publish -> subscriber latency (%d messages): p50 %.3f ms  p99 %.3f ms  max %.3f ms\n",
         config[:backend], COUNT, latencies[latencies.length / 2], latencies[(latencies.length * 0.99).floor],
         latencies.last)
ensure
  stdin.close
  Process.kill(:TERM, wait.pid) if wait.alive?
  wait.join
  bus.reset!
  bus.destroy
end
