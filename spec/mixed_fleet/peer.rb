# frozen_string_literal: true

# A peer process for the mixed-fleet specs, run either with the reference gem
# (`ruby -I $MB_REFERENCE_LIB peer.rb ...`) or with ours (`-I lib`). It only
# uses the public API both gems share. Commands (arguments after the backend
# config, a JSON object):
#
#   publish CHANNEL N         publishes "0".."N-1"; prints each id, then "done"
#   subscribe CHANNEL N       prints "ready" once subscribed, then each
#                             message as JSON, until N arrived
#   cache KEY                 prints "ready", then runs a DistributedCache:
#                             reads JSON commands on stdin ({"set": [k, v]},
#                             {"get": k}) and prints the answers
#
# It never resets or destroys the bus: the reference gem would drop the
# shared storage or broadcast $$UNSUBSCRIBE to every process.
require "json"
require "logger"
require "set"
require "message_bus"

config = JSON.parse(ARGV.shift, symbolize_names: true)
%i[redis_config backend_options].each do |key|
  config[key] = config[key].transform_keys(&:to_sym) if config[key]
end
config[:backend] = config[:backend].to_sym
MessageBus.configure(config.merge(logger: Logger.new($stderr, level: Logger::WARN), keepalive_interval: 0))
$stdout.sync = true
command, name, count = ARGV

def wait_subscribed
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
  sleep 0.01 until MessageBus.backend_instance.subscribed || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
end

# Sets are sent as {"set": [...]} (JSON has none).
def answer(cache, request)
  if request["set"]
    key, value = request["set"]
    cache[key] = value.is_a?(Hash) && value.key?("set") ? Set.new(value["set"]) : value
    { "ok" => true }
  else
    value = cache[request["get"]]
    { "value" => value.is_a?(Set) ? { "set" => value.to_a.sort } : value, "class" => value.class.name }
  end
end

case command
when "publish"
  Integer(count).times { |i| puts MessageBus.publish(name, i.to_s) }
  puts "done"
when "subscribe"
  got = Queue.new
  MessageBus.subscribe(name) { |m| got << m }
  wait_subscribed
  puts "ready"
  Integer(count).times do
    m = got.pop
    puts JSON.generate("data" => m.data, "message_id" => m.message_id, "global_id" => m.global_id, "channel" => m.channel)
  end
when "cache"
  require "message_bus/distributed_cache"
  cache = MessageBus::DistributedCache.new(name)
  wait_subscribed
  puts "ready"
  while (line = $stdin.gets)
    puts JSON.generate(answer(cache, JSON.parse(line)))
  end
end
$stdout.flush
exit!(0)
