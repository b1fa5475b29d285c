# frozen_string_literal: true

require "uri"
require "message_bus/backends/base"

module MessageBus
  module Backends
    # Redis storage shared with reference message_bus processes (COMPAT.md
    # §4.2). The storage, publish script, firehose and read-only buffer are in
    # Rust; this class only turns `config[:redis_config]` into a URL and the
    # pub/sub channel name.
    class Redis < Base
      DEFAULT_HOST = "127.0.0.1"
      DEFAULT_PORT = 6379
      DEFAULT_SENTINEL_PORT = 26_379

      # `config` is the bus configuration; only `config[:redis_config]`
      # reaches Redis (`url`, `host`, `port`, `db`, `username`, `password`,
      # `path`, `ssl`, `ssl_params`). Nothing connects here. TLS (`rediss://`
      # or `ssl: true`) verifies the server against the system's CA roots
      # (OpenSSL: `SSL_CERT_FILE` points it at another bundle); with
      # `ssl_params: { verify_mode: OpenSSL::SSL::VERIFY_NONE }` it does not.
      #
      # Redis Sentinel, as in redis-rb: `sentinels: [{ host:, port: }, ...]`
      # (or "redis://host:port" strings), the master's name as the host of
      # `url` (or `name:`), `role: :master`, and `db`, `username`, `password`,
      # `ssl` for the master; `sentinel_username`/`sentinel_password` (or each
      # entry's own) for the sentinels. The master is asked of the sentinels on
      # every (re)connection.
      def initialize(config = {}, max_backlog_size = 1000)
        redis_config = config[:redis_config] || {}
        channel = self.class.pubsub_channel_for(redis_config)
        @native =
          if redis_config[:sentinels] || redis_config["sentinels"]
            MessageBus::Native::Backend.redis_sentinel(*self.class.sentinel_for(redis_config), channel)
          else
            MessageBus::Native::Backend.redis(self.class.url_for(redis_config), channel)
          end
        super
      end

      # `_message_bus_<db>`: only an explicit `db:` counts, not one inside
      # `url:` (the reference gem's rule, which processes sharing the Redis
      # must agree on; COMPAT.md §9 Q15).
      def self.pubsub_channel_for(redis_config)
        "_message_bus_#{redis_config[:db] || 0}"
      end

      # The Redis URL for a redis-rb style option hash. Explicit options
      # override the parts of `url`, as in redis-rb.
      def self.url_for(redis_config)
        opts = {}
        redis_config.each { |key, value| opts[key.to_sym] = value }
        raise ArgumentError, "message_bus: a Redis Sentinel config (:sentinels) has no single URL" if opts[:sentinels]

        parts = opts[:url] ? parse_url(opts[:url].to_s) : {}
        %i[host port db username password path].each { |k| parts[k] = opts[k] if opts.key?(k) && !opts[k].nil? }
        parts[:ssl] = opts[:ssl] ? true : false if opts.key?(:ssl)
        parts[:username] ||= opts[:user] if opts[:user]
        url = build_url(parts)
        verify_none = opts.dig(:ssl_params, :verify_mode) == 0 # OpenSSL::SSL::VERIFY_NONE
        parts[:ssl] && verify_none ? "#{url}#insecure" : url
      end

      # `[master_url, sentinel_urls]` for a redis-rb style Sentinel config:
      # the master URL's host is the master name.
      def self.sentinel_for(redis_config)
        opts = {}
        redis_config.each { |key, value| opts[key.to_sym] = value }
        role = opts.delete(:role)
        unless role.nil? || role.to_s == "master"
          raise ArgumentError, "message_bus: Redis Sentinel role #{role.inspect} is not supported (it writes: :master)"
        end

        sentinels = Array(opts.delete(:sentinels))
        raise ArgumentError, "message_bus: Redis Sentinel config without sentinels" if sentinels.empty?

        auth = { username: opts.delete(:sentinel_username), password: opts.delete(:sentinel_password) }
        name = opts.delete(:name)
        opts[:host] = name if name
        [url_for(opts), sentinels.map { |sentinel| sentinel_url(sentinel, auth) }]
      end

      def self.sentinel_url(sentinel, auth)
        return sentinel.to_s unless sentinel.is_a?(Hash)

        entry = {}
        sentinel.each { |key, value| entry[key.to_sym] = value }
        parts = entry[:url] ? parse_url(entry[:url].to_s) : {}
        %i[host port username password].each { |k| parts[k] = entry[k] unless entry[k].nil? }
        %i[username password].each { |k| parts[k] ||= auth[k] if auth[k] }
        parts[:port] ||= DEFAULT_SENTINEL_PORT
        parts[:db] = 0
        build_url(parts)
      end

      def self.parse_url(url)
        uri = URI.parse(url)
        query = uri.query ? URI.decode_www_form(uri.query).to_h : {}
        case uri.scheme
        when "unix", "redis+unix" then unix_url_parts(uri, query)
        when "redis", "rediss", "valkey", "valkeys" then tcp_url_parts(uri)
        else raise ArgumentError, "message_bus: unsupported Redis URL scheme #{uri.scheme.inspect}"
        end
      end

      def self.unix_url_parts(uri, query)
        parts = { path: uri.path }
        parts[:db] = query["db"] if query["db"]
        parts[:username] = query["user"] if query["user"]
        password = query["pass"] || query["password"]
        parts[:password] = password if password
        parts
      end

      def self.tcp_url_parts(uri)
        parts = { ssl: %w[rediss valkeys].include?(uri.scheme) }
        parts[:host] = uri.hostname if uri.hostname && !uri.hostname.empty?
        parts[:port] = uri.port if uri.port
        db = uri.path.to_s.delete_prefix("/")
        parts[:db] = db unless db.empty?
        parts[:username] = URI.decode_www_form_component(uri.user) if uri.user && !uri.user.empty?
        parts[:password] = URI.decode_www_form_component(uri.password) if uri.password
        parts
      end

      def self.build_url(parts)
        db = Integer(parts[:db] || 0)
        if parts[:path]
          query = { "db" => db.to_s }
          query["user"] = parts[:username].to_s if parts[:username]
          query["pass"] = parts[:password].to_s if parts[:password]
          return "unix://#{parts[:path]}?#{URI.encode_www_form(query)}"
        end

        host = (parts[:host] || DEFAULT_HOST).to_s
        host = "[#{host}]" if host.include?(":") && !host.start_with?("[")
        port = Integer(parts[:port] || DEFAULT_PORT)
        userinfo = ""
        if parts[:password]
          userinfo = "#{escape(parts[:username] || '')}:#{escape(parts[:password])}@"
        elsif parts[:username]
          userinfo = "#{escape(parts[:username])}@"
        end
        "#{parts[:ssl] ? 'rediss' : 'redis'}://#{userinfo}#{host}:#{port}/#{db}"
      end

      def self.escape(value)
        URI.encode_www_form_component(value.to_s).gsub("+", "%20")
      end

      private_class_method :sentinel_url, :parse_url, :unix_url_parts, :tcp_url_parts, :build_url, :escape
    end
  end
end

MessageBus::BACKENDS[:redis] = MessageBus::Backends::Redis
