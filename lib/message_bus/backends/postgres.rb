# frozen_string_literal: true

require "uri"
require "message_bus/backends/base"

module MessageBus
  module Backends
    # PostgreSQL storage shared with reference message_bus processes
    # (COMPAT.md §4.3): table `message_bus`, NOTIFY channel `_message_bus_<db>`.
    # Storage, trimming and the LISTEN firehose are in Rust; this class only
    # turns `config[:backend_options]` into a libpq connection string.
    class Postgres < Base
      # Rails-style spellings accepted for libpq keywords.
      ALIASES = { database: :dbname, username: :user }.freeze

      # `config[:backend_options]`: libpq keywords (`host`, `port`, `dbname`,
      # `user`, `password`, `connect_timeout`, ...) and/or `url:`. Nothing
      # connects here.
      def initialize(config = {}, max_backlog_size = 1000)
        @native = MessageBus::Native::Backend.postgres(
          self.class.conninfo_for(config[:backend_options] || {}),
          self.class.notify_channel_for(config)
        )
        super
      end

      # Drops and recreates the table (the reference class method is broken,
      # COMPAT.md §9 Q13).
      def self.reset!(config)
        backend = new(config)
        backend.reset!
      ensure
        backend&.destroy
      end

      def self.notify_channel_for(config)
        "_message_bus_#{config[:db] || 0}"
      end

      # A libpq keyword/value string, or the URL with the other options added
      # as query parameters.
      def self.conninfo_for(options)
        opts = {}
        options.each do |key, value|
          key = key.to_sym
          opts[ALIASES.fetch(key, key)] = value unless value.nil?
        end
        url = opts.delete(:url)
        return url_with(url.to_s, opts) if url

        opts.map { |key, value| "#{key}=#{quote(value)}" }.join(" ")
      end

      def self.url_with(url, opts)
        return url if opts.empty?

        separator = url.include?("?") ? "&" : "?"
        "#{url}#{separator}#{URI.encode_www_form(opts.transform_keys(&:to_s).transform_values(&:to_s))}"
      end

      def self.quote(value)
        "'#{value.to_s.gsub('\\', '\\\\\\\\').gsub("'", "\\\\'")}'"
      end

      private_class_method :url_with, :quote
    end
  end
end

MessageBus::BACKENDS[:postgres] = MessageBus::Backends::Postgres
