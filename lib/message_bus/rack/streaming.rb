# frozen_string_literal: true

require "uri"

module MessageBus
  module Rack
    # The streaming transports of the middleware: a WebSocket at
    # `<base_route>message-bus/<client_id>/ws`, Server-Sent Events at
    # `.../<client_id>/sse?<channel>=<last id>&...`. Ruby runs the lookups a
    # poll runs and the checks that end in a 4xx (before any upgrade); then
    # the socket is hijacked and Rust completes the handshake and owns it:
    # no Ruby thread or object per connection. Whatever cannot be taken over
    # gets a clear 4xx, so that browser clients long poll instead.
    module Streaming
      PLAIN = { "content-type" => "text/plain; charset=utf-8" }.freeze
      HOST_FORMAT = /\A(\[[^\]]+\]|[^:\[\]]+)(?::(\d+))?\z/

      private

      def stream(env, client_id, transport, headers)
        refusal = stream_refusal(env, transport)
        return refusal if refusal

        accept = nil
        if transport == :websocket
          accept, problem = MessageBus::Native::Connections._websocket_accept(
            env["HTTP_SEC_WEBSOCKET_VERSION"], env["HTTP_SEC_WEBSOCKET_KEY"]
          )
          return refuse(problem[0], problem[1], problem[0] == 426 ? { "sec-websocket-version" => "13" } : {}) if problem
        end

        source = transport == :sse ? :query : :body
        request = PollRequest.new(env, @bus, client_id, source: source)
        connections = @connections && @pid == Process.pid ? @connections : start_listener
        return refuse(400, "#{name_of(transport)} needs a built-in backend: long poll instead") unless connections

        @gate.sync(connections)
        release_active_record_connections
        interval = transport == :sse ? @bus.sse_keepalive_interval : @bus.websocket_ping_interval
        stream_over_socket(env, transport) do |fd|
          connections._open(fd, request.as_stream(headers, transport, interval, accept: accept))
        end
      end

      def stream_refusal(env, transport)
        refusal = transport == :websocket ? websocket_refusal(env) : sse_refusal(env)
        return refusal if refusal

        # As long polls become polls past max_active_clients, streams are
        # refused then (a browser client polls instead).
        if at_capacity?
          return refuse(503, "this server holds max_active_clients (#{@bus.max_active_clients}) connections: poll instead",
                        "retry-after" => "10")
        end
        return nil if env["rack.hijack"] && @bus.rack_hijack_enabled?

        refuse(400, "#{name_of(transport)} needs a server that can hand its socket over (Rack hijack): long poll instead")
      end

      def websocket_refusal(env)
        unless @bus.websocket_enabled?
          return refuse(404, "WebSocket is off on this server (websocket_enabled = false): long poll instead")
        end
        return refuse(400, "a WebSocket opens with GET and Upgrade: websocket") unless websocket_upgrade?(env)
        return if origin_allowed?(env)

        refuse(403, "origin #{env['HTTP_ORIGIN'].to_s[0, 200].inspect} may not open a WebSocket here (allowed_origins)")
      end

      def sse_refusal(env)
        return refuse(404, "Server-Sent Events are off on this server (sse_enabled = false)") unless @bus.sse_enabled?

        refuse(405, "an event stream opens with GET") unless env["REQUEST_METHOD"] == "GET"
      end

      def name_of(transport)
        transport == :websocket ? "WebSocket" : "an event stream"
      end

      def refuse(status, message, extra = {})
        [status, PLAIN.merge(extra), [message]]
      end

      def websocket_upgrade?(env)
        env["REQUEST_METHOD"] == "GET" && env["HTTP_UPGRADE"].to_s.casecmp?("websocket") &&
          env["HTTP_CONNECTION"].to_s.split(",").any? { |token| token.strip.casecmp?("upgrade") }
      end

      # No Origin (not a browser), or the page's own host; anything else
      # only if `allowed_origins` lists it (or its proc allows the request).
      def origin_allowed?(env)
        origin = env["HTTP_ORIGIN"].to_s
        return true if origin.empty? || same_host?(origin, env["HTTP_HOST"].to_s)

        allowed = @bus.allowed_origins
        return allowed.call(env) ? true : false if allowed.respond_to?(:call)

        Array(allowed).any? { |listed| listed.to_s.chomp("/").casecmp?(origin) }
      end

      def same_host?(origin, host_header)
        uri = URI.parse(origin)
        match = HOST_FORMAT.match(host_header)
        return false unless uri.host && match

        host = match[1].delete_prefix("[").delete_suffix("]")
        port = match[2] ? match[2].to_i : uri.default_port
        uri.hostname.casecmp?(host) && uri.port == port
      rescue URI::InvalidURIError
        false
      end

      # Hijacks, yields the socket's descriptor (Rust takes a duplicate) and
      # closes ours. A hijacked IO without a socket descriptor gets a 400
      # written on it.
      def stream_over_socket(env, transport)
        io = hijack(env)
        fd = socket_descriptor(io)
        unless fd
          body = "#{name_of(transport)} needs a hijacked socket Rust can take over (this server's has none): " \
                 "long poll instead"
          io.write("HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n" \
                   "content-length: #{body.bytesize}\r\nconnection: close\r\n\r\n#{body}")
          return Middleware::TEAPOT
        end

        yield fd
        Middleware::TEAPOT
      ensure
        begin
          io&.close
        rescue IOError
          nil
        end
      end
    end
  end
end
