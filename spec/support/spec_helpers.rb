# frozen_string_literal: true

require "io/wait"
require "logger"
require "open3"
require "stringio"

# Shared helpers: backend selection by MESSAGE_BUS_BACKEND, fresh buses that
# are destroyed after each example, and waiting on a condition with a deadline.
module SpecHelpers
  def self.backend_name
    (ENV["MESSAGE_BUS_BACKEND"] || "memory").to_sym
  end

  # What a forked child wrote to `reader` once it closed it; a child still
  # silent after `seconds` fails the example with its native stacks (gdb,
  # when installed), so that a hang names where it is.
  def self.read_child(reader, pid, seconds: 40)
    return reader.read if reader.wait_readable(seconds)

    stacks = begin
      Open3.capture2e("gdb", "-p", pid.to_s, "-batch", "-ex", "thread apply all bt 30").first
    rescue Errno::ENOENT
      "(gdb not installed)"
    end
    raise "forked child #{pid} wrote nothing in #{seconds} s; its threads:\n#{stacks}"
  end

  # Backend configuration for a fresh, empty store of the selected backend.
  # `store` picks one of several separate stores (Redis databases 9, 10, ...;
  # MB_SPEC_REDIS_DB moves the first one, so that two suites can run at once).
  def self.backend_config(store: 0)
    case backend_name
    when :memory then { backend: :memory }
    when :ruby_memory
      # spec/support/lib/message_bus/backends/ruby_memory.rb, a backend written in Ruby
      $LOAD_PATH.unshift(File.expand_path("lib", __dir__)) unless $LOAD_PATH.include?(File.expand_path("lib", __dir__))
      { backend: :ruby_memory }
    when :redis
      db = Integer(ENV.fetch("MB_SPEC_REDIS_DB", "9")) + store
      { backend: :redis, redis_config: { url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/"), db: db } }
    when :postgres then { backend: :postgres, backend_options: postgres_options(store) }
    else raise "unknown MESSAGE_BUS_BACKEND #{backend_name}"
    end
  end

  # libpq options for the database `mb_spec_<store>`, created if missing
  # (server from PGHOST/PGPORT/PGUSER, default 127.0.0.1:5432 as postgres).
  def self.postgres_options(store)
    base = { host: ENV.fetch("PGHOST", "127.0.0.1"), port: ENV.fetch("PGPORT", "5432"),
             user: ENV.fetch("PGUSER", "postgres") }
    dbname = "mb_spec_#{store}"
    @postgres_created ||= {}
    @postgres_created[dbname] ||= create_postgres_database(base, dbname)
    base.merge(dbname: dbname)
  end

  def self.create_postgres_database(base, dbname)
    psql = ["psql", "-h", base[:host], "-p", base[:port].to_s, "-U", base[:user], "-d", "postgres", "-tAc"]
    exists, = Open3.capture2(*psql, "SELECT 1 FROM pg_database WHERE datname = '#{dbname}'")
    return true if exists.strip == "1"

    _, err, status = Open3.capture3(*psql, "CREATE DATABASE #{dbname}")
    raise "cannot create PostgreSQL database #{dbname}: #{err}" unless status.success? || err.include?("already exists")

    true
  end

  def log_output
    @log_output ||= StringIO.new
  end

  # A fresh bus on the selected backend, reset, destroyed after the example.
  def new_bus(store: 0, **config)
    bus = MessageBus::Instance.new
    bus.configure(SpecHelpers.backend_config(store: store).merge(logger: Logger.new(log_output),
                                                                 keepalive_interval: 0).merge(config))
    bus.reset!
    (@buses ||= []) << bus
    bus
  end

  BUS_LOCK = Mutex.new

  # The example's bus; safe to first touch from several threads.
  def bus
    BUS_LOCK.synchronize { @bus ||= new_bus }
  end

  # Waits until the block returns truthy; fails after `timeout` seconds.
  def wait_for(timeout: 5, message: "condition")
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      result = yield
      return result if result
      raise "timed out after #{timeout}s waiting for #{message}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.005
    end
  end

  def self.included(base)
    base.after do
      (@buses || []).each do |b|
        b.on
        b.reset!
        b.destroy
      end
    end
  end
end
