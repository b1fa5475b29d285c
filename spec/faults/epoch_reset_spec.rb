# frozen_string_literal: true

require "spec_helper"
require "message_bus/http_client"

# A storage reset while web clients are subscribed (issue 16, the epoch): a
# real Chromium tab (spec/faults/browser_tab.mjs, the browser client from
# assets/) and a MessageBus::HTTPClient, both on a real Puma running
# spec/browser/bus_app.ru, have seen ids 1..6 of two channels; the storage
# is then reset (Redis FLUSHDB, a private redis-server restarted without
# persistence, the PostgreSQL table dropped and recreated) and 8 more
# messages per channel are published: their ids restart at 1 and pass the
# clients' positions. Every client must get every one of them exactly once,
# after the 6 it had, and its reset hook must run once per channel. Without
# the epoch the clients would sit "ahead of the bus" and skip ids 1..6.
#
# Runs on the Redis pass (FLUSHDB, restart) and on the PostgreSQL pass.
EPOCH_TAB = File.expand_path("browser_tab.mjs", __dir__)
EPOCH_APP = File.expand_path("../browser/bus_app.ru", __dir__)
EPOCH_CHANNELS = %w[/epoch/a /epoch/b].freeze
EPOCH_BEFORE = Array.new(6) { |i| "before-#{i + 1}" }.freeze
EPOCH_AFTER = Array.new(8) { |i| "after-#{i + 1}" }.freeze

