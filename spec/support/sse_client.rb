# frozen_string_literal: true

require "socket"
require "json"

# A small Server-Sent Events client over a raw TCP socket, for integration
# specs: it sends `GET <route><client_id>/sse?<query>` and reads complete
# events (comments such as keepalives skipped) with deadlines.
class SseClient
  attr_reader :socket, :buffer

  def self.request(client_id, query, headers = {}, route: "/message-bus/")
    lines = ["GET #{route}#{client_id}/sse?#{query} HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"]
    headers.each { |name, value| lines << "#{name}: #{value}" }
    "#{lines.join("\r\n")}\r\n\r\n"
  end

  def self.open(port, client_id, query, headers: {}, route: "/message-bus/")
    socket = TCPSocket.new("127.0.0.1", port)
    socket.write(request(client_id, query, headers, route: route))
    new(socket)
  end

  # The complete events in `buffer` after the head, as [id, data] pairs
  # (data: the parsed JSON array); a block of comment lines only (a
  # keepalive) is no event, an unfinished last block is left out.
  def self.events(buffer)
    body = buffer.split("\r\n\r\n", 2)[1].to_s
    complete = body[0, (body.rindex("\n\n") || -2) + 2]
    complete.split("\n\n").filter_map do |block|
      lines = block.lines(chomp: true)
      next if lines.all? { |l| l.start_with?(":") }

      id = lines.find { |l| l.start_with?("id: ") }&.delete_prefix("id: ")
      data = lines.select { |l| l.start_with?("data: ") }.map { |l| l.delete_prefix("data: ") }.join("\n")
      [id, JSON.parse(data)]
    end
  end

  def initialize(socket)
    @socket = socket
    @buffer = +"".b
  end

  def head = @buffer.include?("\r\n\r\n") ? @buffer.split("\r\n\r\n", 2)[0] : nil
  def events = self.class.events(@buffer)

  # Reads until the block, given the events so far, is true; returns them.
  # Raises when the deadline passes, on a refusal, or when the server
  # closes the stream first.
  def events_until(timeout: 10)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      if head
        raise "no event stream: #{@buffer.inspect}" unless head.start_with?("HTTP/1.1 200 ")

        got = events
        return got if yield(got)
      end
      remaining = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raise "timed out waiting for SSE events; got #{@buffer.inspect}" if remaining <= 0
      next unless @socket.wait_readable(remaining)

      chunk = @socket.read_nonblock(65_536, exception: false)
      raise "the server closed the event stream; got #{@buffer.inspect}" if chunk.nil?

      @buffer << chunk unless chunk == :wait_readable
    end
  end

  def close
    @socket.close unless @socket.closed?
  end
end
