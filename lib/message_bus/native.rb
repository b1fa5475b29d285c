# frozen_string_literal: true

require "rbconfig"

module MessageBus
  # Loads the Rust extension. A precompiled (platform) gem carries
  # `message_bus/precompiled.rb`, written when the gem was built, naming the
  # Ruby ABI and platform its library was compiled for; loading that library
  # into another Ruby would crash or fail with an obscure symbol error, so a
  # mismatch is refused here with a message that says what to install.
  module Native
    PRECOMPILED = File.join(__dir__, "precompiled.rb")

    def self.check_precompiled!(built_for, ruby_abi: RbConfig::CONFIG["ruby_version"], platform: Gem::Platform.local.to_s)
      return if built_for[:ruby_abi] == ruby_abi && built_for[:platform] == platform

      raise LoadError, "message_bus #{MessageBus::VERSION}: this precompiled gem was built for Ruby ABI " \
                       "#{built_for[:ruby_abi]} on #{built_for[:platform]}, but this is Ruby #{RUBY_VERSION} " \
                       "(ABI #{ruby_abi}) on #{platform}. Install the gem for this Ruby and platform, or the " \
                       "source gem (`gem install message_bus --platform ruby`, needs cargo and libclang)."
    end
  end
end

if File.exist?(MessageBus::Native::PRECOMPILED)
  require MessageBus::Native::PRECOMPILED
  MessageBus::Native.check_precompiled!(MessageBus::Native::PRECOMPILED_FOR)
end
require "message_bus/message_bus_native"
