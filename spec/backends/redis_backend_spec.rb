# frozen_string_literal: true

# Exercises MessageBus::Backends::Redis directly (without lib/message_bus.rb)
# against the Redis on 127.0.0.1:6379, database 15. Needs the native
# extension: `CARGO_TARGET_DIR=... rake compile`.

require "English"
require "open3"
require "socket"
require "message_bus/backends/redis"

RSpec.describe MessageBus::Backends::Redis do
  db = 15
  define_method(:db) { db }

  def redis_cli(*args)
    out, status = Open3.capture2("redis-cli", "-n", db.to_s, *args.map(&:to_s))
    raise "redis-cli #{args.join(' ')} failed" unless status.success?

    out
  end

  def free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end

  describe ".url_for" do
    it "defaults to 127.0.0.1:6379 db 0" do
      expect(described_class.url_for({})).to eq("redis://127.0.0.1:6379/0")
    end

    it "builds the URL from host, port, db, username and password" do
      url = described_class.url_for(host: "redis.local", port: 6380, db: 3, username: "u", password: "p@ss word")
      expect(url).to eq("redis://u:p%40ss%20word@redis.local:6380/3")
    end

    it "keeps a url and lets explicit options override its parts" do
      expect(described_class.url_for(url: "redis://:secret@h:7000/4")).to eq("redis://:secret@h:7000/4")
      expect(described_class.url_for(url: "redis://h:7000/4", db: 2)).to eq("redis://h:7000/2")
      expect(described_class.url_for("url" => "rediss://h/1")).to eq("rediss://h:6379/1")
    end

    it "uses a unix socket for path" do
      expect(described_class.url_for(path: "/tmp/r.sock", db: 2, password: "x")).to eq("unix:///tmp/r.sock?db=2&pass=x")
      expect(described_class.url_for(url: "unix:///tmp/r.sock?db=5")).to eq("unix:///tmp/r.sock?db=5")
    end

    it "uses TLS for ssl: true and brackets IPv6 hosts" do
      expect(described_class.url_for(host: "::1", ssl: true)).to eq("rediss://[::1]:6379/0")
    end

    it "rejects sentinels and unknown schemes loudly" do
      expect { described_class.url_for(sentinels: [{ host: "s" }]) }.to raise_error(ArgumentError, /Sentinel/)
      expect { described_class.url_for(url: "http://x") }.to raise_error(ArgumentError, /scheme/)
    end
  end

  describe ".pubsub_channel_for" do
    it "only counts an explicit db" do
      expect(described_class.pubsub_channel_for({})).to eq("_message_bus_0")
      expect(described_class.pubsub_channel_for(db: 3)).to eq("_message_bus_3")
      expect(described_class.pubsub_channel_for(url: "redis://h/5")).to eq("_message_bus_0")
    end
  end

  it "registers itself" do
    expect(MessageBus::BACKENDS[:redis]).to eq(described_class)
  end

  context "with a Redis server" do
    let(:bus) { described_class.new(redis_config: { db: db }) }

    before { redis_cli("FLUSHDB") }

    after do
      bus.destroy
      redis_cli("FLUSHDB")
    end

    it "stores messages in the reference format and reads them back" do
      expect(bus.publish("/foo$|$s1", "hello")).to eq(1)
      expect(bus.publish("/foo$|$s1", "a|b")).to eq(2)
      expect(redis_cli("ZRANGE", "__mb_backlog_n_/foo$|$s1", 0, -1).lines.map(&:chomp))
        .to eq(["1|1|/foo$$$123$$$s1|hello", "2|2|/foo$$$123$$$s1|a|b"])
      expect(redis_cli("ZRANGE", "__mb_global_backlog_n", 0, -1).lines.map(&:chomp))
        .to eq(["1|/foo$|$s1", "2|/foo$|$s1"])

      expect(bus.last_id("/foo$|$s1")).to eq(2)
      expect(bus.last_ids("/foo$|$s1", "/nope")).to eq([2, 0])
      expect(bus.backlog("/foo$|$s1", 1).map(&:to_a)).to eq([[2, 2, "/foo$|$s1", "a|b"]])
      expect(bus.get_message("/foo$|$s1", 1).data).to eq("hello")
      expect(bus.global_backlog.map(&:global_id)).to eq([1, 2])
    end

    it "honours per-publish limits and the backend settings" do
      bus.max_backlog_size = 2
      expect(bus.max_backlog_size).to eq(2)
      bus.max_in_memory_publish_backlog = 10
      expect(bus.max_in_memory_publish_backlog).to eq(10)
      3.times { |i| bus.publish("/t", i.to_s) }
      expect(bus.backlog("/t").map(&:message_id)).to eq([2, 3])
      bus.publish("/t", "x", max_backlog_age: 50, max_backlog_size: 1)
      expect(bus.backlog("/t").map(&:message_id)).to eq([4])
      expect(redis_cli("TTL", "__mb_backlog_n_/t").to_i).to be_between(40, 50)
    end

    it "delivers published messages to global_subscribe until global_unsubscribe" do
      received = Queue.new
      thread = Thread.new { bus.global_subscribe { |m| received << m } }
      deadline = Time.now + 5
      sleep 0.02 until bus.subscribed || Time.now > deadline
      expect(bus.subscribed).to eq(true)
      bus.publish("/chat", "hi")
      message = Timeout.timeout(5) { received.pop }
      expect(message.to_a).to eq([1, 1, "/chat", "hi"])
      bus.global_unsubscribe
      expect(thread.join(5)).to be_truthy
    end

    it "works in a forked child after after_fork" do
      bus.publish("/fork", "parent")
      received = Queue.new
      thread = Thread.new { bus.global_subscribe { |m| received << m } }
      sleep 0.02 until bus.subscribed
      pid = fork do
        MessageBus::Native.after_fork
        bus.after_fork
        ok = bus.publish("/fork", "child") == 2 && bus.backlog("/fork").map(&:data) == %w[parent child]
        exit!(ok ? 0 : 1)
      end
      Process.wait(pid)
      expect($CHILD_STATUS.exitstatus).to eq(0)
      expect(Timeout.timeout(5) { received.pop }.data).to eq("child")
      bus.global_unsubscribe
      thread.join(5)
    end

    it "resets and expires backlogs" do
      bus.publish("/a", "1")
      bus.expire_all_backlogs!
      expect(bus.backlog("/a")).to eq([])
      expect(bus.last_id("/a")).to eq(1)
      bus.reset!
      expect(bus.last_id("/a")).to eq(0)
      expect(bus.publish("/a", "2")).to eq(1)
    end
  end

  it "queues publishes in memory while Redis is unreachable" do
    bus = described_class.new(redis_config: { port: free_port, db: db })
    expect(bus.publish("/a", "later")).to be_nil
    expect(bus.queued_publishes).to eq(1)
    expect { bus.publish("/a", "now", queue_in_memory: false) }.to raise_error(/cannot reach Redis/)
    expect { bus.last_id("/a") }.to raise_error(/cannot reach Redis/)
    bus.destroy
    expect(bus.dropped_publishes).to eq(1)
  end
end
