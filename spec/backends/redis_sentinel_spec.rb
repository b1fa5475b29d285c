# frozen_string_literal: true

require "open3"
require "tmpdir"
require "message_bus/backends/redis"

# A private master, replica and sentinel (started and stopped by pid, on free
# ports): a bus configured redis-rb style with the sentinel follows the
# master through a forced failover.
RSpec.describe "Redis backend through Sentinel", if: PrivateRedis.available? do
  include ServerHelpers

  def spawn_redis(*args)
    pid = Process.spawn("redis-server", *args, out: File::NULL, err: File::NULL)
    @pids << pid
    pid
  end

  def cli(port, *args)
    out, = Open3.capture2e("redis-cli", "-p", port.to_s, *args)
    out
  end

  def master_port_by_sentinel
    cli(@sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster").split("\n")[1].to_i
  end

  around do |example|
    @pids = []
    Dir.mktmpdir("mb-sentinel") do |dir|
      @master, @replica, @sentinel = Array.new(3) { free_port }
      common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir]
      spawn_redis("--port", @master.to_s, *common)
      wait_for(timeout: 10, message: "the master") { server_up?(@master) }
      spawn_redis("--port", @replica.to_s, *common, "--replicaof", "127.0.0.1", @master.to_s)
      File.write("#{dir}/sentinel.conf", <<~CONF)
        port #{@sentinel}
        bind 127.0.0.1
        dir #{dir}
        sentinel monitor mymaster 127.0.0.1 #{@master} 1
        sentinel down-after-milliseconds mymaster 1000
        sentinel failover-timeout mymaster 5000
      CONF
      spawn_redis("#{dir}/sentinel.conf", "--sentinel")
      wait_for(timeout: 10, message: "the sentinel") { server_up?(@sentinel) && master_port_by_sentinel == @master }
      example.run
    ensure
      @pids.each do |pid|
        Process.kill(:TERM, pid)
        Process.wait(pid)
      rescue Errno::ESRCH, Errno::ECHILD
        nil
      end
    end
  end

  it "resolves the master through the sentinel and follows it across a failover" do
    b = new_bus(backend: :redis, redis_config: { url: "redis://mymaster", role: :master, db: 0,
                                                 sentinels: [{ host: "127.0.0.1", port: @sentinel }] })
    got = Queue.new
    b.subscribe("/sentinel") { |m| got << m.data }
    wait_for(timeout: 10, message: "the subscription") { b.backend_instance.subscribed }
    expect(b.publish("/sentinel", "before")).to be_a(Integer)
    expect(Timeout.timeout(5) { got.pop }).to eq("before")
    expect(cli(@master, "GET", "__mb_global_id_n")).to start_with("1")

    # The replica must be in sync and known to the sentinel to be promoted.
    wait_for(timeout: 30, message: "the replica to sync (sentinels learn replicas from INFO every 10 s)") do
      sleep 0.05
      cli(@replica, "INFO", "replication").include?("master_link_status:up") &&
        cli(@sentinel, "SENTINEL", "REPLICAS", "mymaster").include?(@replica.to_s)
    end
    wait_for(timeout: 20, message: "SENTINEL FAILOVER to be accepted") do
      sleep 0.1
      cli(@sentinel, "SENTINEL", "FAILOVER", "mymaster").start_with?("OK")
    end
    wait_for(timeout: 15, message: "the sentinel to name the replica master") do
      sleep 0.05
      master_port_by_sentinel == @replica
    end
    # The old master is demoted too (a write it accepted before would be lost
    # with it, as with any Sentinel client).
    wait_for(timeout: 15, message: "the old master to be demoted") do
      sleep 0.05
      cli(@master, "INFO", "replication").include?("role:slave")
    end

    expect(b.publish("/sentinel", "after")).to be_a(Integer).or be_nil
    expect(Timeout.timeout(15) { got.pop }).to eq("after")
    wait_for(timeout: 10, message: "the queue to flush") { b.backend_instance.queued_publishes.zero? }
    expect(cli(@replica, "ZCARD", "__mb_backlog_n_/sentinel").to_i).to eq(2)
  end

  it "rejects a replica role and a config without sentinels" do
    expect do
      MessageBus::Backends::Redis.sentinel_for(url: "redis://mymaster", role: :replica, sentinels: ["redis://h:1"])
    end.to raise_error(ArgumentError, /role/)
    expect { MessageBus::Backends::Redis.sentinel_for(url: "redis://mymaster", sentinels: []) }
      .to raise_error(ArgumentError, /without sentinels/)
  end

  it "builds the master URL (host: master name) and the sentinel URLs" do
    url, sentinels = MessageBus::Backends::Redis.sentinel_for(
      url: "redis://mymaster", db: 2, password: "pw", sentinel_password: "spw",
      sentinels: [{ host: "10.0.0.1", port: 26_380 }, { host: "10.0.0.2" }, "redis://10.0.0.3:5000"]
    )
    expect(url).to eq("redis://:pw@mymaster:6379/2")
    expect(sentinels).to eq(["redis://:spw@10.0.0.1:26380/0", "redis://:spw@10.0.0.2:26379/0", "redis://10.0.0.3:5000"])
  end
end
