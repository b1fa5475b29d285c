# frozen_string_literal: true

require "json"
require "message_bus/web_judge"

module MessageBus
  # One web client (COMPAT.md §1.15): its identity, its subscriptions and,
  # while it waits, its connection.
  #
  # The middleware keeps no Ruby object per waiting client: on the native
  # path the socket belongs to Rust. MessageBus::ConnectionManager#lookup_client
  # returns a Client describing such a connection (a *view*: `io`,
  # `headers` and `cleanup_timer` are nil; `<<` and `close` act on the Rust
  # connection). Clients served on the Ruby path (a hijacked IO without a
  # socket descriptor, a backend written in Ruby) and clients of a
  # hand-written Rack integration are real Client objects writing to `io`.
  #
  # `backlog` is computed by the same Rust code as a web poll's.
  class Client
    attr_accessor :client_id, :user_id, :group_ids, :connect_time, :site_id, :cleanup_timer,
                  :async_response, :io, :headers, :seq, :use_chunked

    # Options: `client_id`, `user_id`, `group_ids` (default []), `site_id`,
    # `seq` (default 0), `message_bus` (default MessageBus).
    def initialize(opts)
      @client_id = opts[:client_id]
      @user_id = opts[:user_id]
      @group_ids = opts[:group_ids] || []
      @site_id = opts[:site_id]
      @seq = opts[:seq].to_i
      @connect_time = Time.now
      @bus = opts[:message_bus] || MessageBus
      @subscriptions = {}
      @covered = {}
      @lock = Mutex.new
      @chunks_sent = 0
      @wrote_headers = false
      @io = nil
      @async_response = nil
      @cleanup_timer = nil
      @headers = nil
      @use_chunked = false
      @view = nil
    end

    # A Client describing the connection `entry` of `connections` (a
    # MessageBus::Native::Connections `_lookup` answer).
    def self.view(bus, connections, client_id, entry)
      conn_id, user_json, groups_json, site_id, seq, channels, chunked, connected_ms = entry
      client = new(client_id: client_id, user_id: JSON.parse(user_json), group_ids: JSON.parse(groups_json),
                   site_id: site_id, seq: seq, message_bus: bus)
      client.connect_time = Time.at(connected_ms / 1000.0)
      client.use_chunked = chunked
      channels.each { |channel, position| client.subscriptions[channel] = position || -1 }
      client.send(:view_of, connections, conn_id)
      client
    end

    # Whether this Client describes a connection held by Rust.
    def view?
      !@view.nil?
    end

    def synchronize(&blk)
      @lock.synchronize(&blk)
    end

    # Subscribes from `last_seen_id` (nil or "": from the channel's current
    # last id, read with the client's site, COMPAT.md §9 Q37).
    def subscribe(channel, last_seen_id)
      last_seen_id = nil if last_seen_id == ""
      last_seen_id ||= @bus.last_id(channel, site_id)
      @subscriptions[channel] = last_seen_id.to_i
    end

    # Channel → last id seen.
    def subscriptions
      @subscriptions
    end

    # The messages the client is due (COMPAT.md §3.4), then a `/__status`
    # message when a channel was requested from -1, is ahead of the bus, or
    # had messages this client may not see.
    def backlog
      backend = @bus.backend_instance
      source = backend.respond_to?(:native) && backend.native ? backend.native : backend
      messages, status, positions = MessageBus::Native._client_backlog(
        source, client_id.to_s, site_id&.to_s, user_json, groups_json, @subscriptions.to_a, WebJudge.for_backlog(@bus)
      )
      out = messages.map { |global_id, message_id, channel, data| Message.new(global_id, message_id, channel, JSON.parse(data)) }
      unless status.empty?
        data = {}
        status.each { |channel, id| data[channel] = @subscriptions[channel] = id }
        out << Message.new(-1, -1, "/__status", data)
      end
      @covered = positions.to_h
      out
    end

    # Whether a (decoded) message may reach this client: its targets, then
    # the client message filters.
    def allowed?(msg)
      targets = JSON.generate({ "data" => nil, "user_ids" => msg.user_ids, "group_ids" => msg.group_ids,
                                "client_ids" => msg.client_ids })
      MessageBus::Native._allowed?(client_id.to_s, user_json, groups_json, targets) && WebJudge.filters_allow?(@bus, msg)
    end

    # Whether the last `backlog` already covered this (live) message.
    def covers?(msg)
      covered = @covered[msg.channel]
      !covered.nil? && msg.message_id <= covered
    end

    # Writes one message: a chunk, or the whole response (then closed).
    def <<(msg)
      return deliver_to_view(msg) if view?

      json = MessageBus::Rack::Middleware.backlog_to_json([msg])
      use_chunked ? write_chunk(json) : write_and_close(json)
    end

    # Writes the backlog, if there is any (closing a non-streamed response).
    def deliver_backlog(backlog)
      return if backlog.empty? || view?

      json = MessageBus::Rack::Middleware.backlog_to_json(backlog)
      use_chunked ? write_chunk(json) : write_and_close(json)
    end

    # A streamed response that has sent nothing yet gets an empty chunk.
    def ensure_first_chunk_sent
      write_chunk("[]") if use_chunked && @chunks_sent.zero? && !view?
    end

    # Ends the response with the close output of COMPAT.md §3.10.
    def close
      timer = cleanup_timer
      self.cleanup_timer = nil
      begin
        timer&.cancel
      rescue StandardError
        nil
      end
      return @view[0]._close_client(client_id.to_s, @view[1]) if view?

      ensure_closed!
    end

    def closed?
      return !@view[0]._parked?(client_id.to_s, @view[1]) if view?

      !@async_response && !@io
    end

    # In a forked child: lets go of the connection inherited from the parent,
    # which keeps serving it: close(2) of its descriptor only, no byte written.
    def forget_inherited_connection
      io = @io
      @io = nil
      @async_response = nil
      self.cleanup_timer = nil
      fd = io.respond_to?(:fileno) ? io.fileno : nil
      return unless fd.is_a?(Integer)

      io.autoclose = false if io.respond_to?(:autoclose=)
      MessageBus::Native._close_fd(fd)
    rescue IOError, SystemCallError
      nil
    end

    private

    def view_of(connections, conn_id)
      @view = [connections, conn_id]
    end

    def deliver_to_view(msg)
      @view[0]._deliver_to(client_id.to_s, @view[1], msg, JSON.generate(msg.data))
    end

    def user_json
      user_id.nil? ? "null" : JSON.generate(user_id)
    end

    def groups_json
      JSON.generate(Array(group_ids))
    end

    def header_pairs
      (headers || {}).map { |name, value| [name.to_s, value.to_s] }
    end

    def write_chunk(json)
      @chunks_sent += 1
      bytes = MessageBus::Native._http_chunk(json)
      if @async_response
        @async_response << bytes
      elsif @io
        unless @wrote_headers
          bytes = MessageBus::Native._http_chunked_head(header_pairs) << bytes
          @wrote_headers = true
        end
        @io.write(bytes)
      end
    end

    def write_and_close(json)
      if @io
        io = @io
        @io = nil
        begin
          io.write(MessageBus::Native._http_full_response(header_pairs, json))
        ensure
          io.close
        end
      elsif @async_response
        response = @async_response
        @async_response = nil
        response << json
        response.done
      end
    end

    def ensure_closed!
      return unless @io || @async_response
      return write_and_close("[]") unless use_chunked

      write_chunk("[]")
      last = MessageBus::Native._http_last_chunk
      if (io = @io)
        @io = nil
        begin
          io.write(last)
        ensure
          io.close
        end
      end
      if (response = @async_response)
        @async_response = nil
        response << last
        response.done
      end
    rescue StandardError
      # The peer may be gone.
      begin
        @io&.close
      rescue StandardError
        nil
      end
      @io = nil
      @async_response = nil
    end
  end
end
