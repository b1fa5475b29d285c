# frozen_string_literal: true

# A minimal Rails 6.1 application (no generators) for spec/rails/. The bus
# backend comes from MESSAGE_BUS_BACKEND; MB_API_ONLY=1 and MB_SKIP=1 switch
# the Railtie's middleware variants.
$LOAD_PATH.unshift(File.expand_path("../../../lib", __dir__))
require "logger"
require "json"
require "rails"
require "action_controller/railtie"
require "sprockets/railtie"
require "message_bus" # after Rails: loads MessageBus::Rails
require_relative "../../support/spec_helpers"

class RailsApp < Rails::Application
  config.root = __dir__
  config.eager_load = false
  config.logger = Logger.new($stderr, level: Logger::WARN)
  config.secret_key_base = "0" * 64
  config.hosts.clear
  config.api_only = ENV["MB_API_ONLY"] == "1"
  config.skip_message_bus_middleware = true if ENV["MB_SKIP"] == "1"
  config.assets.compile = true
  config.assets.debug = false

  json = ->(value) { [200, { "content-type" => "application/json" }, [JSON.generate(value)]] }
  routes.append do
    get "/middleware", to: ->(_env) { json.call(Rails.application.middleware.map(&:inspect)) }
    get "/info", to: lambda { |_env|
      json.call(logger_is_rails: MessageBus.logger.equal?(Rails.logger), allow_broadcast: MessageBus.allow_broadcast?,
                pid: Process.pid)
    }
    post "/publish", to: lambda { |env|
      req = JSON.parse(env["rack.input"].read)
      json.call(MessageBus.publish(req["channel"], req["data"]))
    }
  end
end

MessageBus.configure(SpecHelpers.backend_config.merge(
                       keepalive_interval: 0, long_polling_interval: Integer(ENV.fetch("MB_LONG_POLLING_INTERVAL", "15000"))
                     ))
