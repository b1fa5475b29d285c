# frozen_string_literal: true

module MessageBus
  # A message as subscribers see it. A Struct of the four stored fields, as in
  # the reference 4.5.2 release (equality compares those four), plus the
  # decoded site and targets.
  class Message < Struct.new(:global_id, :message_id, :channel, :data)
    PIPE_ESCAPE = "$$123$$"

    attr_accessor :site_id, :user_ids, :group_ids, :client_ids

    # Parses the wire string `<global_id>|<message_id>|<channel>|<data>`.
    def self.decode(encoded)
      global_id, message_id, channel, data = encoded.split("|", 4)
      raise ArgumentError, "not a message_bus wire string: #{encoded[0, 80].inspect}" if data.nil?

      new(global_id.to_i, message_id.to_i, channel.gsub(PIPE_ESCAPE, "|"), data)
    end

    def encode
      "#{global_id}|#{message_id}|#{encode_without_ids}"
    end

    def encode_without_ids
      "#{channel.gsub('|', PIPE_ESCAPE)}|#{data}"
    end
  end
end
