# frozen_string_literal: true

RSpec.describe "MessageBus configuration" do
  let(:b) { MessageBus::Instance.new }

  it "has the reference defaults" do
    expect(b.long_polling_enabled?).to be(true)
    expect(b.long_polling_interval).to eq(25_000)
    expect(b.chunked_encoding_enabled?).to be(true)
    expect(b.rack_hijack_enabled?).to be(true)
    expect(b.max_active_clients).to eq(1000)
    expect(b.base_route).to eq("/")
    expect(b.allow_broadcast?).to be(false)
    expect(b.keepalive_interval).to eq(60)
    expect(b.transport_codec).to be_a(MessageBus::Codec::Json)
    expect(b.backend).to eq(:redis)
    expect(b.redis_config).to eq({})
    expect(b.client_message_filters).to eq([])
    expect(b.logger).to be_a(Logger)
    expect(b.logger.level).to eq(Logger::INFO)
  end

  it "has a setter for every option, also reachable through configure and config" do
    b.long_polling_enabled = false
    b.long_polling_interval = 1000
    b.chunked_encoding_enabled = false
    b.rack_hijack_enabled = false
    b.max_active_clients = 5
    b.allow_broadcast = true
    b.keepalive_interval = 30
    expect([b.long_polling_enabled?, b.long_polling_interval, b.chunked_encoding_enabled?, b.rack_hijack_enabled?,
            b.max_active_clients, b.allow_broadcast?, b.keepalive_interval]).to eq([false, 1000, false, false, 5, true, 30])
    b.configure(long_polling_interval: 2000)
    expect(b.long_polling_interval).to eq(2000)
    b.config[:max_active_clients] = 7
    expect(b.max_active_clients).to eq(7)
  end

  it "disables long polling and chunking only with a literal false" do
    b.configure(long_polling_enabled: nil, chunked_encoding_enabled: nil)
    expect([b.long_polling_enabled?, b.chunked_encoding_enabled?]).to eq([true, true])
  end

  it "normalises base_route" do
    cases = { "my/base/route" => "/my/base/route/", "//my///base/route" => "/my/base/route/", "" => "/", "/x/" => "/x/" }
    cases.each do |given, route|
      b.base_route = given
      expect(b.base_route).to eq(route)
    end
  end

  it "stores hooks given as blocks and returns them without a block" do
    %i[site_id_lookup user_id_lookup group_ids_lookup is_admin_lookup extra_response_headers_lookup
       on_middleware_error on_connect on_disconnect].each do |hook|
      expect(b.public_send(hook)).to be_nil
      blk = proc { hook }
      expect(b.public_send(hook, &blk)).to equal(blk)
      expect(b.public_send(hook)).to equal(blk)
      expect(b.config[hook]).to equal(blk)
    end
  end

  it "registers client message filters in order, ignoring calls without a block" do
    f = proc { true }
    b.register_client_message_filter("/a", &f)
    b.register_client_message_filter("/b")
    expect(b.client_message_filters).to eq([["/a", f]])
  end

  it "redis_config= also selects the redis backend" do
    b.redis_config = { url: "redis://127.0.0.1:6379/3" }
    expect(b.backend).to eq(:redis)
    expect(b.redis_config).to eq({ url: "redis://127.0.0.1:6379/3" })
  end

  it "an explicit allow_broadcast = false sticks (§9 Q38)" do
    b.allow_broadcast = false
    expect(b.allow_broadcast?).to be(false)
  end

  it "builds the configured backend lazily, once, with backend_options defaulted" do
    b.configure(backend: :memory)
    first = b.backend_instance
    expect(first).to be_a(MessageBus::Backends::Memory)
    expect(b.backend_instance).to equal(first)
    expect(b.config[:backend_options]).to eq({})
    expect(MessageBus::BACKENDS[:memory]).to eq(MessageBus::Backends::Memory)
    b.destroy
  end

  it "accepts an explicit backend_instance and the deprecated reliable_pub_sub aliases" do
    backend = MessageBus::Backends::Memory.new({})
    b.logger = Logger.new(log_output)
    b.reliable_pub_sub = backend
    expect(b.backend_instance).to equal(backend)
    expect(b.reliable_pub_sub).to equal(backend)
    expect(log_output.string).to include("deprecated")
    b.destroy
  end

  it "raises a clear error for an unknown backend" do
    b.configure(backend: :nonexistent)
    expect { b.backend_instance }.to raise_error(ArgumentError, /unknown message_bus backend/)
  end

  it "logs through the configured logger" do
    b.logger = Logger.new(log_output)
    b.configure(backend: :memory)
    b.subscribe("/x") { raise "from subscriber" }
    b.publish("/x", 1)
    wait_for { log_output.string.include?("from subscriber") }
    b.destroy
  end

  it "exposes the version, the Implementation module and the backend registry" do
    version = Gem::Version.new(MessageBus::VERSION)
    expect(version).to be > Gem::Version.new("4.5.2")
    expect(Gem::Requirement.new("~> 4.5")).to be_satisfied_by(version)
    expect(version).not_to be_prerelease
    expect(MessageBus::VERSION).to start_with("#{MessageBus::REFERENCE_VERSION}.")
    expect(MessageBus::RUST_CORE).to be(true)
    expect(MessageBus.singleton_class.include?(MessageBus::Implementation)).to be(true)
    expect(MessageBus::Instance.include?(MessageBus::Implementation)).to be(true)
  end
end
