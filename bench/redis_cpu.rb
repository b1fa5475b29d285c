# frozen_string_literal: true

# Redis publish throughput by thread count, with the CPU time spent per
# publish by this process and by the redis-server (read from /proc).
#   ruby -Ilib bench/redis_cpu.rb [threads ...]     (default 1 4 8; 3 s each)

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "message_bus"
require "logger"

bus = MessageBus::Instance.new
bus.configure(backend: :redis, redis_config: { url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/"), db: 14 },
              logger: Logger.new(nil), keepalive_interval: 0)
bus.reset!
bus.backend_instance.max_backlog_size = 100
bus.backend_instance.max_global_backlog_size = 1000
redis_pid = `pgrep -x redis-server`.split.first

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
def cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)

def redis_cpu(pid)
  pid ? File.read("/proc/#{pid}/stat").split[13, 2].sum(&:to_i) / 100.0 : 0
rescue SystemCallError
  0
end

(ARGV.empty? ? [1, 4, 8] : ARGV.map(&:to_i)).each do |threads|
  count = 0
  lock = Mutex.new
  started = now
  cpu0 = cpu
  redis0 = redis_cpu(redis_pid)
  Array.new(threads) do |t|
    Thread.new do
      n = 0
      while now < started + 3
        bus.publish("/bench/#{t}/#{n % 10}", "hello")
        n += 1
      end
      lock.synchronize { count += n }
    end
  end.each(&:join)
  printf("threads %d: %6.0f publishes/s  our CPU %3.0f us/publish  redis-server CPU %3.0f us/publish\n",
         threads, count / (now - started), (cpu - cpu0) / count * 1e6, (redis_cpu(redis_pid) - redis0) / count * 1e6)
end
bus.reset!
bus.destroy
