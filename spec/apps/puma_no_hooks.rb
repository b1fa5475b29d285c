# frozen_string_literal: true

# A Puma cluster without any message_bus hook (no on_worker_boot): the fork
# hook of message_bus must do what MessageBus.after_fork would.
