# frozen_string_literal: true

# Unicorn with two workers and the app preloaded in the master, and no
# after_fork hook: the fork hook of message_bus must do what it would.
worker_processes 2
preload_app true
timeout 60
