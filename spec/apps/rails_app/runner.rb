# frozen_string_literal: true

# What `rails runner` does: boot the app in this process, then run one command.
#   runner.rb middleware           prints the middleware stack as JSON
#   runner.rb publish CHANNEL DATA publishes (Redis/PostgreSQL reach the server)
#   runner.rb asset NAME           prints the asset pipeline's source of NAME
require_relative "application"
Rails.application.initialize!

case ARGV[0]
when "middleware" then puts JSON.generate(Rails.application.middleware.map(&:inspect))
when "publish" then puts MessageBus.publish(ARGV[1], ARGV[2])
when "asset" then print Rails.application.assets[ARGV[1]].to_s
else abort "unknown command #{ARGV[0].inspect}"
end
