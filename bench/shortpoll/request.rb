# frozen_string_literal: true

# The bench's short poll as a Rack env, shared by the in-process benches:
# `%2Fbench=-1&__seq=1` with `?dlp=t`, or (`pending`) the same request as a
# non-chunked long poll of a hijackable server (`Connections#_poll_pending`),
# answered at once (`/__status`).
$LOAD_PATH.unshift(File.expand_path("../../lib", __dir__))
require "message_bus"
require "stringio"

module ShortPollRequest
  BODY = "%2Fbench=-1&__seq=1"

  def self.env(pending: false)
    env = { "REQUEST_METHOD" => "POST", "PATH_INFO" => "/message-bus/x/poll", "QUERY_STRING" => pending ? "" : "dlp=t",
            "CONTENT_TYPE" => "application/x-www-form-urlencoded", "rack.input" => StringIO.new(BODY.dup),
            "CONTENT_LENGTH" => BODY.bytesize.to_s }
    env.merge!("HTTP_DONT_CHUNK" => "true", "rack.hijack" => -> { raise "not hijacked" }) if pending
    env
  end
end
