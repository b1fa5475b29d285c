# frozen_string_literal: true

require "json"
require "net/http"
require "securerandom"
require "uri"
require "message_bus/http_client/channel"

module MessageBus
  # A Ruby client for the message bus HTTP protocol (COMPAT.md §8): one
  # background thread long-polls (or polls) `<base_url>/message-bus/<id>/poll`
  # and calls the subscribed blocks with `(data, message_id, global_id)`.
  #
  # Differences from the reference client (§9 Q56, all client-side): the base
  # URL's path is honoured, `dlp=t` is sent when long polling is disabled,
  # `__seq` is sent, and streamed records split across network reads (or
  # several in one read) are reassembled and `||` escapes are undone.
  #
  # The storage epoch (X-MessageBus-Epoch, see MessageBus::Instance#epoch):
  # the client remembers the first one it sees; a response with another one
  # means the server's storage was reset (its ids restarted), so the
  # response is dropped, every subscription that had a position restarts
  # from 0 (every message still retained in the new storage comes again),
  # and the `on_reset` block is called once per subscribed channel.
  class HTTPClient
    class InvalidChannel < StandardError; end
    class MissingBlock < StandardError; end

    VERSION = "1.0.0.pre1"
    STOPPED = 0
    STARTED = 1
    STATUS_CHANNEL = "/__status"
    EPOCH_HEADER = "x-messagebus-epoch"
    SEPARATOR = "\r\n|\r\n"
    ESCAPED_SEPARATOR = "\r\n||\r\n"

    Stats = Struct.new(:failed, :success)
    private_constant :Stats

    attr_accessor :enable_long_polling, :enable_chunked_encoding, :min_poll_interval, :max_poll_interval,
                  :background_callback_interval
    attr_reader :channels, :stats, :status, :client_id, :epoch

    def initialize(base_url, enable_long_polling: true, enable_chunked_encoding: true, min_poll_interval: 0.1,
                   max_poll_interval: 180, background_callback_interval: 60, headers: {})
      @uri = URI(base_url)
      @enable_long_polling = enable_long_polling
      @enable_chunked_encoding = enable_chunked_encoding
      @min_poll_interval = min_poll_interval
      @max_poll_interval = max_poll_interval
      @background_callback_interval = background_callback_interval
      @headers = headers
      @client_id = SecureRandom.hex(16)
      @channels = {}
      @stats = Stats.new(0, 0)
      @status = STOPPED
      @seq = 0
      @lock = Mutex.new
      @wake = ConditionVariable.new
      @thread = nil
      @http = nil
      @epoch = nil
      @on_reset = nil
    end

    # Registers the block called with each subscribed channel's name when
    # the server's storage epoch changes (its backlog was reset: refetch
    # what depends on it). Called on the polling thread, after positions
    # were reset to 0 and before the messages of the new storage arrive.
    def on_reset(&block)
      raise MissingBlock unless block

      @on_reset = block
      self
    end

    # Starts the polling thread (idempotent).
    def start
      @lock.synchronize do
        return self if @status == STARTED && @thread&.alive?

        @status = STARTED
        @thread = Thread.new { run }
        @thread.name = "MessageBus::HTTPClient"
        @thread.report_on_exception = false
      end
      self
    end

    # Stops polling: aborts the request in flight and ends the thread.
    def stop
      thread = nil
      @lock.synchronize do
        @status = STOPPED
        thread = @thread
        @thread = nil
        @wake.broadcast
        abort_request
      end
      thread.join(5) if thread && thread != Thread.current
      self
    end

    def subscribe(channel, last_message_id: nil, &callback)
      raise InvalidChannel unless channel.to_s.start_with?("/")
      raise MissingBlock unless callback

      last_message_id = -1 unless last_message_id.is_a?(Integer)
      @lock.synchronize do
        entry = (@channels[channel] ||= Channel.new(last_message_id: last_message_id))
        entry.callbacks.push(callback)
        # A new subscription must be part of the next request: end the one in flight.
        abort_request
      end
      start if @status == STOPPED
      @status
    end

    def unsubscribe(channel, &callback)
      @lock.synchronize do
        if callback
          @channels[channel]&.callbacks&.delete(callback)
          @channels.delete(channel) if @channels[channel]&.callbacks&.empty?
        else
          @channels.delete(channel)
        end
      end
      @channels.empty? ? stop : @lock.synchronize { abort_request }
      @status
    end

    private

    def run
      while @status == STARTED
        begin
          unless @channels.empty?
            poll
            @stats.success += 1
            @stats.failed = 0
          end
        rescue StandardError => e
          unless @status == STOPPED || e.is_a?(Aborted)
            @stats.failed += 1
            warn("MessageBus::HTTPClient: #{e.class}: #{e.message}")
          end
        end
        pause(interval)
      end
    end

    # Raised in the polling thread when a request is ended on purpose.
    class Aborted < StandardError; end
    private_constant :Aborted

    def interval
      return @background_callback_interval unless @enable_long_polling
      return @min_poll_interval unless @stats.failed > 2

      (@min_poll_interval * (2**@stats.failed)).clamp(@min_poll_interval, @max_poll_interval)
    end

    def pause(seconds)
      @lock.synchronize do
        @wake.wait(@lock, seconds) if @status == STARTED && !@skip_pause
        @skip_pause = false
      end
    end

    def abort_request
      @skip_pause = true
      http = @http
      return unless http

      @aborted = true
      finish_quietly(http)
    end

    # Closes the connection; one already gone is not an error.
    def finish_quietly(http)
      http.finish if http.started?
    rescue IOError, SystemCallError
      nil
    end

    def poll
      http = Net::HTTP.new(@uri.host, @uri.port)
      http.use_ssl = @uri.scheme == "https"
      http.open_timeout = 10
      # The server holds a long poll for its long_polling_interval (25 s by default).
      http.read_timeout = @enable_long_polling ? 120 : 30
      request = build_request
      @lock.synchronize do
        return if @status == STOPPED

        @aborted = false
        @http = http
      end
      # Connect outside the lock so that `stop` never waits for a slow connect.
      http.start
      @lock.synchronize { raise Aborted if @aborted }
      begin
        http.request(request) { |response| read_response(response) }
      rescue IOError, SystemCallError, Net::ReadTimeout
        raise Aborted if @aborted

        raise
      end
    ensure
      @lock.synchronize do
        if @http.equal?(http)
          @http = nil
          finish_quietly(http)
        end
      end
    end

    def build_request
      path = "#{@uri.path.to_s.sub(%r{/*\z}, '')}/message-bus/#{@client_id}/poll"
      path += "?dlp=t" unless @enable_long_polling
      request = Net::HTTP::Post.new(path)
      request["Content-Type"] = "application/json"
      request["X-Silence-logger"] = "true"
      request["Dont-Chunk"] = "true" if !@enable_long_polling || !@enable_chunked_encoding
      @headers.each { |name, value| request[name] = value }
      body = @lock.synchronize { @channels.transform_values(&:last_message_id) }
      @seq += 1
      request.body = JSON.generate(body.merge("__seq" => @seq))
      request
    end

    def read_response(response)
      raise "unexpected HTTP status #{response.code}" unless response.code == "200"
      # Dropped unread (a streamed answer may stay open): poll again at once.
      raise Aborted if epoch_changed?(response[EPOCH_HEADER])

      if response["content-type"].to_s.start_with?("text/plain")
        buffer = +""
        response.read_body do |chunk|
          buffer << chunk
          while (index = buffer.index(SEPARATOR))
            record = buffer.slice!(0, index + SEPARATOR.length)[0, index]
            handle_messages(JSON.parse(record.gsub(ESCAPED_SEPARATOR, SEPARATOR)))
          end
        end
      else
        handle_messages(JSON.parse(response.read_body))
      end
    end

    # Notes the response's epoch; true if it replaced another one: the
    # response is dropped, positions restart at 0, `on_reset` is called.
    def epoch_changed?(value)
      return false if value.nil? || value.empty?

      previous = @epoch
      @epoch = value
      return false if previous.nil? || previous == value

      names = @lock.synchronize do
        @channels.each_value { |entry| entry.last_message_id = 0 if entry.last_message_id >= 0 }
        @skip_pause = true
        @channels.keys
      end
      names.each do |name|
        @on_reset&.call(name)
      rescue StandardError => e
        warn("MessageBus::HTTPClient: on_reset for #{name}: #{e.class}: #{e.message}")
      end
      true
    end

    def handle_messages(messages)
      messages.each do |message|
        if message["channel"] == STATUS_CHANNEL
          message["data"].each do |name, id|
            entry = @channels[name]
            entry.last_message_id = id if entry
          end
          next
        end

        entry = @channels[message["channel"]]
        next unless entry

        entry.last_message_id = message["message_id"]
        entry.callbacks.each { |callback| callback.call(message["data"], message["message_id"], message["global_id"]) }
      end
    end
  end
end
