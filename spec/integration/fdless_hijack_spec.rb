# frozen_string_literal: true

require "rack"
require "securerandom"
require "stringio"

# A hijack whose IO has no socket descriptor (test doubles such as
# rack-test's, server wrappers, an IO over a pipe) gets the same answer as a
# socket, for every transport, served from Ruby: never a 500.
# What a Rack test double hands out: writable, closable, no descriptor.
class FdlessIO
  def initialize
    @out = +""
    @lock = Mutex.new
    @closed = false
  end

  def write(bytes)
    raise IOError, "closed stream" if @closed

    @lock.synchronize { @out << bytes }
    bytes.bytesize
  end

  def close
    @closed = true
  end

  def closed?
    @closed
  end

  def written
    @lock.synchronize { @out.dup }
  end
end

# The pipe's read end, drained by a thread (the middleware writes to the other end).
class PipeIO
  attr_reader :writer

  def initialize
    @reader, @writer = IO.pipe
    @out = +""
    @lock = Mutex.new
    @thread = Thread.new do
      while (chunk = @reader.readpartial(65_536))
        @lock.synchronize { @out << chunk }
      end
    rescue IOError
      nil
    end
  end

  def closed?
    @writer.closed?
  end

  def written
    @lock.synchronize { @out.dup }
  end
end

RSpec.describe "Hijacked IOs without a socket descriptor" do
  let(:interval) { 600 }
  let(:b) { new_bus(long_polling_interval: interval) }
  let(:middleware) { MessageBus::Rack::Middleware.new(->(_) { [200, {}, ["app"]] }, message_bus: b) }

  after { middleware.stop_listener }

  def env_for(body, io:, query: "", headers: {})
    env = Rack::MockRequest.env_for("/message-bus/#{SecureRandom.hex(8)}/poll?#{query}",
                                    method: "POST", input: body,
                                    "CONTENT_TYPE" => "application/x-www-form-urlencoded")
    env["SERVER_PROTOCOL"] = "HTTP/1.1"
    env["rack.hijack?"] = true
    env["rack.hijack"] = -> { env["rack.hijack_io"] = io }
    env.merge(headers)
  end

  def io_of(kind)
    kind == :pipe ? PipeIO.new : FdlessIO.new
  end

  def target(io)
    io.respond_to?(:writer) ? io.writer : io
  end

  %i[fdless pipe].each do |kind|
    context "(#{kind})" do
      it "streams: head and empty first chunk, live messages, the close output at the timeout" do
        io = io_of(kind)
        status, = middleware.call(env_for("%2Fs=", io: target(io)))
        expect(status).to eq(418)
        wait_for(message: "the first chunk") { io.written.include?("7\r\n[]\r\n|\r\n\r\n") }
        expect(io.written).to start_with("HTTP/1.1 200 OK\r\n").and include("transfer-encoding: chunked\r\n")
        b.publish("/s", "live")
        wait_for(message: "the live message") { io.written.include?('"data":"live"') }
        wait_for(timeout: 10, message: "the close at the timeout") { io.closed? }
        wait_for(message: "the last bytes") { io.written.end_with?("7\r\n[]\r\n|\r\n\r\n0\r\n\r\n") }
      end

      it "streams the backlog as the first chunk" do
        id = b.publish("/s", "stored")
        io = io_of(kind)
        middleware.call(env_for("%2Fs=#{id - 1}", io: target(io)))
        wait_for(message: "the backlog chunk") { io.written.include?('"data":"stored"') }
      end

      it "long-polls without chunking: one message, then a complete response" do
        io = io_of(kind)
        status, = middleware.call(env_for("%2Fn=", io: target(io), headers: { "HTTP_DONT_CHUNK" => "1" }))
        expect(status).to eq(418)
        id = b.publish("/n", "one")
        wait_for(message: "the response") { io.closed? && io.written.end_with?('"data":"one"}]') }
        body = %([{"global_id":#{b.backlog('/n').last.global_id},"message_id":#{id},"channel":"/n","data":"one"}])
        expect(io.written).to start_with("HTTP/1.1 200 OK\r\n")
          .and include("content-type: application/json; charset=utf-8\r\ncontent-length: #{body.bytesize}\r\n\r\n#{body}")
      end

      it "answers a non-chunked poll with a backlog at once, and polling (dlp=t) as a normal response" do
        id = b.publish("/p", "stored")
        io = io_of(kind)
        status, _, body = middleware.call(env_for("%2Fp=0", io: target(io), headers: { "HTTP_DONT_CHUNK" => "1" }))
        expect([status, JSON.parse(body.join).map { |m| m["data"] }]).to eq([200, ["stored"]])
        status, _, body = middleware.call(env_for("%2Fp=#{id}", io: target(io), query: "dlp=t"))
        expect([status, body.join]).to eq([200, "[]"])
        expect(io.written).to eq("")
      end
    end
  end

  def stream_env(path, io:, hijack: true)
    env = Rack::MockRequest.env_for(path, method: "GET", "HTTP_HOST" => "example.org",
                                          "HTTP_UPGRADE" => "websocket", "HTTP_CONNECTION" => "Upgrade",
                                          "HTTP_SEC_WEBSOCKET_VERSION" => "13",
                                          "HTTP_SEC_WEBSOCKET_KEY" => "dGhlIHNhbXBsZSBub25jZQ==")
    if hijack
      env["rack.hijack?"] = true
      env["rack.hijack"] = -> { env["rack.hijack_io"] = io }
    end
    env
  end

  %i[fdless pipe].each do |kind|
    it "refuses a WebSocket or an event stream on a hijacked IO without a socket (#{kind}) with a 400 written on it" do
      %w[ws sse].each do |route|
        io = io_of(kind)
        status, = middleware.call(stream_env("/message-bus/#{SecureRandom.hex(4)}/#{route}?%2Fa=-1", io: target(io)))
        expect(status).to eq(418)
        wait_for(message: "the refusal") { io.written.include?("long poll instead") }
        expect(io.written).to start_with("HTTP/1.1 400 Bad Request\r\n")
        wait_for(message: "the io closed") { io.closed? }
      end
    end
  end

  it "refuses a WebSocket with a 400 when the server cannot hijack, never a 500" do
    status, _, body = middleware.call(stream_env("/message-bus/nohijack/ws", io: nil, hijack: false))
    expect([status, body.join])
      .to eq([400, "WebSocket needs a server that can hand its socket over (Rack hijack): long poll instead"])
    b.rack_hijack_enabled = false
    status, = middleware.call(stream_env("/message-bus/nohijack/sse?%2Fa=-1", io: FdlessIO.new))
    expect(status).to eq(400)
  end

  it "announces the Ruby path once" do
    2.times { middleware.call(env_for("%2Fa=", io: FdlessIO.new)) }
    expect(log_output.string.scan("has no socket descriptor").length).to eq(1)
  end
end
