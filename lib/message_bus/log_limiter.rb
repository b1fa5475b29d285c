# frozen_string_literal: true

module MessageBus
  # Every warning of the gem goes to the bus's logger as one line starting
  # with PREFIX. A category of warnings (a reconnect loop, a storm of
  # unreadable messages) logs at most BURST lines per WINDOW seconds; the
  # rest are counted, and the next line of that category after its window
  # says how many were suppressed.
  class LogLimiter
    PREFIX = "MessageBus: "
    WINDOW = 10.0
    BURST = 10

    Window = Struct.new(:started, :logged, :suppressed)

    attr_reader :suppressed_total

    def initialize(window: WINDOW, burst: BURST)
      @window = window
      @burst = burst
      @lock = Mutex.new
      @windows = {}
      @suppressed_total = 0
    end

    # The lines to log now for one warning of `category` (none, the
    # warning, or a summary of the previous window and the warning).
    def lines(category, text, now)
      @lock.synchronize do
        w = @windows[category]
        summary = nil
        if w.nil? || now - w.started >= @window
          if w&.suppressed&.positive?
            summary = "#{w.suppressed} similar warnings suppressed in the last #{@window.round} s: #{category}"
          end
          @windows.shift if w.nil? && @windows.size >= 1000
          w = @windows[category] = Window.new(now, 0, 0)
        end
        if w.logged < @burst
          w.logged += 1
          [summary, text].compact.map { |line| PREFIX + line }
        else
          w.suppressed += 1
          @suppressed_total += 1
          summary ? [PREFIX + summary] : []
        end
      end
    end
  end
end
