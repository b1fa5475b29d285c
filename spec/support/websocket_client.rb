# frozen_string_literal: true

require "socket"
require "securerandom"
require "base64"
require "json"

# A small RFC 6455 client over a raw TCP socket, for integration specs: it
# sends masked frames (or deliberately broken ones) and reads the server's
# frames with deadlines.
class WebSocketClient
  Frame = Struct.new(:fin, :opcode, :payload) do
    def text? = opcode == 1
    def close? = opcode == 8
    def ping? = opcode == 9
    def close_code = payload.byteslice(0, 2).unpack1("n")
    def close_reason = payload.byteslice(2..).force_encoding(Encoding::UTF_8)
    def json = JSON.parse(payload)
  end

  attr_reader :socket, :response

  # Opens the connection and sends the upgrade request; `handshake: false`
  # leaves reading the answer to the caller (`read_response`).
  def self.open(port, client_id, headers: {}, route: "/message-bus/", key: SecureRandom.random_bytes(16), handshake: true)
    client = new(TCPSocket.new("127.0.0.1", port))
    client.send_upgrade("#{route}#{client_id}/ws", headers, key)
    client.read_response if handshake
    client
  end

  def initialize(socket)
    @socket = socket
    @buffer = +"".b
  end

  def send_upgrade(path, headers, key)
    lines = ["GET #{path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Version: 13"]
    lines << "Sec-WebSocket-Key: #{Base64.strict_encode64(key)}" if key
    headers.each { |name, value| lines << "#{name}: #{value}" }
    @key = key && Base64.strict_encode64(key)
    @socket.write("#{lines.join("\r\n")}\r\n\r\n")
  end

  # The HTTP head (and, for a refusal, its body); raises unless it is a 101
  # when `expect_upgrade`.
  def read_response(expect_upgrade: true, timeout: 10)
    fill(timeout) { @buffer.include?("\r\n\r\n") }
    head, rest = @buffer.split("\r\n\r\n", 2)
    @buffer = rest.to_s.b
    @response = head
    status = head[%r{\AHTTP/1\.1 (\d+)}, 1].to_i
    raise "no upgrade: #{head.inspect} #{@buffer.inspect}" if expect_upgrade && status != 101

    status
  end

  def body_after_refusal(timeout: 5)
    data = @buffer.dup
    deadline = now + timeout
    loop do
      remaining = deadline - now
      break if remaining <= 0 || !@socket.wait_readable(remaining)

      chunk = @socket.read_nonblock(65_536, exception: false)
      break if chunk.nil?

      data << chunk unless chunk == :wait_readable
    end
    data.force_encoding(Encoding::UTF_8)
  end

  def accept_header = @response[/^sec-websocket-accept: (.*)$/i, 1]&.strip
  def expected_accept = Base64.strict_encode64(Digest::SHA1.digest("#{@key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))

  # --- sending ----------------------------------------------------------

  def frame_bytes(opcode, payload, fin: true, mask: true, rsv: 0)
    payload = payload.b
    out = [(fin ? 0x80 : 0) | rsv | opcode].pack("C")
    mask_bit = mask ? 0x80 : 0
    len = payload.bytesize
    out << if len < 126
             [mask_bit | len].pack("C")
           elsif len < 65_536
             [mask_bit | 126, len].pack("Cn")
           else
             [mask_bit | 127, len].pack("CQ>")
           end
    return out + payload unless mask

    key = SecureRandom.random_bytes(4)
    masked = payload.bytes.each_with_index.map { |b, i| b ^ key.getbyte(i % 4) }.pack("C*")
    out + key + masked
  end

  def send_frame(opcode, payload, **opts)
    @socket.write(frame_bytes(opcode, payload, **opts))
  end

  def send_text(text) = send_frame(1, text)
  def send_json(object) = send_text(JSON.generate(object))
  def subscribe(positions) = send_json("subscribe" => positions)
  def unsubscribe(channels) = send_json("unsubscribe" => channels)
  def ping(data = "") = send_frame(9, data)
  def pong(data = "") = send_frame(10, data)
  def close(code = 1000, reason = "") = send_frame(8, [code].pack("n") + reason)

  # --- reading ----------------------------------------------------------

  # The next frame, or raises after the deadline. `pongs: true` answers the
  # server's pings (as a browser does) and skips them.
  # The frame `[{"channel": "/__epoch", ...}]` the server opens with is
  # recorded (`epoch`) and skipped unless `epoch_frame: true`.
  def read_frame(timeout: 10, pongs: true, epoch_frame: false)
    loop do
      frame = parse_frame
      unless frame
        fill(timeout) { complete_frame? }
        next
      end
      if frame.ping? && pongs
        pong(frame.payload)
        next
      end
      next if !epoch_frame && epoch_frame?(frame)

      return frame
    end
  end

  # The storage epoch the server named in its first frame (issue 16), if any.
  attr_reader :epoch

  def epoch_frame?(frame)
    return false unless frame.text?

    batch = frame.json
    return false unless batch.is_a?(Array) && batch.length == 1 && batch[0].is_a?(Hash) && batch[0]["channel"] == "/__epoch"

    @epoch = batch[0]["data"]
    true
  rescue JSON::ParserError
    false
  end

  # The messages of text frames until `block` is true of all so far.
  def messages_until(timeout: 10, &block)
    messages = []
    deadline = now + timeout
    until block.call(messages)
      frame = read_frame(timeout: [deadline - now, 0.01].max)
      raise "closed (#{frame.close_code} #{frame.close_reason}) after #{messages.inspect}" if frame.close?

      messages.concat(frame.json) if frame.text?
    end
    messages
  end

  # The close frame the server sends (skipping text frames), and whether
  # the server then ended the TCP connection.
  def read_close(timeout: 10)
    loop do
      frame = read_frame(timeout: timeout)
      return frame if frame.close?
    end
  end

  def eof?(timeout: 5)
    deadline = now + timeout
    loop do
      remaining = deadline - now
      return false if remaining <= 0
      return false unless @socket.wait_readable(remaining)

      chunk = @socket.read_nonblock(65_536, exception: false)
      return true if chunk.nil?
    end
  rescue Errno::ECONNRESET
    true
  end

  def close_socket
    @socket.close unless @socket.closed?
  end

  private

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  def fill(timeout)
    deadline = now + timeout
    until yield
      remaining = deadline - now
      raise "timed out reading from the server; have #{@buffer.inspect[0, 300]}" if remaining <= 0
      next unless @socket.wait_readable(remaining)

      chunk = @socket.read_nonblock(65_536, exception: false)
      raise EOFError, "the server closed the connection; have #{@buffer.inspect[0, 300]}" if chunk.nil?

      @buffer << chunk unless chunk == :wait_readable
    end
  end

  def complete_frame?
    !header_length.nil? && @buffer.bytesize >= header_length[0] + header_length[1]
  end

  # [header bytes, payload bytes] of the frame at the start of the buffer.
  def header_length
    return nil if @buffer.bytesize < 2

    len = @buffer.getbyte(1) & 0x7f
    case len
    when 126 then @buffer.bytesize >= 4 ? [4, @buffer.byteslice(2, 2).unpack1("n")] : nil
    when 127 then @buffer.bytesize >= 10 ? [10, @buffer.byteslice(2, 8).unpack1("Q>")] : nil
    else [2, len]
    end
  end

  def parse_frame
    return nil unless complete_frame?

    head, len = header_length
    first = @buffer.getbyte(0)
    payload = @buffer.byteslice(head, len)
    @buffer = @buffer.byteslice((head + len)..).to_s.b
    Frame.new(first & 0x80 != 0, first & 0x0f, payload)
  end
end
