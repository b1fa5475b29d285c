# frozen_string_literal: true

require "spec_helper"
require "tmpdir"
require "fileutils"

# Restarts a PRIVATE PostgreSQL server (initdb'd by the test in a temporary
# directory, on a free port; its postmaster stopped by pid) while two
# publisher processes publish: publishes during the outage raise (PostgreSQL
# has no in-memory queue), every other one is delivered exactly once and in
# order, and the subscriber catches up after the restart.
PG_SERVER_BIN = Dir["/usr/lib/postgresql/*/bin"].max

RSpec.describe "PostgreSQL server restart during publishing" do
  include FaultHelpers
  include ServerHelpers

  def as_postgres(*cmd)
    out, status = Open3.capture2e("runuser", "-u", "postgres", "--", *cmd)
    raise "#{cmd.first} failed: #{out}" unless status.success?

    out
  end

  def start_postgres
    as_postgres("#{PG_SERVER_BIN}/pg_ctl", "-D", "#{@dir}/data", "-l", "#{@dir}/log", "-w", "-t", "20",
                "-o", "-p #{@port} -k #{@dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    @postmaster = Integer(File.readlines("#{@dir}/data/postmaster.pid").first)
  end

  def stop_postgres
    return unless @postmaster

    Process.kill(:INT, @postmaster) # fast shutdown
    wait_for(timeout: 20, message: "postmaster #{@postmaster} to exit") { !process_alive?(@postmaster) }
    @postmaster = nil
  end

  def process_alive?(pid)
    Process.kill(0, pid)
    true
  rescue Errno::ESRCH
    false
  end

  around do |example|
    skip "PostgreSQL server binaries not found" unless PG_SERVER_BIN

    @dir = Dir.mktmpdir("mb-pg")
    FileUtils.chown("postgres", "postgres", @dir)
    as_postgres("#{PG_SERVER_BIN}/initdb", "-D", "#{@dir}/data", "-A", "trust", "-U", "postgres", "--no-sync")
    @port = free_port
    start_postgres
    example.run
  ensure
    stop_postgres
    FileUtils.rm_rf(@dir) if @dir
  end

  it "delivers every message whose publish returned an id exactly once, in order" do
    config = { backend: :postgres, backend_options: { host: "127.0.0.1", port: @port, user: "postgres", dbname: "postgres" } }
    bus = MessageBus::Instance.new
    bus.configure(config.merge(logger: Logger.new(log_output), keepalive_interval: 0))
    received = Hash.new { |h, k| h[k] = [] }
    lock = Mutex.new
    channels = %w[/restart/p1 /restart/p2]
    channels.each { |c| bus.subscribe(c) { |m| lock.synchronize { received[c] << m.data["i"] } } }
    bus.subscribe("/restart/probe") { |_m| lock.synchronize { received["probe"] << 1 } }
    wait_for(timeout: 15, message: "the subscription") do
      bus.publish("/restart/probe", { "i" => 0 })
      sleep 0.05
      lock.synchronize { received["probe"].any? }
    end

    publishers = channels.map { |c| FaultHelpers::Publisher.new(config, c, 400, 10) }
    wait_for(timeout: 15, message: "publishers ready") { publishers.all?(&:ready?) }
    publishers.each(&:go)
    wait_for(timeout: 15, message: "100 publishes") { publishers.sum(&:count) >= 100 }
    stop_postgres
    sleep 0.5 # publishes fail meanwhile
    start_postgres
    restarted = monotonic
    wait_for(timeout: 40, message: "publishers to finish") { publishers.all?(&:finished?) }
    reports = nil
    wait_for(timeout: 20, message: "delivery of every published message") do
      reports = publishers.map { |p| fault_report(p, lock.synchronize { received[p.channel].dup }) }
      reports.all? { |r| r[:lost].empty? }
    rescue RuntimeError
      true
    end
    reports = publishers.map { |p| fault_report(p, lock.synchronize { received[p.channel].dup }) }
    reports.each { |r| print_fault_report("postgres server restart", r) }
    printf("%-28s everything delivered %.2f s after the restart\n", "postgres server restart", monotonic - restarted)
    expect(reports.sum { |r| r[:raised] }).to be > 0 # the outage was real
    publishers.each do |p|
      out = p.outcomes
      # publishing recovered after the restart
      expect((out["id"] || []).max).to be > (out["error"] || [0]).max
    end
    reports.each { |r| expect_nothing_lost(r) }
  ensure
    publishers&.each(&:stop)
    bus&.destroy
  end
end
