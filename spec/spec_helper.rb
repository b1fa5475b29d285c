# frozen_string_literal: true

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "message_bus"
require "timeout"

Dir[File.join(__dir__, "support", "**", "*.rb")].sort.each { |f| require f }

RSpec.configure do |config|
  config.expect_with(:rspec) { |c| c.syntax = :expect }
  config.disable_monkey_patching!
  config.order = :random
  Kernel.srand config.seed
  config.include SpecHelpers
  # Every example must finish in bounded time.
  config.around(:each) do |example|
    Timeout.timeout(ENV.fetch("SPEC_TIMEOUT", 60).to_i) { example.run }
  end
end
