# frozen_string_literal: true

require "base64"
require "monitor"
require "securerandom"
require "set"
require "weakref"
require "message_bus"

module MessageBus
  # A per-process Hash that mirrors its writes to every other process sharing
  # the bus (COMPAT.md §6). Updates are asynchronous and eventually consistent;
  # a new process starts empty and only learns later changes.
  #
  # Trust boundary: Set, Hash and Array values travel as Ruby Marshal dumps
  # (the reference format), and receiving one runs `Marshal.load`. Whoever can
  # write to the backend (Redis, PostgreSQL) can therefore make every process
  # load an arbitrary Marshal payload. Create caches with `marshal: false` to
  # store only plain JSON values (nil, booleans, numbers, strings, and Arrays
  # and Hashes of them) and to refuse (log and skip) marshalled payloads.
  class DistributedCache
    DEFAULT_SITE_ID = "default"

    # Routes the messages of the "/distributed_hash" channel to every cache
    # registered with it.
    class Manager
      CHANNEL_NAME = "/distributed_hash"

      attr_accessor :app_version
      attr_reader :subscribers, :message_bus

      def initialize(message_bus = nil, publish_queue_in_memory: true)
        @subscribers = []
        @subscribed = false
        @lock = Monitor.new
        @message_bus = message_bus || MessageBus
        @publish_queue_in_memory = publish_queue_in_memory
        @app_version = nil
      end

      def register(cache)
        @lock.synchronize { @subscribers << WeakRef.new(cache) }
      end

      def ensure_subscribe!
        return if @subscribed

        @lock.synchronize do
          return if @subscribed

          @message_bus.subscribe(CHANNEL_NAME) { |message| process_message(message) }
          @subscribed = true
        end
      end

      def publish(cache, hash)
        hash[:origin] = cache.identity
        hash[:hash_key] = cache.key
        hash[:app_version] = @app_version if @app_version
        @message_bus.publish(CHANNEL_NAME, hash, user_ids: [-1], queue_in_memory: @publish_queue_in_memory)
      end

      def set(cache, key, value)
        payload = { op: :set, key: key }
        if cache.marshal? && (value.is_a?(Set) || value.is_a?(Hash) || value.is_a?(Array))
          payload[:value] = Base64.encode64(Marshal.dump(value))
          payload[:marshalled] = true
        else
          payload[:value] = value
          payload[:marshalled] = false
        end
        publish(cache, payload)
      end

      def delete(cache, key)
        publish(cache, op: :delete, key: key)
      end

      def clear(cache)
        publish(cache, op: :clear)
      end

      # Applies a message of another cache instance to every matching local
      # cache, newest registration first (§6.3).
      def process_message(message)
        payload = message.data
        return unless payload.is_a?(Hash)

        @lock.synchronize do
          i = @subscribers.length - 1
          while i >= 0
            begin
              apply(@subscribers[i].__getobj__, payload, message.site_id)
            rescue WeakRef::RefError
              @subscribers.delete_at(i)
            end
            i -= 1
          end
        end
      end

      private

      def apply(cache, payload, site_id)
        return if payload["origin"] == cache.identity
        return if payload["hash_key"] != cache.key
        return if @app_version && payload["app_version"] != @app_version

        hash = cache.hash(site_id || DEFAULT_SITE_ID)
        case payload["op"]
        when "set" then apply_set(cache, hash, payload)
        when "delete" then hash.delete(payload["key"])
        when "clear" then hash.clear
        end
      end

      def apply_set(cache, hash, payload)
        value = payload["value"]
        if payload["marshalled"]
          unless cache.marshal?
            @message_bus.log_warning("DistributedCache #{cache.key.inspect}: refused a marshalled value " \
                                     "for #{payload['key'].inspect} from #{payload['origin']} (marshal: false)")
            return
          end
          value = Marshal.load(Base64.decode64(value)) # rubocop:disable Security/MarshalLoad -- see the class comment
        end
        hash[payload["key"]] = value
      end
    end

    @default_manager = Manager.new

    class << self
      attr_reader :default_manager
    end

    attr_reader :key

    # `marshal: false` keeps the cache to plain JSON values (see the class comment).
    def initialize(key, manager: nil, namespace: true, app_version: nil, marshal: true)
      @key = key
      @data = {}
      @manager = manager || DistributedCache.default_manager
      @namespace = namespace
      @marshal = marshal
      @app_version = app_version
      @identity_prefix = SecureRandom.hex(16)
      @manager.app_version = app_version if app_version
      @manager.register(self)
      @manager.ensure_subscribe!
    end

    def marshal?
      @marshal
    end

    # 32 random hex characters, then the current pid (so a forked child differs).
    def identity
      "#{@identity_prefix}#{Process.pid}"
    end

    def []=(k, v)
      k = k.to_s if k.is_a?(Symbol)
      check_json!(v) unless @marshal
      @manager.set(self, k, v)
      hash[k] = v
    end

    def [](k)
      k = k.to_s if k.is_a?(Symbol)
      hash[k]
    end

    def delete(k, publish: true)
      k = k.to_s if k.is_a?(Symbol)
      @manager.delete(self, k) if publish
      hash.delete(k)
    end

    def clear
      @manager.clear(self)
      hash.clear
    end

    # The inner Hash of a site (deliberately overrides Object#hash, §9 Q54).
    def hash(site_id = nil)
      site_id = current_site_id if site_id.nil? && @namespace
      site_id = DEFAULT_SITE_ID unless @namespace
      @data[site_id || DEFAULT_SITE_ID] ||= {}
    end

    private

    def current_site_id
      lookup = MessageBus.site_id_lookup
      lookup&.call || DEFAULT_SITE_ID
    end

    def check_json!(value)
      case value
      when nil, true, false, Integer, Float, String then nil
      when Array then value.each { |v| check_json!(v) }
      when Hash
        value.each do |k, v|
          unless k.is_a?(String)
            raise ArgumentError,
                  "DistributedCache(marshal: false) Hash keys must be Strings, got #{k.inspect}"
          end

          check_json!(v)
        end
      else
        raise ArgumentError, "DistributedCache(marshal: false) stores plain JSON values only, got #{value.class}"
      end
    end
  end
end
