# frozen_string_literal: true

require "spec_helper"

# Terminates every connection of our processes (publishers' pools, the
# subscriber's pool and listener) with pg_terminate_backend from a third
# connection, twice, while two publisher processes publish numbered streams.
# Uses its own database mb_faults on the PostgreSQL server of the specs
# (PGHOST/PGPORT/PGUSER, default 127.0.0.1:5432 as postgres); skipped when
# psql cannot reach it. Runs whatever MESSAGE_BUS_BACKEND is.
#
# Guarantees checked: a publish that returned an id is delivered exactly
# once and in per-publisher order; a publish that raised is reported and
# excluded (its row may have been stored: delivered at most once); the
# subscriber catches up after its connections were killed.
PG_FAULTS_BASE = { host: ENV.fetch("PGHOST", "127.0.0.1"), port: ENV.fetch("PGPORT", "5432"),
                   user: ENV.fetch("PGUSER", "postgres") }.freeze
PG_FAULTS_DB = "mb_faults"

RSpec.describe "PostgreSQL connections terminated during publishing" do
  include FaultHelpers

  def self.psql(sql, dbname: "postgres")
    base = PG_FAULTS_BASE
    out, status = Open3.capture2e("psql", "-h", base[:host], "-p", base[:port].to_s, "-U", base[:user],
                                  "-d", dbname, "-tAc", sql)
    [out, status.success?]
  rescue SystemCallError
    ["psql not found", false]
  end

  def self.available?
    psql("SELECT 1")[1]
  end

  let(:options) { PG_FAULTS_BASE.merge(dbname: PG_FAULTS_DB) }
  let(:config) { { backend: :postgres, backend_options: options } }
  let(:received) { Hash.new { |h, k| h[k] = [] } }
  let(:lock) { Mutex.new }

  before(:all) { SpecHelpers.create_postgres_database(PG_FAULTS_BASE, PG_FAULTS_DB) if self.class.available? }

  before { skip "no PostgreSQL server reachable with psql" unless self.class.available? }

  after do
    (@publishers || []).each(&:stop)
    (@private_buses || []).each(&:destroy)
  end

  def private_bus
    b = MessageBus::Instance.new
    b.configure(config.merge(logger: Logger.new(log_output), keepalive_interval: 0))
    (@private_buses ||= []) << b
    b
  end

  def got(channel) = lock.synchronize { received[channel].dup }

  # Terminates every backend connected to mb_faults (except the psql one);
  # returns how many.
  def terminate_all
    out, ok = self.class.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity " \
                              "WHERE datname = '#{PG_FAULTS_DB}' AND pid <> pg_backend_pid()")
    raise "pg_terminate_backend failed: #{out}" unless ok

    Integer(out.strip)
  end

  it "delivers every message whose publish returned an id exactly once, in order" do
    bus = private_bus
    bus.reset!
    channels = %w[/faults/p1 /faults/p2]
    channels.each do |channel|
      bus.subscribe(channel) { |m| lock.synchronize { received[channel] << m.data["i"] } }
    end
    bus.subscribe("/faults/probe") { |_m| lock.synchronize { received["/faults/probe"] << 1 } }
    wait_for(timeout: 10, message: "the subscription") do
      bus.publish("/faults/probe", { "i" => 0 })
      sleep 0.02
      got("/faults/probe").any?
    end

    @publishers = channels.map { |c| FaultHelpers::Publisher.new(config, c, 300, 3) }
    wait_for(timeout: 15, message: "publishers ready") { @publishers.all?(&:ready?) }
    @publishers.each(&:go)

    killed = []
    [150, 400].each do |at|
      wait_for(timeout: 15, message: "#{at} messages") { channels.sum { |c| got(c).length } >= at }
      killed << terminate_all
    end
    killed_at = monotonic
    wait_for(timeout: 40, message: "publishers to finish") { @publishers.all?(&:finished?) }
    reports = nil
    begin
      wait_for(timeout: 15, message: "delivery of every published message") do
        reports = @publishers.map { |p| fault_report(p, got(p.channel)) }
        reports.all? { |r| r[:lost].empty? }
      end
    rescue RuntimeError
      nil # the expectations below say what is missing
    end
    reports = @publishers.map { |p| fault_report(p, got(p.channel)) }
    reports.each { |r| print_fault_report("postgres terminate", r) }
    printf("%-28s terminated %s connections; everything delivered %.2f s after the last\n", "postgres terminate",
           killed.join(" + "), monotonic - killed_at)
    expect(killed).to all(be >= 3) # publishers' pools and the listener
    reports.each { |r| expect_nothing_lost(r) }
  end
end
