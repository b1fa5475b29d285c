# frozen_string_literal: true

# The reference README's `MessageBus.configure(backend: :redis, url: ...)`
# silently uses the default Redis with both gems (only `redis_config` reaches
# Redis, COMPAT.md §9 Q16). Which Redis is used must not change (a mixed
# fleet must keep meeting on the same database), but the bus says so, once.
RSpec.describe "Configuration nothing reads" do
  def built(config)
    b = MessageBus::Instance.new
    b.configure({ logger: Logger.new(log_output), keepalive_interval: 0 }.merge(config))
    b.backend_instance
    (@warned ||= []) << b
    b
  end

  after { (@warned || []).each(&:destroy) }

  def warnings
    log_output.string.lines.grep(/WARN/)
  end

  it "warns once about top-level Redis keys, naming the Redis in use and the right spelling" do
    b = built(backend: :redis, url: "redis://:p4ssw0rd@10.0.1.1:6380/15", db: 15)
    b.backend_instance
    b.backend_instance
    expect(warnings.length).to eq(1)
    line = warnings.first
    expect(line).to include("redis://127.0.0.1:6379/0", "_message_bus_0")
    expect(line).to include('redis_config: { url: "redis://:***@10.0.1.1:6380/15", db: 15 }')
    expect(line).not_to include("p4ssw0rd")
    # nothing changed: the backend still points at the default Redis
    expect(MessageBus::Backends::Redis.url_for(b.redis_config)).to eq("redis://127.0.0.1:6379/0")
  end

  it "says nothing for a configuration that is read" do
    built(backend: :redis, redis_config: { url: "redis://127.0.0.1:6379", db: 9 }, long_polling_interval: 1000,
          clear_every: 2, site_id_lookup: -> { "s" })
    built(SpecHelpers.backend_config)
    expect(warnings).to eq([])
  end

  it "names keys nothing reads, backend attributes and PostgreSQL parameters at the wrong level" do
    built(backend: :memory, long_poling_interval: 1000, max_backlog_size: 10, enable_redis_logger: true)
    built(backend: :postgres, host: "db.example", backend_options: { host: "127.0.0.1" })
    text = warnings.join
    expect(text).to include(":long_poling_interval is not read by message_bus")
    expect(text).to include("backend_instance.max_backlog_size = 10")
    expect(text).to include("enable_redis_logger has no effect")
    expect(text).to include(":host is not read: PostgreSQL connection parameters go in backend_options")
  end
end
