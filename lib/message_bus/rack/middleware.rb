# frozen_string_literal: true

require "json"
require "uri"
require "rack"
require "socket"
require "message_bus/rack/poll_request"
require "message_bus/rack/ruby_gate"
require "message_bus/rack/streaming"

module MessageBus
  module Rack
    # Serves `<base_route>message-bus/...` (COMPAT.md §3). Ruby runs the
    # lookups and parses the request; a long poll's socket is hijacked and
    # handed to Rust, which writes the response, streams live messages and
    # closes it: a waiting client holds no Ruby thread.
    class Middleware
      include Streaming

      TEAPOT = [418, {}, ["I'm a teapot, undefined in spec"]].freeze
      NOT_FOUND = [404, {}, ["not found"]].freeze
      STREAMS = { "ws" => :websocket, "sse" => :sse }.freeze
      # The middlewares of this process: at exit, their connections get their
      # close output (a WebSocket's 1001 "server stopping") before the
      # process goes, not a bare FIN.
      LIVE = ObjectSpace::WeakMap.new
      at_exit { LIVE.each_key(&:close_at_exit) }

      attr_reader :started_listener, :connection_manager

      def initialize(app, config = {})
        @app = app
        @bus = config[:message_bus] || MessageBus
        @prefix = "#{@bus.base_route}message-bus/"
        @connection_manager = MessageBus::ConnectionManager.new(@bus)
        @connections = nil
        @ruby_listener = nil
        @started_listener = false
        @announced = {}
        @lock = Mutex.new
        @gate = RubyGate.new(@bus)
        start_listener unless @bus.off?
        @bus.register_middleware(self) if @bus.respond_to?(:register_middleware)
        LIVE[self] = true
      end

      def call(env)
        return @app.call(env) unless env["PATH_INFO"].start_with?(@prefix)

        begin
          handle(env)
        rescue PollRequest::BadRequest => e
          [e.status, { "content-type" => "text/plain; charset=utf-8" }, [e.message]]
        rescue StandardError => e
          handler = @bus.on_middleware_error
          response = handler&.call(env, e)
          raise unless response

          response
        end
      end

      # Stops live delivery to this middleware's parked clients and closes them.
      def stop_listener
        @lock.synchronize do
          @connections&._stop
          @gate.stop
          @connections = nil
          @connection_manager.native = nil
          @bus.unsubscribe(nil, &@ruby_listener) if @ruby_listener
          @ruby_listener = nil
          @started_listener = false
        end
      end

      # At process exit: closes this process's connections and waits (a
      # second at most) for their close output to be written.
      def close_at_exit
        connections = @lock.synchronize { @connections if @pid == Process.pid }
        connections&._stop_and_wait(1.0)
      rescue StandardError
        nil
      end

      # Parked connections, live messages pushed, slow readers cut, messages
      # no web client could read, and every hijacked connection's close by
      # reason (`closed: { timeout:, delivered:, replaced:, refused:, ... }`).
      def stats
        @connection_manager.stats
      end

      # This process's registry of Rust-owned connections (nil before the
      # first request, in a forked child, or with a backend written in Ruby).
      def native_connections
        @lock.synchronize { @connections if @pid == Process.pid }
      end

      # In a forked child (called by the bus): the clients are the parent's.
      def after_fork
        @connection_manager.after_fork
      end

      def self.backlog_to_json(messages)
        JSON.dump(messages.map { |m| { global_id: m.global_id, message_id: m.message_id, channel: m.channel, data: m.data } })
      end

      private

      def native_backend
        backend = @bus.backend_instance
        backend.respond_to?(:native) ? backend.native : nil
      end

      # The parked-client registry of this process. A middleware built before
      # a fork (Puma `preload_app!`) gets a fresh one in each worker: the
      # parent's tasks and backend subscription do not exist there. A backend
      # written in Ruby has none: its clients are served from Ruby.
      def start_listener
        @lock.synchronize do
          return @connections if @connections && @pid == Process.pid

          @connections&._stop
          @pid = Process.pid
          native = native_backend
          unless native
            announce(:ruby_backend, "the #{@bus.backend_instance.class} backend is not a built-in one: its web clients " \
                                    "are served from Ruby (a Ruby object and a timer job per waiting client)")
            start_ruby_listener
            @connections = nil
            return nil
          end

          @connections = MessageBus::Native::Connections.new(native)
          @connection_manager.native = @connections
          @started_listener = true
          @gate.sync(@connections)
          @connections
        end
      end

      # Clients served from Ruby get live messages through a bus-wide
      # subscription handed to the timer thread (COMPAT.md §1.15).
      def start_ruby_listener
        return if @ruby_listener

        @ruby_listener = @bus.subscribe do |msg|
          @started_listener = true
          @bus.timer.queue { @connection_manager.notify_ruby_clients(msg) }
        end
        @started_listener = true if @ruby_listener
      end

      def announce(key, text)
        return if @announced[key]

        @announced[key] = true
        @bus.log_warning(text, category: key)
      end

      def handle(env)
        env["rack.session.options"][:skip] = true if env["rack.session.options"]
        rest = env["PATH_INFO"][@prefix.length..]
        return broadcast(env) if rest == "broadcast" && @bus.allow_broadcast?

        client_id, action = rest.split("/", 3)
        return NOT_FOUND unless client_id

        headers = response_headers(env)
        return [200, headers, ["OK"]] if env["REQUEST_METHOD"] == "OPTIONS"
        return stream(env, client_id, STREAMS[action], headers) if STREAMS.key?(action)

        request = PollRequest.new(env, @bus, client_id)
        release_active_record_connections
        respond(env, request, headers)
      end

      # max_active_clients reached: long polls become polls, streams are refused.
      def at_capacity?
        @connection_manager.client_count >= @bus.max_active_clients
      end

      def long_polling?(env)
        @bus.long_polling_enabled? && !env["QUERY_STRING"].to_s.include?("dlp=t") &&
          !at_capacity?
      end

      def respond(env, request, headers)
        connections = @connections && @pid == Process.pid ? @connections : start_listener
        return respond_in_ruby(env, request, headers) unless connections

        @gate.sync(connections)
        takeover = long_polling?(env) && socket_takeover(env)
        chunked = request.allow_chunked?
        return park(env, connections, request, headers, takeover) if takeover && chunked
        return poll_then_park(env, connections, request, headers, takeover) if takeover

        body = connections._poll(request.as_poll)
        [200, with_epoch(headers), [body]]
      end

      # How a long poll's socket can be handed over: Rack hijack (Puma,
      # Unicorn, Passenger), or detaching Thin's EventMachine connection
      # (Thin has no hijack; EM stops watching the descriptor and leaves it open).
      def socket_takeover(env)
        return :hijack if env["rack.hijack"] && @bus.rack_hijack_enabled?

        callback = env["async.callback"]
        :thin if callback.respond_to?(:receiver) && callback.receiver.respond_to?(:detach)
      end

      def park(env, connections, request, headers, takeover)
        taken_over(env, takeover, request, headers) do |fd|
          connections._open(fd, request.as_long_poll(headers, true, @bus.long_polling_interval))
        end
      end

      # Answers at once when the backlog has anything; parks otherwise. The
      # poll is registered for live messages before its backlog is read, so
      # parking it needs no second read.
      def poll_then_park(env, connections, request, headers, takeover)
        body, pending = connections._poll_pending(request.as_poll)
        with_epoch(headers)
        return [200, headers, [body]] unless pending

        begin
          taken_over(env, takeover, request, headers) do |fd|
            # The headers now carry the epoch read after the answer's ids.
            connections._attach(pending, fd, request.as_long_poll(headers, false, @bus.long_polling_interval))
          end
        ensure
          pending._cancel
        end
      end

      # Yields the socket's descriptor (Rust takes a duplicate), closes ours,
      # and answers the server as a takeover requires. A hijacked IO without
      # a socket descriptor (a test double, a wrapper, a pipe) is served
      # from Ruby instead.
      def taken_over(env, takeover, request, headers)
        if takeover == :thin
          fd = env["async.callback"].receiver.detach
          begin
            yield fd
          ensure
            IO.for_fd(fd).close
          end
          throw :async
        end

        io = hijack(env)
        fd = socket_descriptor(io)
        unless fd
          announce(:fdless, "a hijacked #{io.class} has no socket descriptor: such requests are served from Ruby")
          return respond_in_ruby(env, request, headers, io: io)
        end

        begin
          yield fd
        ensure
          io.close
        end
        TEAPOT
      end

      def hijack(env)
        env["rack.hijack"].call || env["rack.hijack_io"]
      end

      def socket_descriptor(io)
        fd = io.respond_to?(:fileno) ? io.fileno : nil
        fd.is_a?(Integer) && io.stat.socket? ? fd : nil
      rescue IOError, SystemCallError, NotImplementedError
        nil
      end

      # The Ruby path (COMPAT.md §3.6 rows A-D with MessageBus::Client): for
      # a backend written in Ruby, or an `io` already hijacked that Rust
      # cannot take. The client is registered before its backlog is read and
      # holds its lock until it is parked, so that no live message falls in
      # between (those the backlog covered are skipped).
      def respond_in_ruby(env, request, headers, io: nil)
        start_ruby_listener
        client = ruby_client(request, headers)
        takeover = io ? :io : long_polling?(env) && socket_takeover(env)
        unless takeover
          body = self.class.backlog_to_json(client.backlog)
          return [200, with_epoch(headers), [body]]
        end

        client.use_chunked = request.allow_chunked?
        client.synchronize do
          registered = @connection_manager.add_client(client)
          backlog = client.backlog
          with_epoch(headers)
          if !backlog.empty? && !client.use_chunked && io.nil?
            @connection_manager.remove_client(client)
            return [200, headers, [self.class.backlog_to_json(backlog)]]
          end

          client.io = io || ruby_io(env, takeover)
          # Refused (an older seq), or replaced by a newer request meanwhile.
          next client.close unless registered && @connection_manager.registered?(client)

          client.deliver_backlog(backlog)
          client.ensure_first_chunk_sent
          schedule_cleanup(client)
        end
        throw :async if takeover == :thin
        TEAPOT
      end

      def ruby_client(request, headers)
        client = MessageBus::Client.new(client_id: request.client_id, user_id: request.user_id,
                                        group_ids: request.group_ids, site_id: request.site_id,
                                        seq: request.seq, message_bus: @bus)
        client.headers = headers
        request.channels.each { |channel, id| client.subscribe(channel, id) }
        client
      end

      def ruby_io(env, takeover)
        return hijack(env) unless takeover == :thin

        io = Socket.for_fd(env["async.callback"].receiver.detach)
        io.sync = true
        io
      end

      def schedule_cleanup(client)
        if client.closed?
          @connection_manager.remove_client(client)
          return
        end
        client.cleanup_timer = @bus.timer.queue(@bus.long_polling_interval.to_f / 1000) do
          client.close
          @connection_manager.remove_client(client)
        end
      end

      def broadcast(env)
        params = ::Rack::Request.new(env).params
        @bus.publish(params["channel"].to_s, params["data"])
        [200, { "content-type" => "text/html" }, ["sent"]]
      end

      DEFAULT_HEADERS = {
        "cache-control" => "must-revalidate, private, max-age=0",
        "content-type" => "application/json; charset=utf-8",
        "pragma" => "no-cache",
        "expires" => "0"
      }.freeze

      EPOCH_HEADER = "x-messagebus-epoch"

      def response_headers(env)
        headers = DEFAULT_HEADERS.dup
        extra = @bus.extra_response_headers_lookup&.call(env)
        extra&.each { |name, value| headers[name.to_s] = value.to_s }
        expose_epoch(headers)
        with_epoch(headers)
      end

      # The storage epoch as known now (see MessageBus::Instance#epoch): set
      # again once the answer's ids are read, which may have refreshed it.
      def with_epoch(headers)
        epoch = begin
          @bus.epoch
        rescue StandardError
          nil # the storage is unreachable: the request itself says so
        end
        headers[EPOCH_HEADER] = epoch if epoch
        headers
      end

      # A cross-origin browser reads only the response headers it is told
      # it may: the epoch is added to those of an app answering CORS.
      def expose_epoch(headers)
        return unless headers.any? { |name, _| name.casecmp?("access-control-allow-origin") }

        name = headers.keys.find { |n| n.casecmp?("access-control-expose-headers") } || "access-control-expose-headers"
        listed = headers[name].to_s.split(",").map(&:strip).reject(&:empty?)
        listed << "X-MessageBus-Epoch" unless listed.any? { |h| h.casecmp?(EPOCH_HEADER) }
        headers[name] = listed.join(", ")
      end

      # A parked long poll must not pin a database connection (§9 Q33: guarded).
      def release_active_record_connections
        return unless defined?(::ActiveRecord::Base)

        if ::ActiveRecord::Base.respond_to?(:connection_handler)
          handler = ::ActiveRecord::Base.connection_handler
          if handler.method(:clear_active_connections!).arity.zero?
            handler.clear_active_connections!
          else
            handler.clear_active_connections!(:all)
          end
        elsif ::ActiveRecord::Base.respond_to?(:clear_active_connections!)
          ::ActiveRecord::Base.clear_active_connections!
        end
      rescue StandardError => e
        @bus.log_warning("could not release ActiveRecord connections: #{e.message}", category: :active_record)
      end
    end
  end
end
