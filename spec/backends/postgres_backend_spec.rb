# frozen_string_literal: true

# Exercises MessageBus::Backends::Postgres directly against the PostgreSQL on
# 127.0.0.1:5432 (user postgres, trust auth), in a database of its own that is
# created here and dropped at the end. Needs the native extension:
# `CARGO_TARGET_DIR=... rake compile`.

require "English"
require "open3"
require "socket"
require "message_bus/backends/postgres"

RSpec.describe MessageBus::Backends::Postgres do
  dbname = "mb_rspec_#{Process.pid}"
  server = { host: "127.0.0.1", port: 5432, user: "postgres" }
  define_method(:options) { server.merge(dbname: dbname) }

  def psql(sql, db: options[:dbname])
    out, err, status = Open3.capture3("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql)
    raise "psql #{sql}: #{err}" unless status.success?

    out
  end

  def free_port
    tcp = TCPServer.new("127.0.0.1", 0)
    tcp.addr[1]
  ensure
    tcp&.close
  end

  describe ".conninfo_for" do
    it "quotes libpq keywords and maps Rails spellings" do
      expect(described_class.conninfo_for(host: "h", port: 5433, database: "d", username: "u", password: "a'b\\c"))
        .to eq("host='h' port='5433' dbname='d' user='u' password='a\\'b\\\\c'")
    end

    it "keeps a url and adds the other options as parameters" do
      expect(described_class.conninfo_for(url: "postgres://u@h/db")).to eq("postgres://u@h/db")
      expect(described_class.conninfo_for("url" => "postgres://h/db?sslmode=disable", connect_timeout: 3))
        .to eq("postgres://h/db?sslmode=disable&connect_timeout=3")
    end
  end

  it "names the NOTIFY channel after config[:db]" do
    expect(described_class.notify_channel_for({})).to eq("_message_bus_0")
    expect(described_class.notify_channel_for(db: 2)).to eq("_message_bus_2")
  end

  it "registers itself" do
    expect(MessageBus::BACKENDS[:postgres]).to eq(described_class)
  end

  context "with a PostgreSQL server" do
    let(:bus) { described_class.new(backend_options: options) }

    before(:all) { psql("CREATE DATABASE #{dbname}", db: "postgres") }
    after(:all) { psql("DROP DATABASE IF EXISTS #{dbname} WITH (FORCE)", db: "postgres") }

    before { described_class.reset!(backend_options: options) }
    after { bus.destroy }

    it "stores rows in the reference format and reads them back" do
      expect(bus.publish("/foo$|$s1", "hello")).to eq(1)
      expect(bus.publish("/foo$|$s1", "a|b")).to eq(2)
      expect(psql("SELECT id, channel, value FROM message_bus ORDER BY id").lines.map(&:chomp))
        .to eq(["1|/foo$|$s1|hello", "2|/foo$|$s1|a|b"])
      psql("INSERT INTO message_bus (channel, value) VALUES ('/bar', 'from sql')")
      expect(bus.last_id("/foo$|$s1")).to eq(2)
      expect(bus.last_ids("/foo$|$s1", "/nope", "/bar")).to eq([2, 0, 3])
      expect(bus.backlog("/foo$|$s1", 1).map(&:to_a)).to eq([[2, 2, "/foo$|$s1", "a|b"]])
      expect(bus.get_message("/bar", 3).data).to eq("from sql")
      expect(bus.global_backlog.map(&:global_id)).to eq([1, 2, 3])
    end

    it "honours per-publish limits" do
      bus.max_backlog_size = 2
      3.times { |i| bus.publish("/t", "m#{i}") }
      expect(bus.backlog("/t").map(&:message_id)).to eq([2, 3])
      bus.publish("/t", "xx", max_backlog_age: 50, max_backlog_size: 1)
      expect(bus.backlog("/t").map(&:message_id)).to eq([4])
    end

    it "delivers published messages to global_subscribe until global_unsubscribe" do
      received = Queue.new
      thread = Thread.new { bus.global_subscribe { |m| received << m } }
      deadline = Time.now + 5
      sleep 0.02 until bus.subscribed || Time.now > deadline
      expect(bus.subscribed).to eq(true)
      bus.publish("/chat", "hi")
      expect(Timeout.timeout(5) { received.pop }.to_a).to eq([1, 1, "/chat", "hi"])
      big = "x" * 9000
      expect { bus.publish("/chat", big) }.to raise_error(MessageBus::BackendError, /8000 bytes/)
      expect(Timeout.timeout(5) { received.pop }.data).to eq(big)
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

    it "resets with the class method and expires backlogs" do
      bus.publish("/a", "11")
      bus.expire_all_backlogs!
      expect(bus.backlog("/a")).to eq([])
      bus.publish("/a", "22")
      described_class.reset!(backend_options: options)
      expect(bus.last_id("/a")).to eq(0)
      expect(bus.publish("/a", "33")).to eq(1)
    end
  end

  # In a database of its own, so that every connection to it is this backend's.
  it "uses TLS for every connection with sslmode=require, or says why it cannot" do
    tls_db = "#{dbname}_tls"
    psql("CREATE DATABASE #{tls_db}", db: "postgres")
    tls = described_class.new(backend_options: options.merge(dbname: tls_db, sslmode: "require"))
    if psql("SHOW ssl", db: "postgres").strip == "on"
      received = Queue.new
      thread = Thread.new { tls.global_subscribe { |m| received << m } }
      deadline = Time.now + 10
      sleep 0.02 until tls.subscribed || Time.now > deadline
      expect(tls.publish("/tls", "secret")).to eq(1)
      expect(tls.last_id("/tls")).to eq(1)
      expect(tls.backlog("/tls").map(&:data)).to eq(["secret"])
      expect(Timeout.timeout(10) { received.pop }.data).to eq("secret")
      ssl = psql("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '#{tls_db}'",
                 db: "postgres").lines.map(&:strip)
      expect(ssl.size).to be >= 2 # the LISTEN connection and the one that published
      expect(ssl.uniq).to eq(["t"])
      tls.global_unsubscribe
      expect(thread.join(5)).to be_truthy
    else
      refused = /no TLS connection .*sslmode=require.*does not support TLS/
      expect { tls.publish("/tls", "x") }.to raise_error(MessageBus::ConnectionError, refused)
    end
  ensure
    tls&.destroy
    psql("DROP DATABASE IF EXISTS #{tls_db} WITH (FORCE)", db: "postgres")
  end

  it "raises connection errors that say what is wrong" do
    down = described_class.new(backend_options: { host: "127.0.0.1", port: free_port, user: "postgres" })
    expect { down.publish("/a", "xx") }.to raise_error(MessageBus::ConnectionError, /server down/)
    missing = described_class.new(backend_options: options.merge(dbname: "mb_no_such_database"))
    expect { missing.last_id("/a") }.to raise_error(MessageBus::ConnectionError, /does not exist/)
  ensure
    down&.destroy
    missing&.destroy
  end
end
