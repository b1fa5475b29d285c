# frozen_string_literal: true

# Hostile raw-socket clients against a real Puma serving the bus: after each
# attack, a normal poll must still be answered promptly. One server for the
# whole group (started once) keeps the suite fast.
RSpec.describe "Raw-socket abuse of the long-poll endpoint", :integration do
  include ServerHelpers

  before(:all) do
    @server = start_server(threads: 4, env: { "MB_LONG_POLLING_INTERVAL" => "1000" })
    @servers.delete(@server) # not stopped after each example
  end

  after(:all) { stop_server(@server) }

  let(:server) { @server }

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  def status_of(raw) = raw[%r{\AHTTP/1\.[01] (\d+)}, 1].to_i

  # A plain poll (`?dlp=t`) must be answered 200 within `within` seconds.
  def expect_serving(within: 1.5)
    started = now
    raw = read_all(open_request(server.port, poll_request("probe", form([["/probe", "-1"]]), query: "dlp=t")),
                   timeout: within + 5)
    expect(status_of(raw)).to eq(200)
    expect(raw).to include(%("channel":"/__status"))
    expect(now - started).to be < within
  end

  it "serves other clients promptly while one sends its headers a byte every 100 ms" do
    slow = TCPSocket.new("127.0.0.1", server.port)
    request = poll_request("slow", form([["/s", "-1"]]), query: "dlp=t")
    writer = Thread.new do
      request.each_char.first(35).each do |c| # ~3.5 s, headers never complete
        slow.write(c)
        sleep 0.1
      end
    rescue SystemCallError, IOError
      nil
    end
    latencies = []
    while writer.alive?
      started = now
      expect_serving(within: 1.0)
      latencies << now - started
      sleep 0.2
    end
    warn format("  slowloris: %<n>d polls served meanwhile, max %<max>.0f ms", n: latencies.size, max: latencies.max * 1000)
    expect(latencies.size).to be >= 5
    expect(latencies.max).to be < 1.0
    slow.close
    expect_serving
  end

  it "survives a body shorter than its Content-Length (the client then closes)" do
    3.times do
      s = TCPSocket.new("127.0.0.1", server.port)
      s.write("POST /message-bus/short/poll?dlp=t HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n" \
              "Content-Length: 1000\r\n\r\n%2Fa=1")
      sleep 0.1
      s.close
    end
    expect_serving
  end

  # Puma 5.6 hands bytes pipelined after the body to the app in rack.input.
  it "reads at most Content-Length bytes of the body (D4)" do
    body = form([["/pipelined", "-1"]])
    request = "#{poll_request('pipe', body, query: 'dlp=t')}GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = read_all(open_request(server.port, request))
    expect(status_of(raw)).to eq(200), raw
    status = { "global_id" => -1, "message_id" => -1, "channel" => "/__status", "data" => { "/pipelined" => 0 } }
    expect(JSON.parse(raw.split("\r\n\r\n", 2).last)).to eq([status])
  end

  it "rejects channel names that are not UTF-8 with 400 (form and JSON)" do
    raw = read_all(open_request(server.port, poll_request("u8", "%FF%FE%2Fx=1", query: "dlp=t")))
    expect(status_of(raw)).to eq(400)
    json = "{\"/\xFF\":1}".b
    raw = read_all(open_request(server.port, poll_request("u8", json, query: "dlp=t",
                                                                      headers: { "Content-Type" => "application/json" })))
    expect(status_of(raw)).to eq(400)
    expect_serving
  end

  it "answers 413 to 100,000 channels in one poll, in bounded time" do
    body = form(Array.new(100_000) { |i| ["/c#{i}", "0"] })
    started = now
    raw = read_all(open_request(server.port, poll_request("many", body, query: "dlp=t")), timeout: 10)
    expect(status_of(raw)).to eq(413)
    expect(now - started).to be < 5
    # Under the byte limit but over the channel limit: 413 as well.
    raw = read_all(open_request(server.port, poll_request("many", form(Array.new(1100) { |i| ["/#{i}", ""] }),
                                                          query: "dlp=t")))
    expect(status_of(raw)).to eq(413)
    expect_serving
  end

  it "answers 413 to 1,001 channels (the limit is 1,000)" do
    raw = read_all(open_request(server.port, poll_request("many", form(Array.new(1001) { |i| ["/#{i}", ""] }),
                                                          query: "dlp=t")))
    expect(status_of(raw)).to eq(413)
  end

  it "answers 4xx (not 500) to invalid UTF-8 in a last id or a raw form body" do
    statuses = ["%2Fa=%FF", "%2Fa=1&\xFF=1".b].map do |body|
      status_of(read_all(open_request(server.port, poll_request("u8", body, query: "dlp=t"))))
    end
    expect(statuses).to all(be_between(400, 499))
  end

  it "answers 4xx or clamps (not 500) an infinite JSON __seq" do
    request = poll_request("inf", %({"/a":1,"__seq":1e400}), query: "dlp=t", headers: { "Content-Type" => "application/json" })
    raw = read_all(open_request(server.port, request))
    expect(status_of(raw)).to be < 500
  end

  # Puma reads (buffers to a tempfile) the whole body before calling the app,
  # so the middleware's early Content-Length check cannot stop the upload;
  # this test bounds the time and records how much was sent (see RELIABILITY.md).
  it "answers 413 to a 100 MB body within ~10 s" do
    total = 100 * 1024 * 1024
    s = TCPSocket.new("127.0.0.1", server.port)
    s.write("POST /message-bus/big/poll?dlp=t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" \
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: #{total}\r\n\r\n")
    sent = 0
    started = now
    chunk = "a" * 65_536
    writer = Thread.new do
      while sent < total && now - started < 10
        n = s.write_nonblock(chunk, exception: false)
        n == :wait_writable ? s.wait_writable(0.1) : sent += n
      end
    rescue SystemCallError, IOError
      nil
    end
    raw = +""
    begin
      raw << s.readpartial(65_536) while s.wait_readable(12 - (now - started))
    rescue SystemCallError, IOError # EOFError is an IOError
      nil
    end
    s.close
    writer.join
    elapsed = now - started
    warn format("  100 MB body: status %<status>d after %<t>.2f s, %<mb>.1f MB sent", status: status_of(raw), t: elapsed,
                                                                                      mb: sent / 1_048_576.0)
    expect(status_of(raw)).to eq(413)
    expect(elapsed).to be < 11
    expect_serving
  end

  it "accepts and clamps negative and huge __seq and last ids (never a 500)" do
    values = ["-1", "-#{'9' * 30}", "9" * 30, "-9223372036854775809", "9223372036854775808", "1e400", "0x10", "-0"]
    values.each do |v|
      [nil, { "Dont-Chunk" => "1" }].each do |extra|
        query = extra ? nil : "dlp=t"
        raw = read_all(open_request(server.port, poll_request("seq#{v.size}", form([["/q", "-1"], ["__seq", v]]),
                                                              query: query, headers: extra || {})), timeout: 5)
        expect(status_of(raw)).to eq(200), "__seq=#{v}: #{raw[0, 200]}"
        raw = read_all(open_request(server.port, poll_request("id", form([["/q", v]]), query: "dlp=t")))
        expect([200, 400]).to include(status_of(raw)), "/q=#{v}: #{raw[0, 200]}"
      end
    end
    json = %({"/q":-1,"__seq":1#{'0' * 400}})
    raw = read_all(open_request(server.port,
                                poll_request("js", json, query: "dlp=t", headers: { "Content-Type" => "application/json" })))
    expect(status_of(raw)).to eq(200)
    expect_serving
  end
end
