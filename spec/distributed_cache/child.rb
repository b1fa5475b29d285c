# frozen_string_literal: true

# A separate process sharing DistributedCaches with the spec process over the
# selected backend. Reads one JSON command per line on stdin, answers one JSON
# line on stdout. Uses the MessageBus module and the default manager, as an
# application would.
$LOAD_PATH.unshift(File.expand_path("../../lib", __dir__))
require "json"
require "logger"
require "message_bus"
require "message_bus/distributed_cache"
require_relative "../support/spec_helpers"

$stdout.sync = true
log = Logger.new($stderr, level: Logger::WARN)
MessageBus.configure(SpecHelpers.backend_config.merge(logger: log, keepalive_interval: 0))
MessageBus.site_id_lookup { Thread.current[:mb_site] }
caches = {}

def describe(hash)
  hash.transform_values { |v| [v.class.name, v.is_a?(Set) ? v.to_a.sort : v] }
end

$stdin.each_line do |line|
  cmd = JSON.parse(line)
  Thread.current[:mb_site] = cmd["site"]
  cache = caches[cmd["name"]]
  result =
    case cmd["op"]
    when "new"
      opts = { namespace: cmd.fetch("namespace", true), marshal: cmd.fetch("marshal", true) }
      opts[:app_version] = cmd["app_version"] if cmd["app_version"]
      caches[cmd["name"]] = MessageBus::DistributedCache.new(cmd["key"], **opts)
      true
    when "app_version" then MessageBus::DistributedCache.default_manager.app_version = cmd["value"]
    when "set"
      value = cmd["value"]
      value = Set.new(value["set"]) if value.is_a?(Hash) && value.key?("set")
      cache[cmd["key"]] = value
      true
    when "delete" then cache.delete(cmd["key"])
    when "clear" then cache.clear && true
    when "dump" then describe(cache.hash(cmd["site"]))
    when "exit" then break
    end
  puts JSON.generate(result: result)
rescue StandardError => e
  puts JSON.generate(error: "#{e.class}: #{e.message}")
end
