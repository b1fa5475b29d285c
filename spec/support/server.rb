# frozen_string_literal: true

require "socket"
require "tmpdir"
require "uri"
require "json"

# Runs a real app server on a free port for integration specs, and speaks raw
# HTTP to it. Every server is stopped by pid after the example.
module ServerHelpers
  APP = File.expand_path("../apps/bus_app.ru", __dir__)
  Server = Struct.new(:pid, :port, :log)

  def free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end

  # `port:` reuses a port (e.g. to restart a server where clients expect it).
  # `flags:` more command-line options (`--preload`, `--fork-worker=0`, a
  # configuration file: `-C` for Puma, whose clusters default to
  # apps/puma_cluster.rb, `-c` for Unicorn).
  def start_server(kind: :puma, threads: 4, workers: 0, env: {}, app: APP, port: nil, flags: [])
    port ||= free_port
    log = File.join(Dir.tmpdir, "mb-server-#{port}.log")
    cmd =
      case kind
      when :puma
        args = ["puma", "-b", "tcp://127.0.0.1:#{port}", "-t", "#{threads}:#{threads}", "-e", "test"]
        args += ["-w", workers.to_s] if workers.positive?
        args += ["-C", File.expand_path("../apps/puma_cluster.rb", __dir__)] if workers.positive? && !flags.include?("-C")
        args + flags + [app]
      when :unicorn then ["unicorn", "-l", "127.0.0.1:#{port}", "-E", "none", *flags, app]
      when :thin then ["thin", "-a", "127.0.0.1", "-p", port.to_s, "-R", app, "start"]
      end
    full_env = { "MESSAGE_BUS_BACKEND" => SpecHelpers.backend_name.to_s, "MB_RESET" => "1" }.merge(env)
    pid = Process.spawn(full_env, *cmd, out: log, err: log, pgroup: true)
    server = Server.new(pid, port, log)
    (@servers ||= []) << server
    wait_for(timeout: 20, message: "#{kind} on port #{port} (log: #{log})") { server_up?(port) }
    server
  end

  def stop_server(server)
    return unless server.pid

    begin
      Process.kill(:TERM, -server.pid)
    rescue Errno::ESRCH
      nil
    end
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    until Process.waitpid(server.pid, Process::WNOHANG)
      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        Process.kill(:KILL, -server.pid)
        Process.waitpid(server.pid)
        break
      end
      sleep 0.02
    end
    server.pid = nil
  rescue Errno::ECHILD, Errno::ESRCH
    server.pid = nil
  end

  def server_up?(port)
    TCPSocket.new("127.0.0.1", port).close
    true
  rescue SystemCallError
    false
  end

  # --- raw HTTP --------------------------------------------------------------

  def poll_request(client_id, body, query: nil, headers: {}, version: "1.1", method: "POST", route: "/message-bus/")
    path = "#{route}#{client_id}/poll#{"?#{query}" if query}"
    lines = ["#{method} #{path} HTTP/#{version}", "Host: 127.0.0.1", "Connection: close"]
    headers = { "Content-Type" => "application/x-www-form-urlencoded" }.merge(headers)
    headers.each { |k, v| lines << "#{k}: #{v}" }
    lines << "Content-Length: #{body.bytesize}"
    "#{lines.join("\r\n")}\r\n\r\n#{body}"
  end

  def form(pairs)
    URI.encode_www_form(pairs)
  end

  def open_request(port, request)
    socket = TCPSocket.new("127.0.0.1", port)
    socket.write(request)
    socket
  end

  # Reads until the server closes the connection (or the deadline passes).
  def read_all(socket, timeout: 10)
    data = +""
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      remaining = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raise "timed out reading the response; got #{data.inspect}" if remaining <= 0
      next unless socket.wait_readable(remaining)

      chunk = socket.read_nonblock(65_536, exception: false)
      break if chunk.nil?
      next if chunk == :wait_readable

      data << chunk
    end
    data
  ensure
    socket.close
  end

  # Reads until `pattern` is in what arrived so far.
  def read_until(socket, pattern, buffer = +"", timeout: 10)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    until buffer.match?(pattern)
      remaining = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raise "timed out waiting for #{pattern.inspect}; got #{buffer.inspect}" if remaining <= 0
      next unless socket.wait_readable(remaining)

      chunk = socket.read_nonblock(65_536, exception: false)
      raise "connection closed waiting for #{pattern.inspect}; got #{buffer.inspect}" if chunk.nil?

      buffer << chunk unless chunk == :wait_readable
    end
    buffer
  end

  def http(port, method, path, body = nil, headers = {})
    request = ["#{method} #{path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    headers.each { |k, v| request << "#{k}: #{v}" }
    request << "Content-Length: #{body.to_s.bytesize}"
    raw = read_all(open_request(port, "#{request.join("\r\n")}\r\n\r\n#{body}"))
    head, payload = raw.split("\r\n\r\n", 2)
    status = head[%r{\AHTTP/1\.[01] (\d+)}, 1].to_i
    [status, head, payload]
  end

  # Publishes inside the server process; returns the message id.
  # `count:` (not a publish option) publishes the same message that many times in one request.
  def publish_via(server, channel, data, opts = {})
    opts = opts.dup
    count = opts.delete(:count) || 1
    status, _, body = http(server.port, "POST", "/publish",
                           JSON.generate(channel: channel, data: data, opts: opts, count: count),
                           "Content-Type" => "application/json")
    raise "publish failed: #{status} #{body}" unless status == 200

    JSON.parse(body.split("\r\n").find { |l| l.start_with?("[", "{") || l =~ /\A\d+\z/ } || body)
  end

  # The JSON arrays of a de-chunked streamed body.
  def stream_payloads(raw)
    _, body = raw.split("\r\n\r\n", 2)
    dechunked = +""
    rest = body.to_s
    while (m = rest.match(/\A([0-9a-f]+)\r\n/))
      size = m[1].to_i(16)
      break if size.zero?

      dechunked << rest[m[0].length, size]
      rest = rest[(m[0].length + size + 2)..]
    end
    dechunked.split("\r\n|\r\n").map { |j| JSON.parse(j) }
  end

  # The JSON records of a (possibly cut) chunked body, complete chunks only.
  def complete_records(raw)
    body = raw.split("\r\n\r\n", 2)[1].to_s
    text = +""
    while (m = body.match(/\A(\h+)\r\n/))
      size = m[1].to_i(16)
      break if size.zero? || body.bytesize < m[0].length + size + 2

      text << body.byteslice(m[0].length, size)
      body = body.byteslice((m[0].length + size + 2)..).to_s
    end
    text.split("\r\n|\r\n").filter_map do |json|
      JSON.parse(json)
    rescue JSON::ParserError
      nil
    end.flatten
  end

  # What a streamed long poll from now sends first: the head, then `[]` and the separator.
  FIRST_CHUNK = /\r\n\r\n7\r\n\[\]\r\n\|\r\n\r\n/

  # A chunked long poll from now on `channel` to `srv`, read up to its first chunk.
  def park_streaming(client_id, channel, srv:, seq: nil, socket: nil)
    pairs = [[channel, ""]]
    pairs << ["__seq", seq.to_s] if seq
    socket ||= TCPSocket.new("127.0.0.1", srv.port)
    socket.write(poll_request(client_id, form(pairs)))
    read_until(socket, FIRST_CHUNK)
    socket
  end

  # A client socket with a small receive buffer: it holds little of what the
  # server writes before the server has to keep the rest.
  def small_window_socket(port)
    socket = Socket.new(:INET, :STREAM)
    socket.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
    socket.connect(Socket.sockaddr_in(port, "127.0.0.1"))
    socket
  end

  # Closes with a reset instead of a FIN.
  def reset(socket)
    socket.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
    socket.close
  end

  def self.included(base)
    base.after { (@servers || []).each { |s| stop_server(s) } }
  end
end
