# frozen_string_literal: true

require "json"
require "open3"

# Publisher processes for the fault specs (spec/faults/), and the accounting
# of what they report as published against what a subscriber received.
module FaultHelpers
  PUBLISHER = File.expand_path("../faults/publisher.rb", __dir__)

  # Defines the block's examples twice, for both ways a backend call waits:
  # on the calling thread's own connection (the default), and through the
  # runtime with `switch` (MESSAGE_BUS_REDIS_DIRECT / _POSTGRES_DIRECT) set
  # to 0. The switch is read when the backend is built, in the examples.
  def self.on_both_call_paths(group, switch, &examples)
    { "on the calling thread's connection" => nil, "through the runtime (#{switch}=0)" => "0" }.each do |path, value|
      group.context(path) do
        around do |example|
          saved = ENV.fetch(switch, nil)
          ENV[switch] = value
          example.run
        ensure
          ENV[switch] = saved
        end
        class_exec(&examples)
      end
    end
  end

  # A running publisher process: its pid, stdin, and the lines it printed.
  class Publisher
    attr_reader :pid, :channel, :lines, :done

    def initialize(config, channel, count, interval_ms)
      @channel = channel
      @lines = []
      @done = nil
      @lock = Mutex.new
      @stdin, @stdout, @thread = Open3.popen2(RbConfig.ruby, PUBLISHER, JSON.generate(config), channel,
                                              count.to_s, interval_ms.to_s)
      @pid = @thread.pid
      @reader = Thread.new { read_lines }
    end

    def read_lines
      @stdout.each_line do |raw|
        line = JSON.parse(raw)
        @lock.synchronize do
          if line["done"] then @done = line
          elsif line["i"] then @lines << line
          end
          @ready = true if line["ready"]
        end
      end
    rescue IOError
      nil
    end

    def ready? = @lock.synchronize { @ready }
    def finished? = @lock.synchronize { !@done.nil? }
    def count = @lock.synchronize { @lines.length }

    def go
      @stdin.puts("go")
      @stdin.flush
    end

    # i of each publish by outcome ("id", "queued", "error").
    def outcomes
      @lock.synchronize { @lines.group_by { |l| l["r"] }.transform_values { |ls| ls.map { |l| l["i"] } } }
    end

    def stop
      return unless @thread.alive?

      begin
        Process.kill(:TERM, @pid)
      rescue Errno::ESRCH
        nil
      end
      @thread.join(5) || begin
        Process.kill(:KILL, @pid)
        @thread.join
      end
    rescue Errno::ESRCH
      nil
    ensure
      @stdin.close unless @stdin.closed?
      @reader.join(2)
    end
  end

  # Compares, per publisher, the numbers it reports as published with the
  # numbers the subscriber received on its channel. Returns a report hash.
  def fault_report(publisher, received)
    out = publisher.outcomes
    published = (out["id"] || []) + (out["queued"] || [])
    errors = out["error"] || []
    counts = received.tally
    {
      channel: publisher.channel,
      published: published.length,
      queued: (out["queued"] || []).length,
      raised: errors.length,
      delivered: received.length,
      lost: published.reject { |i| counts.key?(i) },
      duplicated: counts.select { |_, n| n > 1 }.keys,
      unexpected: counts.keys - published - errors,
      in_order: received == received.sort,
      raised_delivered: errors.count { |i| counts.key?(i) },
      done: publisher.done
    }
  end

  def print_fault_report(label, report)
    puts format("%-28s %-12s published %4d (queued %3d)  raised %3d  delivered %4d  lost %d  duplicated %d  " \
                "raised-but-delivered %d  in order: %s",
                label, report[:channel], report[:published], report[:queued], report[:raised], report[:delivered],
                report[:lost].length, report[:duplicated].length, report[:raised_delivered], report[:in_order])
  end

  def expect_nothing_lost(report)
    expect(report[:lost]).to eq([]), "lost on #{report[:channel]}: #{report[:lost].first(20)}"
    expect(report[:duplicated]).to eq([]), "duplicated on #{report[:channel]}: #{report[:duplicated].first(20)}"
    expect(report[:unexpected]).to eq([])
    expect(report[:in_order]).to be(true), "out of order on #{report[:channel]}"
    expect(report[:done]).not_to be_nil
    expect(report[:done]["queued"]).to eq(0)
    expect(report[:done]["dropped"]).to eq(0)
  end

  def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
end
