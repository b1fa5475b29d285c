# frozen_string_literal: true

require "logger"
require "monitor"
require "json"
require "weakref"

require "message_bus/version"
require "message_bus/errors"
require "message_bus/message"
require "message_bus/codec/base"
require "message_bus/codec/json"
require "message_bus/timer_thread"
require "message_bus/native"
require "message_bus/backends/base"
require "message_bus/replaying_subscriber"
require "message_bus/config_check"
require "message_bus/client"
require "message_bus/connection_manager"
require "message_bus/metrics"
require "message_bus/log_limiter"

# A reliable, backlogged pub/sub bus for Ruby web apps, with a Rust core.
# `MessageBus` itself is a bus; `MessageBus::Instance.new` makes independent ones.
module MessageBus
  BACKENDS = {} # rubocop:disable Style/MutableConstant -- third-party backends register here

  # The bus API, shared by the MessageBus module and MessageBus::Instance.
  module Implementation
    include Metrics

    ENCODE_SITE_TOKEN = "$|$"
    # An envelope without targets is `HEAD + JSON of the data + TAIL`.
    UNTARGETED_ENVELOPE_HEAD = '{"data":'
    UNTARGETED_ENVELOPE_TAIL = ',"user_ids":null,"group_ids":null,"client_ids":null}'
    GLOBAL_PREFIX = "/global/"
    KEEPALIVE_CHANNEL = "/__mb_keepalive__/"
    # Keepalive intervals at or below this many seconds disable it (§9 Q22).
    MIN_KEEPALIVE = 20
    # How long `subscribe` waits for the backend to report the subscription.
    SUBSCRIBE_WAIT = 0.1

    def initialize
      @config = {}
      @mutex = Monitor.new
      @off = false
      @off_disable_publish = false
      @destroyed = false
      @subscriptions = {}
      @subscriber_thread = nil
      @timer = nil
      @keepalive = nil
      @last_message_at = monotonic_now
      # Global id of the last message dispatched (see start_subscriber_thread).
      @position = nil
      Implementation.track(self)
    end

    # Every bus of this process, for the fork hook (weakly held: a bus
    # nobody references is not kept alive by this list).
    @buses = []
    @buses_lock = Mutex.new

    def self.track(bus)
      @buses_lock.synchronize do
        @buses.select!(&:weakref_alive?)
        @buses << WeakRef.new(bus)
      end
    end

    # Called in the child of every fork (COMPAT.md §1.8; DESIGN "Fork
    # safety"): does for every bus what `after_fork` does.
    def self.forked
      buses = @buses_lock.synchronize { @buses.dup }
      buses.each do |ref|
        bus = begin
          ref.__getobj__
        rescue WeakRef::RefError
          nil
        end
        bus&.send(:after_fork_in_child)
      end
    end

    # --- configuration -----------------------------------------------------

    def configure(config)
      @config.merge!(config)
    end

    def config
      @config
    end

    def logger=(logger)
      configure(logger: logger)
    end

    def logger
      return @config[:logger] if @config[:logger]

      @mutex.synchronize do
        @config[:logger] ||= Logger.new($stdout).tap { |l| l.level = Logger::INFO }
      end
    end

    # Logs a warning as `MessageBus: <text>`, at most LogLimiter::BURST
    # lines per category every LogLimiter::WINDOW seconds (the category
    # defaults to the text with its numbers blanked).
    def log_warning(text, category: nil)
      category ||= text.gsub(/\d+/, "#")[0, 80]
      log_limiter.lines(category, text, monotonic_now).each { |line| logger.warn(line) }
    end

    def log_limiter
      @log_limiter || @mutex.synchronize { @log_limiter ||= LogLimiter.new }
    end

    def long_polling_enabled?
      @config[:long_polling_enabled] != false
    end

    def long_polling_enabled=(value)
      configure(long_polling_enabled: value)
    end

    # Milliseconds a parked HTTP request is held.
    def long_polling_interval
      @config[:long_polling_interval] || 25_000
    end

    def long_polling_interval=(milliseconds)
      configure(long_polling_interval: milliseconds)
    end

    def chunked_encoding_enabled?
      @config[:chunked_encoding_enabled] != false
    end

    def chunked_encoding_enabled=(value)
      configure(chunked_encoding_enabled: value)
    end

    def rack_hijack_enabled?
      if @config[:rack_hijack_enabled].nil?
        enabled = true
        if defined?(::PhusionPassenger)
          if ::PhusionPassenger.respond_to?(:advertised_concurrency_level)
            ::PhusionPassenger.advertised_concurrency_level = 0
          else
            enabled = false
          end
        end
        configure(rack_hijack_enabled: enabled)
      end
      @config[:rack_hijack_enabled]
    end

    def rack_hijack_enabled=(value)
      configure(rack_hijack_enabled: value)
    end

    def max_active_clients
      @config[:max_active_clients] || 1000
    end

    def max_active_clients=(count)
      configure(max_active_clients: count)
    end

    # WebSocket at `<base_route>message-bus/<client_id>/ws` (default on);
    # off, the route answers 404 and browser clients long poll.
    def websocket_enabled?
      @config[:websocket_enabled] != false
    end

    def websocket_enabled=(value)
      configure(websocket_enabled: value)
    end

    # Server-Sent Events at `<base_route>message-bus/<client_id>/sse` (default on).
    def sse_enabled?
      @config[:sse_enabled] != false
    end

    def sse_enabled=(value)
      configure(sse_enabled: value)
    end

    # Origins, other than the request's own host, whose pages may open a
    # WebSocket: a list of origins (`"https://app.example.com"`) or a proc
    # over the Rack env returning truthy to allow.
    def allowed_origins
      @config[:allowed_origins]
    end

    def allowed_origins=(origins)
      configure(allowed_origins: origins)
    end

    # Seconds between the server's pings on a WebSocket (a peer that has
    # not answered the last one by the next is closed); well under common
    # proxy idle timeouts (nginx's proxy_read_timeout is 60 s).
    def websocket_ping_interval
      @config[:websocket_ping_interval] || 25
    end

    def websocket_ping_interval=(seconds)
      configure(websocket_ping_interval: seconds)
    end

    # Seconds between keepalive comments on an idle event stream.
    def sse_keepalive_interval
      @config[:sse_keepalive_interval] || 25
    end

    def sse_keepalive_interval=(seconds)
      configure(sse_keepalive_interval: seconds)
    end

    def base_route
      @config[:base_route] || "/"
    end

    def base_route=(route)
      route = "/#{route}" unless route.start_with?("/")
      route = "#{route}/" unless route.end_with?("/")
      configure(base_route: route.gsub(%r{/{2,}}, "/"))
    end

    # An explicit false sticks; unset means "on in Rails development and test" (§9 Q38).
    def allow_broadcast?
      value = @config[:allow_broadcast]
      return value unless value.nil?

      defined?(::Rails.env) && (::Rails.env.test? || ::Rails.env.development?) ? true : false
    end

    def allow_broadcast=(value)
      configure(allow_broadcast: value)
    end

    def transport_codec
      @config[:transport_codec] ||= MessageBus::Codec::Json.new
    end

    def transport_codec=(codec)
      configure(transport_codec: codec)
    end

    # Seconds between keepalive publishes; 20 or less disables them.
    def keepalive_interval
      @config[:keepalive_interval] || 60
    end

    def keepalive_interval=(seconds)
      configure(keepalive_interval: seconds)
    end

    %i[site_id_lookup user_id_lookup group_ids_lookup is_admin_lookup extra_response_headers_lookup
       on_middleware_error on_connect on_disconnect].each do |hook|
      define_method(hook) do |&blk|
        configure(hook => blk) if blk
        @config[hook]
      end
    end

    def client_message_filters
      @config[:client_message_filters] ||= []
    end

    def register_client_message_filter(channel_prefix, &blk)
      client_message_filters << [channel_prefix, blk] if blk
    end

    def redis_config=(config)
      configure(backend: :redis, redis_config: config)
    end

    def redis_config
      @config[:redis_config] || {}
    end

    def backend
      @config[:backend] || :redis
    end

    def backend_instance=(instance)
      configure(backend_instance: instance)
    end

    def backend_instance
      # Built once: after that, no lock for the hot paths that ask for it.
      instance = @config[:backend_instance]
      return instance if instance && !@destroyed

      @mutex.synchronize do
        return nil if @destroyed

        logger
        @config[:backend_instance] ||= build_backend
      end
    end

    def reliable_pub_sub
      log_warning("reliable_pub_sub is deprecated, use MessageBus.backend_instance instead.")
      backend_instance
    end

    def reliable_pub_sub=(instance)
      log_warning("reliable_pub_sub= is deprecated, use MessageBus.backend_instance= instead.")
      self.backend_instance = instance
    end

    # --- multisite ---------------------------------------------------------

    def encode_channel_name(channel, site_id = nil)
      # The config itself, not the `site_id_lookup` reader (a define_method,
      # dear on every publish).
      lookup = @config[:site_id_lookup]
      return channel unless site_id || lookup
      return channel if channel.start_with?(GLOBAL_PREFIX)

      raise ArgumentError, channel if channel.include?(ENCODE_SITE_TOKEN)

      "#{channel}#{ENCODE_SITE_TOKEN}#{site_id || lookup.call}"
    end

    def decode_channel_name(channel)
      name, site = channel.split(ENCODE_SITE_TOKEN, 2)
      site = site&.split(ENCODE_SITE_TOKEN, 2)&.first
      [name, site.nil? || site.empty? ? nil : site]
    end

    # --- publishing --------------------------------------------------------

    def publish(channel, data, opts = nil)
      return if @off && @off_disable_publish

      # Read without the lock: one flag, and a publish racing `destroy`
      # may land on either side of it either way.
      raise MessageBus::BusDestroyed if @destroyed

      check_channel!(channel) unless channel.is_a?(String)
      # The common publish has no options: no Hash or Array made for it, and
      # no method call that only answers "nothing to do" (no site lookup, the
      # backend already built).
      unless opts
        name = @config[:site_id_lookup] ? encode_channel_name(channel) : channel
        backend = @config[:backend_instance] || backend_instance
        return backend.publish(name, encode_envelope(data, nil, nil, nil))
      end

      user_ids, group_ids, client_ids, site_id = opts.values_at(:user_ids, :group_ids, :client_ids, :site_id)
      if (user_ids || group_ids) && channel.start_with?(GLOBAL_PREFIX)
        raise MessageBus::InvalidMessage, "user_ids and group_ids are not allowed on /global/ channels"
      end
      if [user_ids, group_ids, client_ids].any? { |ids| ids.respond_to?(:empty?) && ids.empty? }
        raise MessageBus::InvalidMessageTarget, "user_ids, group_ids and client_ids must not be empty lists"
      end

      envelope = encode_envelope(data, user_ids, group_ids, client_ids)
      backend_instance.publish(encode_channel_name(channel, site_id), envelope, backend_publish_options(opts))
    end

    # --- subscribing -------------------------------------------------------

    def subscribe(channel = nil, last_id = -1, &blk)
      subscribe_impl(channel, nil, last_id, &blk)
    end

    def local_subscribe(channel = nil, last_id = -1, &blk)
      subscribe_impl(channel, local_site_key(channel), last_id, &blk)
    end

    def unsubscribe(channel = nil, &blk)
      unsubscribe_impl(channel, nil, &blk)
    end

    def local_unsubscribe(channel = nil, &blk)
      unsubscribe_impl(channel, local_site_key(channel), &blk)
    end

    # Blocks the calling thread until the backend subscription ends, yielding
    # undecoded messages (encoded channel, raw envelope).
    def blocking_subscribe(channel = nil, &blk)
      if channel
        backend_instance.subscribe(encode_channel_name(channel), &blk)
      else
        backend_instance.global_subscribe(&blk)
      end
    end

    # --- reading -----------------------------------------------------------

    def backlog(channel = nil, last_id = nil, site_id = nil)
      last_id = message_id_arg(last_id)
      messages =
        if channel
          check_channel!(channel)
          backend_instance.backlog(encode_channel_name(channel, site_id), last_id)
        else
          backend_instance.global_backlog(last_id)
        end
      messages.each { |m| decode_message!(m) }
    end

    def global_backlog(last_id = nil)
      backlog(nil, last_id)
    end

    def last_id(channel, site_id = nil)
      check_channel!(channel)
      backend_instance.last_id(encode_channel_name(channel, site_id))
    end

    def last_ids(*channels, site_id: nil)
      channels.each { |c| check_channel!(c) }
      ids = backend_instance.last_ids(*channels.map { |c| encode_channel_name(c, site_id) })
      channels.zip(ids).to_h
    end

    def last_message(channel)
      id = last_id(channel)
      backlog(channel, id - 1).first
    end

    # --- lifecycle ---------------------------------------------------------

    def off(disable_publish: true)
      @off = true
      @off_disable_publish = disable_publish
    end

    def on
      @destroyed = @off = @off_disable_publish = false
    end

    def off?
      @off
    end

    def destroyed?
      @destroyed
    end

    def destroy
      backend = nil
      @mutex.synchronize do
        return if @destroyed

        backend = @config[:backend_instance]
        @destroyed = true
      end
      if backend
        backend.global_unsubscribe
        backend.destroy
      end
      thread = @subscriber_thread
      thread.join(5) if thread && thread != Thread.current
      @subscriber_thread = nil
      @keepalive&.cancel
      @log_drain&.cancel
      @timer&.stop
      @timer = nil
    end

    # Forked workers call this (Puma `on_worker_boot`, Unicorn `after_fork`);
    # on Ruby 3.1+ the fork hook has already done it, and calling it again is
    # harmless.
    def after_fork
      MessageBus::Native.after_fork
      backend_instance&.after_fork
      middlewares.each(&:after_fork)
      ensure_subscriber_thread unless @subscriptions.empty? || @destroyed
      timer.queue {}
    end

    def reset!
      backend_instance&.reset!
    end

    # The storage epoch: a random id naming the current life of the backend's
    # storage, created by the first process of this gem that finds none (a
    # Redis key, a comment on the PostgreSQL table, per process in memory).
    # It changes when the storage is reset or replaced (`reset!`, Redis
    # flushed or restarted empty, the table recreated), which is when message
    # ids restart. Web responses carry it in the X-MessageBus-Epoch header;
    # clients that see it change start their subscriptions again from 0.
    # Cached: no round trip but the first. nil for a Ruby backend without one.
    def epoch
      backend = backend_instance
      backend.respond_to?(:epoch) ? backend.epoch : nil
    end

    def listening?
      @subscriber_thread&.alive? ? true : false
    end

    def timer
      @mutex.synchronize do
        @timer ||= MessageBus::TimerThread.new.tap do |t|
          t.on_error do |e|
            log_warning("failed to process job: #{e.class}: #{e.message} #{e.backtrace&.first}", category: :timer_job)
          end
        end
      end
    end

    # Introspection for operators: subscriptions, subscriber state, backend
    # queues, and the web clients of every live middleware serving this bus
    # (waiting clients, messages pushed, slow readers closed).
    def diagnostics
      backend = @config[:backend_instance]
      {
        listening: listening?,
        subscriptions: @subscriptions.sum { |_, channels| channels.sum { |_, procs| procs.length } },
        queued_publishes: backend.respond_to?(:queued_publishes) ? backend.queued_publishes : 0,
        dropped_publishes: backend.respond_to?(:dropped_publishes) ? backend.dropped_publishes : 0,
        web_clients: middleware_stats
      }
    end

    # Called by MessageBus::Rack::Middleware at construction. Held strongly:
    # iterating a WeakMap on Ruby 3.1 can yield an object that is being
    # collected, whose ivars may already point at reused slots.
    def register_middleware(middleware)
      @mutex.synchronize { (@middlewares ||= []) << middleware }
    end

    # --- internals shared with the middleware and DistributedCache -----------

    # Fills in channel, site and the envelope fields of a stored message.
    def decode_message!(msg)
      # Most channels carry no site: skip the split (and its arrays) for them.
      msg.channel, msg.site_id = decode_channel_name(msg.channel) if msg.channel.include?(ENCODE_SITE_TOKEN)
      envelope = transport_codec.decode(msg.data)
      msg.data = envelope["data"]
      # Targets are set only when present: the readers answer nil anyway,
      # and an untargeted message (most of them) then keeps no instance
      # variables, which a Struct stores in Ruby's generic table.
      user_ids = envelope["user_ids"]
      msg.user_ids = user_ids if user_ids
      group_ids = envelope["group_ids"]
      msg.group_ids = group_ids if group_ids
      client_ids = envelope["client_ids"]
      msg.client_ids = client_ids if client_ids
      msg
    end

    private

    def middlewares
      @mutex.synchronize { @middlewares ? @middlewares.dup : [] }
    end

    def middleware_stats
      middlewares.each_with_object(MessageBus::Native::Connections._empty_stats) { |m, totals| add_counts(totals, m.stats) }
    end

    # Adds counts into totals, nested hashes (closes by reason) included.
    def add_counts(totals, counts)
      counts.each do |key, value|
        totals[key] = value.is_a?(Hash) ? add_counts(totals.fetch(key, {}), value) : totals.fetch(key, 0) + value.to_i
      end
      totals
    end

    # `after_fork` without waiting: this runs inside `fork`, so nothing here
    # connects or blocks (the subscriber thread opens its subscription itself).
    def after_fork_in_child
      return if @destroyed

      backend = @config[:backend_instance]
      backend&.after_fork
      middlewares.each(&:after_fork)
      @mutex.synchronize { start_subscriber_thread(open_in_thread: true) } unless @subscriptions.empty?
      @timer&.queue {}
    rescue StandardError => e
      log_warning("could not restart in the forked process #{Process.pid}: #{e.class}: #{e.message}")
    end

    def native_backend?(backend)
      backend.respond_to?(:native) && !backend.native.nil?
    end

    def monotonic_now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def build_backend
      ConfigCheck.new(self).warn_once
      @config[:backend_options] ||= {}
      name = backend
      begin
        require "message_bus/backends/#{name}"
      rescue LoadError => e
        raise ArgumentError, "unknown message_bus backend #{name.inspect} (#{e.message})"
      end
      klass = MessageBus::BACKENDS[name.to_sym]
      raise ArgumentError, "message_bus backend #{name.inspect} did not register itself" unless klass

      klass.new(@config)
    end

    def check_channel!(channel)
      return if channel.is_a?(String)

      raise ArgumentError, "channel must be a String, got #{channel.inspect}"
    end

    def message_id_arg(value)
      case value
      when nil, Integer then value
      when Float then value.to_i
      when /\A\s*-?\d+\s*\z/ then value.to_i
      else raise ArgumentError, "message id must be an Integer, got #{value.inspect}"
      end
    end

    def encode_envelope(data, user_ids, group_ids, client_ids)
      codec = @config[:transport_codec] || transport_codec
      # The default codec and no targets: the envelope's fixed parts around
      # the data's JSON, the same bytes as generating the whole Hash; the
      # extension writes it (a String, no check needed) when the data is of
      # plain types.
      untargeted = !user_ids && !group_ids && !client_ids && codec.instance_of?(MessageBus::Codec::Json)
      if untargeted && (envelope = MessageBus::Native._untargeted_envelope(data))
        return envelope
      end

      begin
        encoded =
          if untargeted
            "#{UNTARGETED_ENVELOPE_HEAD}#{codec.encode(data)}#{UNTARGETED_ENVELOPE_TAIL}"
          else
            codec.encode({ "data" => data, "user_ids" => user_ids, "group_ids" => group_ids, "client_ids" => client_ids })
          end
      rescue StandardError => e
        raise MessageBus::InvalidMessage, "the transport codec cannot encode this message: #{e.class}: #{e.message}"
      end
      raise MessageBus::InvalidMessage, "the transport codec must return a String" unless encoded.is_a?(String)

      encoded
    end

    def backend_publish_options(opts)
      result = {}
      # Both limits are honoured when both are given (§9 Q3).
      result[:max_backlog_age] = opts[:max_backlog_age] if opts[:max_backlog_age]
      result[:max_backlog_size] = opts[:max_backlog_size] if opts[:max_backlog_size]
      result[:queue_in_memory] = opts[:queue_in_memory] if opts.key?(:queue_in_memory)
      result
    end

    def local_site_key(channel)
      return nil unless site_id_lookup
      return nil if channel&.start_with?(GLOBAL_PREFIX)

      site_id_lookup.call
    end

    def subscribe_impl(channel, site_key, last_id, &blk)
      return if @off
      raise MessageBus::BusDestroyed if @destroyed
      raise ArgumentError, "subscribe requires a block" unless blk

      check_channel!(channel) if channel
      last_id = message_id_arg(last_id) || -1
      if last_id >= 0
        replay = ReplayingSubscriber.new(self, channel, site_key, last_id, blk)
        replay.run { register_subscriber(site_key, channel, replay.to_proc) }
        blk = replay.to_proc
      else
        register_subscriber(site_key, channel, blk)
      end
      raise MessageBus::BusDestroyed if @destroyed

      blk
    end

    def register_subscriber(site_key, channel, blk)
      @mutex.synchronize do
        ((@subscriptions[site_key] ||= {})[channel] ||= []) << blk
      end
      ensure_subscriber_thread
    end

    def unsubscribe_impl(channel, site_key, &blk)
      @mutex.synchronize do
        procs = @subscriptions.dig(site_key, channel)
        next unless procs

        blk ? procs.delete(blk) : procs.clear
      end
    end

    def ensure_subscriber_thread
      @mutex.synchronize do
        start_subscriber_thread unless @destroyed || @subscriber_thread&.alive?
      end
      wait_for_subscription
    end

    # The subscription is opened before the thread starts, so that whatever is
    # published once `subscribe` returned is delivered. In a forked child
    # (`open_in_thread`: inside `fork`, nothing may block) the thread opens
    # it, replaying what came after the last message this process's copy of
    # the bus dispatched (`@position`), so the child misses nothing either.
    def start_subscriber_thread(open_in_thread: false)
      backend = backend_instance
      native = native_backend?(backend)
      from = open_in_thread ? @position : nil
      subscription = nil
      unless open_in_thread
        subscription = backend.open_subscription(nil) if native
        @position = subscription&.start
      end
      @last_message_at = monotonic_now
      @subscriber_thread = Thread.new do
        subscription ||= backend.open_subscription(from) if native
        if subscription
          subscription.each { |msg| dispatch(msg) }
        else
          backend.global_subscribe(from) { |msg| dispatch(msg) }
        end
      rescue Exception => e # rubocop:disable Lint/RescueException -- log why the thread ends
        log_warning("subscriber thread stopped: #{e.class}: #{e.message}") unless e.is_a?(SignalException)
        raise
      ensure
        subscription&.close
      end
      @subscriber_thread.name = "MessageBus subscriber"
      @subscriber_thread.report_on_exception = false
      start_keepalive
      start_log_drain
    end

    def wait_for_subscription
      backend = backend_instance
      return unless backend

      deadline = monotonic_now + SUBSCRIBE_WAIT
      sleep 0.001 until backend.subscribed || monotonic_now > deadline || @destroyed
    end

    def dispatch(msg)
      @last_message_at = monotonic_now
      begin
        decode_message!(msg)
      rescue StandardError => e
        log_warning("failed to decode message #{msg.global_id} on #{msg.channel}: #{e.class}: #{e.message}",
                    category: :undecodable)
        return
      end
      subscribers_for(msg).each do |subscriber|
        subscriber.call(msg)
        count_subscriber_block(false)
      rescue StandardError => e
        count_subscriber_block(true)
        log_warning("subscriber failed on #{msg.channel}: #{e.class}: #{e.message}\n" \
                    "#{e.backtrace&.first(5)&.join("\n")}", category: :subscriber_failed)
      end
      @position = msg.global_id
    end

    def subscribers_for(msg)
      @mutex.synchronize do
        site = msg.site_id
        lists = [@subscriptions.dig(nil, msg.channel)]
        lists << @subscriptions.dig(site, msg.channel) if site
        lists << @subscriptions.dig(nil, nil)
        lists << @subscriptions.dig(site, nil) if site
        lists.compact.flatten
      end
    end

    # Warnings of the Rust core (reconnects, unreadable messages) go to the logger.
    def start_log_drain
      @log_drain&.cancel
      @log_drain = timer.every(1) { drain_native_log }
    end

    def drain_native_log
      MessageBus::Native._drain_log.each { |line| log_warning(line.delete_prefix("message_bus: ")) }
    end

    def start_keepalive
      interval = keepalive_interval.to_i
      @keepalive&.cancel
      @keepalive = nil
      return unless interval > MIN_KEEPALIVE

      @keepalive = timer.every(interval) { keepalive_tick(interval) }
    end

    def keepalive_tick(interval)
      unless !@destroyed && @subscriber_thread&.alive?
        @keepalive&.cancel
        return
      end

      publish(KEEPALIVE_CHANNEL, Process.pid, user_ids: [-1])
      return unless monotonic_now - @last_message_at > 3 * interval

      log_warning("Global messages on #{Process.pid} timed out, message bus is no longer functioning correctly",
                  category: :keepalive)
    end
  end

  # An independent bus: own configuration, backend, subscriber thread, timer.
  class Instance
    include Implementation
  end

  extend Implementation
  initialize

  # Wraps every fork (Ruby >= 3.1): the fork waits until no Rust thread holds
  # a lock the child needs; in the child, where the parent's runtime threads
  # do not exist, the parent's client sockets are closed (close(2) only, the
  # parent keeps them) and every bus does what `after_fork` does
  # (COMPAT.md §1.8, DESIGN "Fork safety").
  module ForkHook
    def _fork
      MessageBus::Native._before_fork
      pid = super
      if pid.zero?
        MessageBus::Native._after_fork_in_child
        MessageBus::Implementation.forked
      end
      pid
    ensure
      MessageBus::Native._after_fork_in_parent unless pid&.zero?
    end
  end
  Process.singleton_class.prepend(ForkHook) if Process.respond_to?(:_fork)
end

require "message_bus/backends/memory"
require "message_bus/rack/middleware" if File.exist?(File.join(__dir__, "message_bus/rack/middleware.rb"))
require "message_bus/rails/railtie" if defined?(Rails::Engine) && File.exist?(File.join(__dir__, "message_bus/rails/railtie.rb"))
