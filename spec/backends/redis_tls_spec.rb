# frozen_string_literal: true

require "open3"
require "tmpdir"
require "message_bus/backends/redis"

# A private redis-server speaking TLS only (self-signed certificate), started
# and stopped by pid: the Redis backend connects with rediss://.
RSpec.describe "Redis backend over TLS" do
  include ServerHelpers

  around do |example|
    Dir.mktmpdir("mb-tls") do |dir|
      @dir = dir
      _, status = Open3.capture2e("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                                  "-subj", "/CN=127.0.0.1", "-keyout", "#{dir}/key.pem", "-out", "#{dir}/cert.pem")
      raise "openssl could not make a test certificate" unless status.success?

      @port = free_port
      @pid = Process.spawn("redis-server", "--port", "0", "--tls-port", @port.to_s, "--tls-cert-file", "#{dir}/cert.pem",
                           "--tls-key-file", "#{dir}/key.pem", "--tls-ca-cert-file", "#{dir}/cert.pem",
                           "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", dir,
                           out: File::NULL, err: File::NULL)
      wait_for(timeout: 10, message: "TLS redis-server on #{@port}") { server_up?(@port) }
      example.run
    ensure
      if @pid
        Process.kill(:TERM, @pid)
        Process.wait(@pid)
      end
    end
  end

  it "publishes, reads and subscribes over rediss://" do
    b = new_bus(backend: :redis, redis_config: { url: "rediss://127.0.0.1:#{@port}/0",
                                                 ssl_params: { verify_mode: 0 } })
    got = Queue.new
    b.subscribe("/tls") { |m| got << m.data }
    b.publish("/tls", "secret")
    expect(Timeout.timeout(5) { got.pop }).to eq("secret")
    expect(b.backlog("/tls").map(&:data)).to eq(["secret"])
  end

  it "refuses a server whose certificate it cannot verify, with a clear error" do
    b = MessageBus::Instance.new
    b.configure(backend: :redis, redis_config: { host: "127.0.0.1", port: @port, ssl: true }, logger: Logger.new(nil))
    expect { b.publish("/tls", "x") }.to raise_error(MessageBus::BackendError, /certificate verify failed/)
  ensure
    b&.destroy
  end

  it "skips verification only when ssl_params say VERIFY_NONE" do
    url = MessageBus::Backends::Redis.url_for(ssl: true, port: @port, ssl_params: { verify_mode: 0 })
    expect(url).to eq("rediss://127.0.0.1:#{@port}/0#insecure")
    expect(MessageBus::Backends::Redis.url_for(ssl: true, port: @port)).to eq("rediss://127.0.0.1:#{@port}/0")
  end
end