RSpec.describe "A storage reset seen by a browser and an HTTPClient (the epoch)", :integration do
  include ServerHelpers

  before do
    # bin/setup installs both; a missing one fails the example rather than skipping it.
    raise "needs /usr/bin/chromium and spec/browser/node_modules (bin/setup installs them)" unless
      File.executable?("/usr/bin/chromium") && Dir.exist?(File.expand_path("../browser/node_modules/playwright-core", __dir__))
  end

  after do
    @http_client&.stop
    if @tab
      stdin, _, thread = @tab
      begin
        stdin.puts("quit")
        stdin.close
      rescue IOError, Errno::EPIPE
        nil
      end
      unless thread.join(10)
        Process.kill(:KILL, thread.pid)
        thread.join(5)
      end
    end
    (@servers || []).each { |s| stop_server(s) }
    @redis&.stop
  end

  def start_app(config)
    start_server(app: EPOCH_APP, threads: 8,
                 env: { "MB_BACKEND_CONFIG" => JSON.generate(config), "MB_LONG_POLLING_INTERVAL" => "5000",
                        "MB_RESET" => "1" })
  end

  def open_tab(server)
    stdin, stdout, thread = Open3.popen2("node", EPOCH_TAB, "http://127.0.0.1:#{server.port}", EPOCH_CHANNELS.join(","))
    @tab = [stdin, stdout, thread]
    expect(JSON.parse(tab_line)).to eq("ready" => true)
  end

  def tab_line(timeout: 30)
    _, stdout, = @tab
    raise "the browser tab said nothing for #{timeout} s" unless stdout.wait_readable(timeout)

    stdout.gets or raise "the browser tab exited"
  end

  def tab_state
    @tab[0].puts("state")
    JSON.parse(tab_line)
  end

  def open_http_client(server)
    @hc_lock = Mutex.new
    @hc_got = Hash.new { |h, k| h[k] = [] }
    @hc_resets = Hash.new(0)
    @http_client = MessageBus::HTTPClient.new("http://127.0.0.1:#{server.port}",
                                              min_poll_interval: 0.05, max_poll_interval: 0.5)
    @http_client.on_reset { |channel| @hc_lock.synchronize { @hc_resets[channel] += 1 } }
    EPOCH_CHANNELS.each do |channel|
      @http_client.subscribe(channel, last_message_id: 0) { |data| @hc_lock.synchronize { @hc_got[channel] << data } }
    end
  end

  def hc_state
    @hc_lock.synchronize { { "got" => @hc_got.transform_values(&:dup), "resets" => @hc_resets.dup } }
  end

  def publish_all(server, texts)
    texts.each do |text|
      EPOCH_CHANNELS.each do |channel|
        # Retried while the store is coming back (a restarted Redis).
        wait_for(timeout: 20, message: "publishing #{text} to #{channel}") do
          publish_via(server, channel, text)
          true
        rescue RuntimeError
          false
        end
      end
    end
  end

  def complete?(state, expected)
    EPOCH_CHANNELS.all? { |c| state["got"].fetch(c, []).length >= expected.length }
  end

  # Seen ids 1..6 per channel, reset, 8 more per channel: checks both clients.
  def exercise(server, what, &reset)
    publish_all(server, EPOCH_BEFORE)
    open_tab(server)
    open_http_client(server)
    wait_for(timeout: 30, message: "the first messages in the browser") { complete?(tab_state, EPOCH_BEFORE) }
    wait_for(timeout: 30, message: "the first messages in the HTTPClient") { complete?(hc_state, EPOCH_BEFORE) }
    old_epoch = @http_client.epoch
    expect(old_epoch).to match(/\A\h{32}\z/)

    done = reset_and_wait(server, &reset)
    check("browser", tab_state, what, done["browser"])
    check("HTTPClient", hc_state, what, done["HTTPClient"])
    expect(tab_state["errors"]).to eq([])
    expect(@http_client.epoch).to match(/\A\h{32}\z/)
    expect(@http_client.epoch).not_to eq(old_epoch)
  end

  # Resets, publishes the rest; returns when each client had everything
  # (seconds after the reset; nil if it never did).
  def reset_and_wait(server)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    yield
    publish_all(server, EPOCH_AFTER)
    done = {}
    expected = EPOCH_BEFORE + EPOCH_AFTER
    begin
      wait_for(timeout: 40, message: "every message after the reset") do
        { "browser" => -> { tab_state }, "HTTPClient" => -> { hc_state } }.each do |name, state|
          done[name] ||= Process.clock_gettime(Process::CLOCK_MONOTONIC) - started if complete?(state.call, expected)
        end
        done.length == 2
      end
    rescue RuntimeError
      nil # the expectations say what is missing
    end
    done
  end

  def check(name, state, what, seconds)
    EPOCH_CHANNELS.each do |channel|
      got = state["got"].fetch(channel, [])
      printf("%-28s %-10s %s: %d before, %d after (of %d), onReset x%d, all %s\n", "epoch: #{what}", name, channel,
             (got & EPOCH_BEFORE).length, (got & EPOCH_AFTER).length, EPOCH_AFTER.length,
             state["resets"].fetch(channel, 0), seconds ? format("%.2f s after the reset", seconds) : "never")
      expect(got).to eq(EPOCH_BEFORE + EPOCH_AFTER), "#{name} on #{channel}: #{got.inspect}"
      expect(state["resets"].fetch(channel, 0)).to eq(1), "#{name} resets on #{channel}: #{state['resets'].inspect}"
    end
  end

  def redis_command(port, *words)
    socket = TCPSocket.new("127.0.0.1", port)
    socket.write("*#{words.length}\r\n#{words.map { |w| "$#{w.bytesize}\r\n#{w}\r\n" }.join}")
    raise "no answer from redis-server on #{port}" unless socket.wait_readable(5)

    socket.readpartial(1024)
  ensure
    socket&.close
  end

  context "on Redis", if: PrivateRedis.available? do
    before do
      skip "runs on the Redis pass" unless SpecHelpers.backend_name == :redis
      @redis = PrivateRedis.new.start
    end

    let(:config) { { backend: :redis, redis_config: { url: @redis.url, db: 0 } } }

    it "FLUSHDB: every message after it arrives once, onReset once per channel" do
      server = start_app(config)
      exercise(server, "Redis FLUSHDB") do
        expect(redis_command(@redis.port, "FLUSHDB")).to eq("+OK\r\n")
      end
    end

    it "a redis-server restarted without persistence: every message after it arrives once, onReset once" do
      server = start_app(config)
      exercise(server, "Redis restart") { @redis.restart }
    end
  end

  context "on PostgreSQL" do
    before { skip "runs on the PostgreSQL pass" unless SpecHelpers.backend_name == :postgres }

    let(:options) { SpecHelpers.postgres_options(7) }

    def psql(sql)
      out, err, status = Open3.capture3("psql", "-h", options[:host], "-p", options[:port].to_s, "-U", options[:user],
                                        "-d", options[:dbname], "-v", "ON_ERROR_STOP=1", "-tAc", sql)
      raise "psql failed: #{err}" unless status.success?

      out
    end

    it "the message_bus table dropped and recreated: every message after it arrives once, onReset once" do
      server = start_app(backend: :postgres, backend_options: options)
      exercise(server, "PostgreSQL table recreated") do
        # As the reference gem's reset! does it, from another connection.
        psql(<<~SQL)
          BEGIN;
          DROP TABLE message_bus;
          CREATE TABLE message_bus (id bigserial PRIMARY KEY, channel text NOT NULL,
            value text NOT NULL CHECK (octet_length(value) >= 2), added_at timestamp DEFAULT CURRENT_TIMESTAMP NOT NULL);
          CREATE INDEX table_channel_id_index ON message_bus (channel, id);
          CREATE INDEX table_added_at_index ON message_bus (added_at);
          COMMIT;
        SQL
      end
    end
  end
end
