# frozen_string_literal: true

require "json"
require "monitor"
require "message_bus/web_judge"

module MessageBus
  # The waiting web clients of one middleware (COMPAT.md §1.15), reached as
  # in the reference gem: `middleware.instance_variable_get(:@connection_manager)`
  # (or `middleware.connection_manager`).
  #
  # It is a view of the Rust registry, which holds every client the
  # middleware parks on the native path (no Ruby object exists for those:
  # `lookup_client` builds a MessageBus::Client describing one, and
  # `ObjectSpace.each_object(MessageBus::Client)` does not find them), plus
  # the MessageBus::Client objects served from Ruby (a hijacked IO without a
  # socket descriptor, a backend written in Ruby, or clients a hand-written
  # integration adds).
  #
  # Forked processes need not detach anything: the fork hook closes every
  # inherited connection in the child (close(2) only; see README "Forking
  # servers"), Ruby ones included.
  class ConnectionManager
    include MonitorMixin

    def initialize(bus = nil)
      super()
      @bus = bus || MessageBus
      @clients = {}
      # site id → channel → client ids (a Hash used as an ordered set)
      @subscriptions = {}
      @native = nil
      @pid = Process.pid
    end

    # The Rust registry this manager shows (MessageBus::Native::Connections).
    attr_accessor :native

    # Hands a (decoded) message to every waiting client that may see it.
    def notify_clients(msg)
      notify_ruby_clients(msg)
      notify_native_clients(msg)
    end

    # Registers a client that waits on its `io` (or `async_response`). A
    # newer request of the same client id replaces an older one; an older
    # one is closed at once (§3.10). Returns true when registered. Clients
    # parked on the native path are registered already.
    def add_client(client)
      return true if client.view?

      replaced = nil
      registered = synchronize do
        existing = @clients[client.client_id]
        if existing && existing.seq > client.seq
          false
        else
          if existing
            unindex(existing)
            replaced = existing
          end
          @clients[client.client_id] = client
          client.subscriptions.each_key do |channel|
            ((@subscriptions[client.site_id] ||= {})[channel] ||= {})[client.client_id] = true
          end
          true
        end
      end
      replaced&.close
      client.close unless registered
      registered
    end

    # Unregisters a client (only that very object: an older request's
    # timeout must not remove a newer one, §9 Q36). A client held by Rust has
    # no Ruby registration: it is closed instead.
    def remove_client(client)
      return client.close if client.view?

      synchronize { unindex(client) if @clients[client.client_id].equal?(client) }
      timer = client.cleanup_timer
      begin
        timer&.cancel
      rescue StandardError
        nil
      end
    end

    def lookup_client(client_id)
      client = synchronize { @clients[client_id] }
      return client if client

      entry = @native&._lookup(client_id.to_s)
      entry && MessageBus::Client.view(@bus, @native, client_id, entry)
    end

    # Whether this very client object is the one registered under its id.
    def registered?(client)
      synchronize { @clients[client.client_id].equal?(client) }
    end

    def client_count
      synchronize { @clients.length } + (@native ? @native._parked : 0)
    end

    # Clients waiting, messages pushed, slow readers closed, unreadable messages.
    def stats
      stats = @native ? @native._stats : MessageBus::Native::Connections._empty_stats
      stats[:parked] += synchronize { @clients.length }
      stats
    end

    # Delivers to the clients served from Ruby (the native registry is fed
    # by the backend directly). Runs on the timer thread.
    def notify_ruby_clients(msg)
      clients = synchronize { subscribed_to(msg).filter_map { |id| @clients[id] } }
      clients.each do |client|
        client.synchronize do
          next if client.closed? || client.covers?(msg) || !client.allowed?(msg)

          client << msg
        rescue StandardError
          nil # the peer may be gone
        end
        remove_client(client) if client.closed?
      end
    rescue StandardError => e
      @bus.log_warning("failed to notify clients: #{e.class}: #{e.message}", category: :notify_clients)
    end

    # In a forked child: the parent's clients are the parent's (a no-op in
    # the process that registered them).
    def after_fork
      return if @pid == Process.pid

      @pid = Process.pid
      clients = synchronize do
        list = @clients.values
        @clients = {}
        @subscriptions = {}
        list
      end
      clients.each(&:forget_inherited_connection)
      @native = nil
    end

    private

    def notify_native_clients(msg)
      native = @native
      return unless native&._parked&.positive? && WebJudge.filters_allow?(@bus, msg)

      envelope = JSON.generate({ "data" => msg.data, "user_ids" => msg.user_ids, "group_ids" => msg.group_ids,
                                 "client_ids" => msg.client_ids })
      native._notify(msg.global_id, msg.message_id, encoded_channel(msg), envelope)
    end

    # The channel as stored: with its site, unless it is a /global/ one.
    def encoded_channel(msg)
      return msg.channel if msg.site_id.nil? || msg.channel.start_with?(Implementation::GLOBAL_PREFIX)

      "#{msg.channel}#{Implementation::ENCODE_SITE_TOKEN}#{msg.site_id}"
    end

    # Client ids subscribed to the message's channel on its site; `/global/`
    # messages reach the clients of every site (§9 Q35).
    def subscribed_to(msg)
      if msg.channel.start_with?(Implementation::GLOBAL_PREFIX)
        @subscriptions.values.flat_map { |channels| channels.fetch(msg.channel, {}).keys }.uniq
      else
        @subscriptions.dig(msg.site_id, msg.channel)&.keys || []
      end
    end

    def unindex(client)
      @clients.delete(client.client_id)
      channels = @subscriptions[client.site_id]
      return unless channels

      channels.delete_if do |_, ids|
        ids.delete(client.client_id)
        ids.empty?
      end
      @subscriptions.delete(client.site_id) if channels.empty?
    end
  end
end
