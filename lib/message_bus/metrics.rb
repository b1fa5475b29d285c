# frozen_string_literal: true

module MessageBus
  # The bus's side of `MessageBus.metrics_text`: what only Ruby sees
  # (subscriber blocks and their exceptions, the backend's publish queue),
  # handed to the Rust core with the web clients of every live middleware,
  # which renders the whole scrape in the OpenMetrics text format.
  module Metrics
    # The content type of `metrics_text` (OpenMetrics 1.0, which Prometheus
    # scrapes and negotiates).
    CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

    # This process's metrics as OpenMetrics text (ends with `# EOF`).
    def metrics_text
      backend = @config[:backend_instance]
      values = {
        queue_depth: backend.respond_to?(:queued_publishes) ? backend.queued_publishes : 0,
        queue_dropped: backend.respond_to?(:dropped_publishes) ? backend.dropped_publishes : 0,
        subscriber_blocks: @subscriber_blocks_run || 0,
        subscriber_errors: @subscriber_errors || 0,
        log_lines_dropped: log_limiter.suppressed_total
      }
      connections = middlewares.filter_map(&:native_connections)
      MessageBus::Native._metrics_text(metrics_backend_name(backend), values, connections)
    end

    # Latency histograms (publish duration, arrival → socket write) cost a
    # clock read per publish and per socket write; counters always count.
    # Process-wide: it applies to every bus of the process.
    def latency_metrics=(enabled)
      MessageBus::Native._latency_metrics = enabled ? true : false
    end

    private

    def metrics_backend_name(backend)
      return nil unless backend.respond_to?(:native) && backend.native

      kind = %w[Memory Redis Postgres].find do |name|
        MessageBus::Backends.const_defined?(name, false) && backend.is_a?(MessageBus::Backends.const_get(name, false))
      end
      kind&.downcase
    end

    def count_subscriber_block(failed)
      @subscriber_blocks_run = (@subscriber_blocks_run || 0) + 1
      @subscriber_errors = (@subscriber_errors || 0) + 1 if failed
    end
  end
end
