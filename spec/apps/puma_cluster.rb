# frozen_string_literal: true

# Puma cluster mode as the README documents it.
on_worker_boot { MessageBus.after_fork }
