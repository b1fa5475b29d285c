# frozen_string_literal: true

require "socket"

# A private redis-server (no persistence) on a free port, for specs that stop
# and restart it. Started and stopped by pid.
class PrivateRedis
  attr_reader :port

  def self.available?
    system("redis-server", "--version", out: File::NULL, err: File::NULL)
  end

  def initialize
    server = TCPServer.new("127.0.0.1", 0)
    @port = server.addr[1]
    server.close
    @pid = nil
  end

  def url = "redis://127.0.0.1:#{@port}/"

  def start
    @pid = Process.spawn("redis-server", "--port", @port.to_s, "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", out: File::NULL, err: File::NULL)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    until up?
      raise "redis-server on port #{@port} did not start" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.01
    end
    self
  end

  # Stops the server process (SIGSTOP): it answers nothing until `thaw`,
  # however long a test takes.
  def freeze = Process.kill(:STOP, @pid)

  def thaw = Process.kill(:CONT, @pid)

  # SIGTERM (or SIGKILL with `signal: :KILL`), waiting for the process to end.
  def stop(signal: :TERM)
    return unless @pid

    begin
      Process.kill(:CONT, @pid) # a frozen server would never handle the TERM
      Process.kill(signal, @pid)
    rescue Errno::ESRCH
      nil
    end
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    until Process.waitpid(@pid, Process::WNOHANG)
      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        Process.kill(:KILL, @pid)
        Process.waitpid(@pid)
        break
      end
      sleep 0.005
    end
  rescue Errno::ECHILD, Errno::ESRCH
    nil
  ensure
    @pid = nil
  end

  def restart(signal: :TERM)
    stop(signal: signal)
    start
  end

  private

  def up?
    s = TCPSocket.new("127.0.0.1", @port)
    s.write("PING\r\n")
    ok = s.wait_readable(1) && s.readpartial(64).start_with?("+PONG")
    s.close
    ok
  rescue SystemCallError, IOError
    false
  end
end
