# frozen_string_literal: true

require "json"
require "uri"
require "rack"
require "message_bus/rack/poll_request"
require "message_bus/rack/ruby_gate"

module MessageBus
  module Rack
    # Serves `<base_route>message-bus/...` (COMPAT.md §3). Ruby runs the
    # lookups and parses the request; a long poll's socket is hijacked and
    # handed to Rust, which writes the response, streams live messages and
    # closes it: a waiting client holds no Ruby thread.
    class Middleware
      TEAPOT = [418, {}, ["I'm a teapot, undefined in spec"]].freeze
      NOT_FOUND = [404, {}, ["not found"]].freeze

      attr_reader :started_listener

      def initialize(app, config = {})
        @app = app
        @bus = config[:message_bus] || MessageBus
        @prefix = "#{@bus.base_route}message-bus/"
        @connections = nil
        @started_listener = false
        @lock = Mutex.new
        @gate = RubyGate.new(@bus)
        start_listener unless @bus.off?
        @bus.register_middleware(self) if @bus.respond_to?(:register_middleware)
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
          @started_listener = false
        end
      end

      # Parked connections, live messages pushed, slow readers cut, messages
      # no web client could read, and every hijacked connection's close by
      # reason (`closed: { timeout:, delivered:, replaced:, refused:, ... }`).
      def stats
        @connections ? @connections._stats : MessageBus::Native::Connections._empty_stats
      end

      def self.backlog_to_json(messages)
        JSON.dump(messages.map { |m| { global_id: m.global_id, message_id: m.message_id, channel: m.channel, data: m.data } })
      end

      private

      # The parked-client registry of this process. A middleware built before
      # a fork (Puma `preload_app!`) gets a fresh one in each worker: the
      # parent's tasks and backend subscription do not exist there.
      def start_listener
        @lock.synchronize do
          return @connections if @connections && @pid == Process.pid

          @connections&._stop
          @pid = Process.pid
          backend = @bus.backend_instance
          unless backend.respond_to?(:native)
            raise ArgumentError, "MessageBus::Rack::Middleware needs one of the built-in backends (got #{backend.class})"
          end

          @connections = MessageBus::Native::Connections.new(backend.native)
          @started_listener = true
          @gate.sync(@connections)
          @connections
        end
      end

      def handle(env)
        env["rack.session.options"][:skip] = true if env["rack.session.options"]
        rest = env["PATH_INFO"][@prefix.length..]
        return broadcast(env) if rest == "broadcast" && @bus.allow_broadcast?

        client_id = rest.split("/").first
        return NOT_FOUND unless client_id

        headers = response_headers(env)
        return [200, headers, ["OK"]] if env["REQUEST_METHOD"] == "OPTIONS"

        request = PollRequest.new(env, @bus, client_id)
        release_active_record_connections
        respond(env, request, headers)
      end

      def respond(env, request, headers)
        connections = @connections && @pid == Process.pid ? @connections : start_listener
        @gate.sync(connections)
        long_polling = @bus.long_polling_enabled? && !env["QUERY_STRING"].to_s.include?("dlp=t") &&
                       connections._parked < @bus.max_active_clients
        takeover = long_polling && socket_takeover(env)
        chunked = request.allow_chunked?
        return park(env, connections, request, headers, takeover, chunked: true) if takeover && chunked
        return poll_then_park(env, connections, request, headers, takeover) if takeover

        body, = connections._poll(request.client_id, request.site_id, request.user_json, request.groups_json,
                                  request.channels)
        [200, headers, [body]]
      end

      # How a long poll's socket can be handed to Rust: Rack hijack (Puma,
      # Unicorn, Passenger), or detaching Thin's EventMachine connection
      # (Thin has no hijack; EM stops watching the descriptor and leaves it open).
      def socket_takeover(env)
        return :hijack if env["rack.hijack"] && @bus.rack_hijack_enabled?

        callback = env["async.callback"]
        :thin if callback.respond_to?(:receiver) && callback.receiver.respond_to?(:detach)
      end

      def park(env, connections, request, headers, takeover, chunked:)
        taken_over(env, takeover) do |fd|
          connections._park(fd, request.park_params(headers.to_a, chunked, @bus.long_polling_interval))
        end
      end

      # Answers at once when the backlog has anything; parks otherwise. The
      # poll is registered for live messages before its backlog is read, so
      # parking it needs no second read.
      def poll_then_park(env, connections, request, headers, takeover)
        body, pending = connections._poll_pending(request.client_id, request.site_id, request.user_json,
                                                  request.groups_json, request.channels, request.seq)
        return [200, headers, [body]] unless pending

        begin
          taken_over(env, takeover) do |fd|
            connections._attach(pending, fd, request.park_params(headers.to_a, false, @bus.long_polling_interval))
          end
        ensure
          pending._cancel
        end
      end

      # Yields the socket's descriptor (Rust takes a duplicate), closes ours,
      # and answers the server as a takeover requires.
      def taken_over(env, takeover)
        if takeover == :thin
          fd = env["async.callback"].receiver.detach
          begin
            yield fd
          ensure
            IO.for_fd(fd).close
          end
          throw :async
        end

        io = env["rack.hijack"].call || env["rack.hijack_io"]
        begin
          yield io.fileno
        ensure
          io.close
        end
        TEAPOT
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

      def response_headers(env)
        headers = DEFAULT_HEADERS.dup
        extra = @bus.extra_response_headers_lookup&.call(env)
        extra&.each { |name, value| headers[name.to_s] = value.to_s }
        headers
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
        @bus.logger.warn("MessageBus could not release ActiveRecord connections: #{e.message}")
      end
    end
  end
end
