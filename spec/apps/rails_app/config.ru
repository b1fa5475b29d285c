# frozen_string_literal: true

require_relative "application"
Rails.application.initialize!
MessageBus.reset! if ENV["MB_RESET"] == "1"
run Rails.application
