# frozen_string_literal: true

module MessageBus
  # Rails integration, loaded by `require "message_bus"` when Rails::Engine is
  # defined (COMPAT.md §1.15).
  module Rails
    # Exposes the browser client to the asset pipeline as `message-bus` and
    # `message-bus-ajax`, and the ES module build as `message-bus-esm` for
    # importmap/Propshaft (vendor/assets/javascripts/, made by bin/build-assets).
    class Engine < ::Rails::Engine; end

    # Inserts the middleware before ActionDispatch::Flash (appends it in API-only
    # apps; skipped when `config.skip_message_bus_middleware` is truthy) and
    # logs through the Rails logger.
    class Railtie < ::Rails::Railtie
      initializer "message_bus.configure_init" do |app|
        MessageBus::Rails::Railtie.insert_middleware(app)
        MessageBus.logger = ::Rails.logger if ::Rails.logger
      end

      def self.insert_middleware(app)
        config = app.config
        return if config.respond_to?(:skip_message_bus_middleware) && config.skip_message_bus_middleware

        if config.respond_to?(:api_only) && config.api_only
          app.middleware.use(MessageBus::Rack::Middleware)
        else
          app.middleware.insert_before(ActionDispatch::Flash, MessageBus::Rack::Middleware)
        end
      end
    end
  end
end
