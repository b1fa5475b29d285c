# frozen_string_literal: true

module MessageBus
  # Warns, once per bus when its backend is built, about configuration that
  # nothing reads: Redis connection keys at the top level (as older READMEs
  # show them; only `redis_config` reaches Redis, COMPAT.md §9 Q16), and any
  # other key no part of the gem uses. Which Redis is used does not change:
  # processes of both gems must keep meeting on the same database.
  class ConfigCheck
    REDIS_KEYS = %i[url host port db password path].freeze

    # Every key something reads (COMPAT.md §1.3), the stored-only hooks included.
    KNOWN = %i[
      backend redis_config backend_options db clear_every backend_instance logger
      long_polling_enabled long_polling_interval chunked_encoding_enabled rack_hijack_enabled
      max_active_clients base_route allow_broadcast transport_codec keepalive_interval
      site_id_lookup user_id_lookup group_ids_lookup is_admin_lookup extra_response_headers_lookup
      on_middleware_error on_connect on_disconnect client_message_filters
      websocket_enabled sse_enabled allowed_origins websocket_ping_interval sse_keepalive_interval
    ].freeze

    POSTGRES_KEYS = %i[url host port dbname database user username password].freeze

    # Keys that are backend attributes, not bus configuration.
    BACKEND_ATTRIBUTES = %i[max_backlog_size max_global_backlog_size max_backlog_age
                            max_in_memory_publish_backlog].freeze

    def initialize(bus)
      @bus = bus
      @config = bus.config
    end

    def warn_once
      return if @bus.instance_variable_get(:@config_checked)

      @bus.instance_variable_set(:@config_checked, true)
      warnings.each { |line| @bus.log_warning(line) }
    end

    def warnings
      out = []
      out << top_level_redis_warning if redis_backend? && !@config[:backend_instance]
      unread = @config.keys.reject { |key| KNOWN.include?(key) || (redis_backend? && REDIS_KEYS.include?(key)) }
      unread.each { |key| out << unread_warning(key) }
      out.compact
    end

    private

    def redis_backend?
      @bus.backend.to_sym == :redis
    end

    def postgres_backend?
      @bus.backend.to_sym == :postgres
    end

    def top_level_redis_warning
      given = REDIS_KEYS.select { |key| @config.key?(key) }
      return nil if given.empty?

      shown = given.map { |key| "#{key}: #{shown_value(key, @config[key])}" }.join(", ")
      "#{shown} at the top level of the configuration is not used: only redis_config reaches Redis, " \
        "so the bus uses #{redis_in_use}. To use the given server, write " \
        "MessageBus.configure(backend: :redis, redis_config: { #{shown} })"
    end

    def redis_in_use
      require "message_bus/backends/redis"
      redis_config = @bus.redis_config
      url = MessageBus::Backends::Redis.url_for(redis_config).sub(%r{:[^:@/]*@}, ":***@")
      "#{url} (pub/sub channel #{MessageBus::Backends::Redis.pubsub_channel_for(redis_config)})"
    rescue StandardError => e
      "the Redis of redis_config (#{e.message})"
    end

    def shown_value(key, value)
      return '"***"' if key == :password

      value = value.to_s.sub(%r{:[^:@/]*@}, ":***@") if key == :url
      value.inspect
    end

    def unread_warning(key)
      if key == :enable_redis_logger
        "enable_redis_logger has no effect (since message_bus 4.4)"
      elsif postgres_backend? && POSTGRES_KEYS.include?(key.to_sym)
        "configuration key #{key.inspect} is not read: PostgreSQL connection parameters go in " \
          "backend_options (MessageBus.configure(backend: :postgres, backend_options: { #{key}: ... }))"
      elsif BACKEND_ATTRIBUTES.include?(key.to_sym)
        "configuration key #{key.inspect} is not read: it is a backend attribute, " \
          "set it with MessageBus.backend_instance.#{key} = #{@config[key].inspect}"
      else
        "configuration key #{key.inspect} is not read by message_bus (misspelt, or from another version?)"
      end
    end
  end
end
