# frozen_string_literal: true

# Prints, as JSON, the public server-side API of whichever message_bus is on
# the load path (`ruby -I <lib> api_dump.rb`): for each public class and
# module, its public methods with their parameters, and its constants.
require "json"
require "message_bus"
require "message_bus/distributed_cache"

def methods_of(owner, names)
  names.sort.to_h { |name| [name.to_s, owner.instance_method(name).parameters.map { |kind, _| kind.to_s }] }
end

def singleton_of(object, names)
  names.sort.to_h { |name| [name.to_s, object.method(name).parameters.map { |kind, _| kind.to_s }] }
end

base = Object.public_instance_methods
dump = {}
dump["MessageBus"] = {
  "singleton" => singleton_of(MessageBus, MessageBus::Implementation.public_instance_methods),
  "constants" => MessageBus.constants.map(&:to_s).sort
}
[MessageBus::Instance, MessageBus::Client, MessageBus::ConnectionManager, MessageBus::Backends::Base,
 MessageBus::Message, MessageBus::TimerThread, MessageBus::Rack::Middleware, MessageBus::DistributedCache,
 MessageBus::DistributedCache::Manager, MessageBus::Codec::Json].each do |klass|
  extra = klass == MessageBus::Message ? Struct.public_instance_methods : []
  dump[klass.name] = {
    "instance" => methods_of(klass, klass.public_instance_methods - base - extra),
    "singleton" => singleton_of(klass, klass.singleton_methods - Class.public_instance_methods),
    "constants" => klass.constants.map(&:to_s).sort
  }
end
puts JSON.generate(dump)
