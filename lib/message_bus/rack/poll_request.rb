# frozen_string_literal: true

require "cgi/util"
require "json"

module MessageBus
  module Rack
    # One poll request, parsed and checked (COMPAT.md §3.2 steps 7-12, §3.3).
    # Bad input raises BadRequest, answered with a 4xx and a message.
    class PollRequest
      class BadRequest < StandardError
        attr_reader :status

        def initialize(message, status = 400)
          super(message)
          @status = status
        end
      end

      # Request bodies above this many bytes get a 413.
      MAX_BODY_BYTES = 512 * 1024
      # Polls subscribing to more channels get a 413.
      MAX_CHANNELS = 1000
      MAX_CLIENT_ID_BYTES = 128
      CLIENT_ID_FORMAT = /\A[\w\-.~:@+=]*\z/
      INTEGER = /\A\s*-?\d+\s*\z/
      SEQ_RANGE = (-(2**63)..((2**63) - 1))
      SEQ_MIN = SEQ_RANGE.min
      SEQ_MAX = SEQ_RANGE.max
      NULL_JSON = "null"
      EMPTY_LIST_JSON = "[]"
      EMPTY = [].freeze

      attr_reader :client_id, :site_id, :seq, :channels, :user_json, :groups_json, :user_id, :group_ids

      # `source: :query` reads the subscriptions from the query string (an
      # event stream's), positions in a `Last-Event-ID` header winning.
      def initialize(env, bus, client_id, source: :body)
        @env = env
        @source = source
        @bus = bus
        @client_id = check_client_id(client_id)
        @user_id = user_id = bus.user_id_lookup&.call(env)
        @group_ids = group_ids = bus.group_ids_lookup&.call(env) || []
        @site_id = encoding_site(bus.site_id_lookup)
        @user_json = user_id.nil? ? NULL_JSON : JSON.generate(user_id)
        @groups_json = group_ids.nil? || group_ids == EMPTY ? EMPTY_LIST_JSON : JSON.generate(Array(group_ids))
        @seq = 0
        @channels = read_channels
      end

      # HTTP/1.1, no Dont-Chunk header, chunking enabled (§3.2 step 12). The
      # request's own version wins: Puma reports SERVER_PROTOCOL "HTTP/1.1"
      # even for HTTP/1.0 requests, whose clients cannot read chunks.
      def allow_chunked?
        (@env["HTTP_VERSION"] || @env["SERVER_PROTOCOL"]) == "HTTP/1.1" &&
          !@env.key?("HTTP_DONT_CHUNK") && @bus.chunked_encoding_enabled?
      end

      # This request as a poll answered at once (see #native); also what a
      # poll that may be parked (`_poll_pending`) is asked with, its headers
      # coming later.
      def as_poll
        native(:poll, EMPTY, 0, 0, nil)
      end

      # This request as a long poll parked for `timeout_ms`: one response,
      # or `chunked`, with these response headers.
      def as_long_poll(headers, chunked, timeout_ms)
        native(chunked ? :streaming : :long_poll, headers.to_a, Integer(timeout_ms), 0, nil)
      end

      # This request as a WebSocket (`accept`: its Sec-WebSocket-Accept
      # value) or an event stream, pinged (or sent a comment) every
      # `keepalive_seconds`.
      def as_stream(headers, transport, keepalive_seconds, accept: nil)
        keepalive_ms = (Float(keepalive_seconds) * 1000).round.clamp(10, 2**40)
        native(transport, headers.to_a, 0, keepalive_ms, accept)
      end

      private

      # The one shape of a request on the native line, whatever its
      # transport: a MessageBus::Native::WebRequest (its members are listed
      # in ext/message_bus/src/web_request.rs), built here only.
      def native(transport, headers, timeout_ms, keepalive_ms, accept)
        MessageBus::Native::WebRequest.new(client_id, site_id, user_json, groups_json, seq, channels, headers,
                                           transport, timeout_ms, keepalive_ms, accept, MAX_CHANNELS)
      end

      # The site this client's channel names are encoded with (COMPAT.md §2),
      # nil without a site_id_lookup. When the lookup has no site for this
      # request, it is called without one, as the reference does and as a
      # publish without site_id is encoded: such a client reads
      # `channel$|$<that site>` (usually `channel$|$`), never the bare name.
      def encoding_site(lookup)
        return nil unless lookup

        site = lookup.call(@env)
        site = site_without_request(lookup) if site.nil?
        site.to_s
      end

      def site_without_request(lookup)
        lookup.call
      rescue ArgumentError, NoMethodError => e
        raise ArgumentError, "site_id_lookup returned nil for this request and cannot be called without one " \
                             "(as for a publish without site_id): #{e.message}"
      end

      def check_client_id(client_id)
        if client_id.bytesize > MAX_CLIENT_ID_BYTES || !client_id.match?(CLIENT_ID_FORMAT)
          raise BadRequest, "invalid client id: use at most #{MAX_CLIENT_ID_BYTES} letters, digits or -_.~:@+="
        end

        client_id
      end

      def read_channels
        if (forced = @env["message_bus.channels"])
          @seq = to_seq(@env["message_bus.seq"]) if @env.key?("message_bus.seq")
          return forced.map { |channel, id| [check_channel(channel.to_s), to_last_id(channel, id)] }
        end

        pairs = @source == :query ? query_pairs : body_pairs
        if pairs.count { |key, _| key != "__seq" } > MAX_CHANNELS
          raise BadRequest.new("too many channels in one poll (at most #{MAX_CHANNELS})", 413)
        end

        channels = {}
        pairs.each do |key, value|
          if key == "__seq"
            @seq = to_seq(value)
          else
            channels[check_channel(key)] = to_last_id(key, value)
          end
        end
        channels.to_a
      end

      # `?<channel>=<last id>&...`, resumed from an EventSource's
      # `Last-Event-ID` (the JSON object of positions its events carry).
      def query_pairs
        pairs = decode_form(@env["QUERY_STRING"].to_s)
        resume = last_event_positions
        return pairs unless resume

        pairs.map { |key, value| resume.key?(key) ? [key, resume[key]] : [key, value] }
      end

      def last_event_positions
        text = @env["HTTP_LAST_EVENT_ID"].to_s
        return nil if text.empty?

        parsed = JSON.parse(text)
        raise BadRequest, "Last-Event-ID must be the JSON object of positions an event carried" unless parsed.is_a?(Hash)

        parsed
      rescue JSON::ParserError
        raise BadRequest, "Last-Event-ID must be the JSON object of positions an event carried"
      end

      def body_pairs
        body = read_body
        return [] if body.empty?

        if @env["CONTENT_TYPE"].to_s.include?("application/json")
          parsed = parse_json(body)
          raise BadRequest, "a JSON poll body must be an object of channel => last id" unless parsed.is_a?(Hash)

          parsed.to_a
        else
          decode_form(body)
        end
      end

      # Form pairs in order. Unlike URI.decode_www_form, invalid UTF-8 is
      # reported (by check_channel / to_last_id) rather than replaced; the body
      # is split as bytes, which invalid UTF-8 cannot make fail.
      def decode_form(body)
        body.b.split("&").filter_map do |pair|
          next if pair.empty?

          key, value = pair.split("=", 2)
          [unescape(key), unescape(value.to_s)]
        end
      end

      # `+` and valid %XX escapes decoded, anything else kept as is.
      def unescape(text)
        CGI.unescape(text, Encoding::UTF_8).force_encoding(Encoding::UTF_8)
      end

      def parse_json(body)
        JSON.parse(body)
      rescue JSON::ParserError => e
        raise BadRequest, "invalid JSON body: #{e.message[0, 200]}"
      end

      def read_body
        input = @env["rack.input"]
        return +"" unless input

        declared = declared_length
        raise BadRequest.new("request body too large (at most #{MAX_BODY_BYTES} bytes)", 413) if declared.to_i > MAX_BODY_BYTES

        input.rewind if input.respond_to?(:rewind)
        # Never past the declared length: Puma 5 leaves bytes pipelined after
        # the body in rack.input.
        body = input.read(declared || (MAX_BODY_BYTES + 1)) || +""
        raise BadRequest.new("request body too large (at most #{MAX_BODY_BYTES} bytes)", 413) if body.bytesize > MAX_BODY_BYTES

        body.force_encoding(Encoding::UTF_8)
      end

      # CONTENT_LENGTH as a number of bytes, nil when absent or not one.
      def declared_length
        text = @env["CONTENT_LENGTH"]
        text.to_i if text.is_a?(String) && text.match?(/\A\d+\z/)
      end

      def check_channel(channel)
        raise BadRequest, "channel names must be valid UTF-8" unless channel.dup.force_encoding(Encoding::UTF_8).valid_encoding?
        # Never a client's to send, with or without a site: it would name another site's backlog.
        raise BadRequest, "channel names must not contain #{MessageBus::Implementation::ENCODE_SITE_TOKEN}" \
          if channel.include?(MessageBus::Implementation::ENCODE_SITE_TOKEN)

        channel.dup.force_encoding(Encoding::UTF_8)
      end

      # nil / "" → from now; integers (or their decimal text, or a JSON float) → that id.
      def to_last_id(channel, value)
        case value
        when nil, "" then nil
        when Integer then clamp(value)
        when Float then value.finite? ? clamp(value.to_i) : invalid_id(channel, value)
        when String then value.b.match?(INTEGER) ? clamp(value.to_i) : invalid_id(channel, value)
        else invalid_id(channel, value)
        end
      end

      def invalid_id(channel, value)
        raise BadRequest, "invalid last id #{value.to_s[0, 40].inspect} for channel #{channel.to_s[0, 100].inspect}"
      end

      # Any number; huge ones (even a JSON 1e400, which is Infinity) are clamped.
      def to_seq(value)
        return 0 if value.is_a?(Float) && value.nan?
        return value.positive? ? SEQ_MAX : SEQ_MIN if value.is_a?(Float) && value.infinite?

        clamp(value.is_a?(Numeric) ? value.to_i : value.to_s.b.to_i)
      end

      def clamp(value)
        value.clamp(SEQ_MIN, SEQ_MAX)
      end
    end
  end
end
