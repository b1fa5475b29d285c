# frozen_string_literal: true

# Puma cluster mode as the README documents it. Without preload_app!, this
# file is read before the app (and message_bus) is loaded: hence the guard.
on_worker_boot { MessageBus.after_fork if defined?(MessageBus) }
