# frozen_string_literal: true

module MessageBus
  # One background thread running queued jobs in due-time order (monotonic
  # clock). Job errors go to the `on_error` handler.
  class TimerThread
    # A queued job; `cancel` keeps it from running.
    class Job
      attr_reader :run_at

      def initialize(run_at, blk)
        @run_at = run_at
        @blk = blk
      end

      def cancel
        @blk = nil
      end

      def canceled?
        @blk.nil?
      end

      def call
        @blk&.call
      end
    end

    # Handle of a repeating job.
    class Every
      def initialize
        @canceled = false
        @current = nil
      end

      attr_writer :current

      def cancel
        @canceled = true
        @current&.cancel
      end

      def canceled?
        @canceled
      end
    end

    # The reference gem's names for the handles `queue` and `every` return.
    Cancelable = Job
    CancelableEvery = Every

    attr_reader :jobs

    def initialize
      @jobs = []
      @mutex = Mutex.new
      @wakeup = ConditionVariable.new
      @stopped = false
      @thread = nil
      @on_error = ->(e) { warn "MessageBus timer job failed: #{e.class}: #{e.message}" }
    end

    def on_error(&blk)
      @on_error = blk
    end

    def queue(delay = 0, &blk)
      job = Job.new(now + delay.to_f, blk)
      @mutex.synchronize do
        @stopped = false
        index = @jobs.bsearch_index { |j| j.run_at > job.run_at } || @jobs.length
        @jobs.insert(index, job)
        ensure_thread
        @wakeup.signal
      end
      job
    end

    def every(delay, &blk)
      handle = Every.new
      run = lambda do
        next if handle.canceled?

        begin
          blk.call
        ensure
          handle.current = queue(delay, &run) unless handle.canceled?
        end
      end
      handle.current = queue(delay, &run)
      handle
    end

    def stop
      thread = nil
      @mutex.synchronize do
        @stopped = true
        @jobs.clear
        @wakeup.signal
        thread = @thread
        @thread = nil
      end
      thread&.join(5) unless thread == Thread.current
    end

    def stopped?
      @stopped
    end

    private

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def ensure_thread
      return if @thread&.alive?

      @thread = Thread.new { run }
      @thread.name = "MessageBus timer"
    end

    def run
      loop do
        job = next_due_job
        break unless job

        begin
          job.call
        rescue StandardError => e
          begin
            @on_error&.call(e)
          rescue StandardError
            nil
          end
        end
      end
    end

    def next_due_job
      @mutex.synchronize do
        loop do
          return nil if @stopped

          first = @jobs.first
          if first.nil?
            @wakeup.wait(@mutex)
          elsif first.canceled?
            @jobs.shift
          elsif (wait = first.run_at - now) > 0
            @wakeup.wait(@mutex, wait)
          else
            return @jobs.shift
          end
        end
      end
    end
  end
end
