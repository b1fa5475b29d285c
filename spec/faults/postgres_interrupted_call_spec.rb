# frozen_string_literal: true

require "spec_helper"

# Timeout, Thread#kill and a handled signal interrupt a PostgreSQL call that
# waits for its answer, on the caller-thread connections (the calling thread
# waits itself with the GVL released) and through the runtime. A psql session of the spec holds a
# lock the INSERT needs until the spec ends it with pg_terminate_backend, so
# the publish waits as long as the spec wants, without a timing window. Uses
# its own database mb_interrupted on the PostgreSQL server of the specs
# (PGHOST/PGPORT/PGUSER, default 127.0.0.1:5432 as postgres); skipped when
# psql cannot reach it. Runs whatever MESSAGE_BUS_BACKEND is.
PG_INTERRUPTED_BASE = { host: ENV.fetch("PGHOST", "127.0.0.1"), port: ENV.fetch("PGPORT", "5432"),
                        user: ENV.fetch("PGUSER", "postgres") }.freeze
PG_INTERRUPTED_DB = "mb_interrupted"

RSpec.describe "A PostgreSQL call interrupted while it waits" do
  def self.psql(sql, dbname: PG_INTERRUPTED_DB)
    base = PG_INTERRUPTED_BASE
    out, status = Open3.capture2e("psql", "-h", base[:host], "-p", base[:port].to_s, "-U", base[:user],
                                  "-d", dbname, "-tAc", sql)
    [out.strip, status.success?]
  rescue SystemCallError
    ["psql not found", false]
  end

  def self.available?
    psql("SELECT 1", dbname: "postgres")[1]
  end

  def psql(sql) = self.class.psql(sql).first

  before(:all) do
    SpecHelpers.create_postgres_database(PG_INTERRUPTED_BASE, PG_INTERRUPTED_DB) if self.class.available?
  end

  before do
    skip "no PostgreSQL server reachable with psql" unless self.class.available?
    @bus = MessageBus::Instance.new
    @bus.configure(backend: :postgres, backend_options: PG_INTERRUPTED_BASE.merge(dbname: PG_INTERRUPTED_DB),
                   logger: Logger.new(nil), keepalive_interval: 0)
    @bus.reset!
    expect(@bus.publish("/interrupted/warmup", "w")).to eq(1)
  end

  after do
    @blocked&.kill
    release_lock
    @bus&.destroy
    trap("USR2", "DEFAULT")
  end

  # A psql session that takes the lock and keeps it (until terminated).
  def hold_lock
    base = PG_INTERRUPTED_BASE
    @holder = Process.spawn({ "PGAPPNAME" => "mb_lock_holder" }, "psql", "-h", base[:host], "-p", base[:port].to_s,
                            "-U", base[:user], "-d", PG_INTERRUPTED_DB, "-qc",
                            "BEGIN; LOCK TABLE message_bus IN EXCLUSIVE MODE; SELECT pg_sleep(600);",
                            out: File::NULL, err: File::NULL)
    wait_for(timeout: 10, message: "the lock holder") do
      psql("SELECT count(*) FROM pg_locks WHERE granted AND mode = 'ExclusiveLock' " \
           "AND relation = 'message_bus'::regclass") == "1"
    end
  end

  def wait_until_blocked
    wait_for(timeout: 10, message: "a statement waiting for the lock") do
      psql("SELECT count(*) FROM pg_locks WHERE NOT granted") != "0"
    end
  end

  def release_lock
    return unless @holder

    psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'mb_lock_holder'")
    Process.wait(@holder)
    @holder = nil
  end

  FaultHelpers.on_both_call_paths(self, "MESSAGE_BUS_POSTGRES_DIRECT") do
    it "lets Timeout end a publish waiting for a lock; the bus works afterwards" do
      hold_lock
      expect { Timeout.timeout(0.3) { @bus.publish("/interrupted/timeout", "x") } }.to raise_error(Timeout::Error)
      expect(@bus.last_id("/interrupted/warmup")).to eq(1) # reads are not held up by the lock
      release_lock
      expect(@bus.publish("/interrupted/after", "y")).to be_a(Integer)
      # The abandoned statement may have committed once the lock went: at most once.
      expect(@bus.backlog("/interrupted/timeout").length).to be <= 1
    end

    it "lets Thread#kill end a publish waiting for a lock" do
      hold_lock
      @blocked = Thread.new { @bus.publish("/interrupted/killed", "x") }
      wait_until_blocked
      @blocked.kill
      expect(@blocked.join(10)).to eq(@blocked)
      release_lock
      3.times { |i| expect(@bus.publish("/interrupted/after", i.to_s)).to be_a(Integer) }
      expect(@bus.backlog("/interrupted/after").map(&:data)).to eq(%w[0 1 2])
    end

    it "resumes a publish after a handled signal and stores it once" do
      hold_lock
      handled = 0
      trap("USR2") { handled += 1 }
      signaller = Thread.new do
        wait_until_blocked
        2.times do |i|
          Process.kill("USR2", Process.pid)
          wait_for(timeout: 10, message: "signal #{i + 1} handled") { handled > i }
        end
        release_lock
      end
      id = @bus.publish("/interrupted/once", "once")
      signaller.join
      expect(handled).to eq(2)
      expect(id).to eq(2)
      expect(@bus.backlog("/interrupted/once").map(&:data)).to eq(["once"])
      expect(@bus.last_id("/interrupted/once")).to eq(2)
    end
  end
end
