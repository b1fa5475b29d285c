# frozen_string_literal: true

require "open3"
require "rbconfig"

RSpec.describe "Rails integration (Rails 6.1 app)", :integration do
  include ServerHelpers

  let(:rails_app) { File.expand_path("../apps/rails_app", __dir__) }
  let(:root) { File.expand_path("../..", __dir__) }

  # Boots the app in a separate process, like `rails runner`.
  def runner(*args, env: {})
    env = { "RAILS_ENV" => "test", "MESSAGE_BUS_BACKEND" => SpecHelpers.backend_name.to_s }.merge(env)
    out, err, status = Open3.capture3(env, RbConfig.ruby, File.join(rails_app, "runner.rb"), *args)
    raise "runner #{args.inspect} failed: #{err}" unless status.success?

    out
  end

  # GET returning parsed JSON; Rails answers with chunked transfer encoding.
  def get_json(port, path)
    status, head, body = http(port, "GET", path)
    raise "GET #{path}: #{status}" unless status == 200
    return JSON.parse(body) unless head.match?(/^transfer-encoding: chunked/i)

    dechunked = +""
    rest = body
    while (m = rest.match(/\A([0-9a-f]+)\r\n/i)) && m[1].to_i(16).positive?
      dechunked << rest[m[0].length, m[1].to_i(16)]
      rest = rest[(m[0].length + m[1].to_i(16) + 2)..]
    end
    JSON.parse(dechunked)
  end

  def position_of_bus(stack)
    [stack.index("MessageBus::Rack::Middleware"), stack.index("ActionDispatch::Flash")]
  end

  it "inserts the middleware right before ActionDispatch::Flash" do
    bus, flash = position_of_bus(JSON.parse(runner("middleware")))
    expect(flash).not_to be_nil
    expect(bus).to eq(flash - 1)
  end

  it "appends the middleware in an API-only app, and skips it with config.skip_message_bus_middleware" do
    api = JSON.parse(runner("middleware", env: { "MB_API_ONLY" => "1" }))
    expect(api.last).to eq("MessageBus::Rack::Middleware")
    expect(api).not_to include("ActionDispatch::Flash")
    expect(JSON.parse(runner("middleware", env: { "MB_SKIP" => "1" }))).not_to include("MessageBus::Rack::Middleware")
  end

  it "serves message-bus.js, message-bus-ajax.js and the ES module build through the asset pipeline, identical to assets/" do
    { "message-bus.js" => "message-bus.js", "message-bus-ajax.js" => "message-bus-ajax.js",
      "message-bus-esm.js" => "message-bus.mjs" }.each do |name, original|
      source = File.read(File.join(root, "assets", original))
      expect(File.read(File.join(root, "vendor/assets/javascripts", name))).to eq(source), "run `bin/build-assets`"
      # Sprockets re-emits the leading comment block followed by a blank line.
      expect(runner("asset", name).lines.reject { |l| l.strip.empty? }).to eq(source.lines.reject { |l| l.strip.empty? })
    end
  end

  it "runs under Puma: middleware position, Rails logger, broadcast in test, long polling with a published message" do
    server = start_server(app: File.join(rails_app, "config.ru"), env: { "RAILS_ENV" => "test" })
    bus, flash = position_of_bus(get_json(server.port, "/middleware"))
    expect(bus).to eq(flash - 1)
    expect(get_json(server.port, "/info")).to include("logger_is_rails" => true, "allow_broadcast" => true)

    socket = open_request(server.port, poll_request("rails-client", form([["/rails", "-1"]])))
    read_until(socket, %r{/__status.*\r\n\|\r\n\r\n}m) # the stream has started
    if SpecHelpers.backend_name == :memory
      # The memory backend lives in the server process: publish there.
      publish_via(server, "/rails", "from the app")
      expected = "from the app"
    else
      runner("publish", "/rails", "from another process")
      expected = "from another process"
    end
    payload = read_until(socket, /#{expected}/)
    expect(payload).to include(%("channel":"/rails","data":"#{expected}"))
  ensure
    socket&.close
  end
end
