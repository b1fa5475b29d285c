# frozen_string_literal: true

# Run by bin/gem-smoke with an installed gem (GEM_HOME set, outside the
# checkout): the gem loads from GEM_HOME, a publish reaches a subscriber,
# and a long poll through a real Puma running the README's quickstart app
# receives a message published by a request to it.
#   ruby smoke.rb path/to/config.ru
require "socket"
require "timeout"
require "rbconfig"

gem "message_bus"
require "message_bus"

native = $LOADED_FEATURES.grep(/message_bus_native/).first
raise "the extension was loaded from #{native}, not from GEM_HOME" unless native&.start_with?(ENV.fetch("GEM_HOME"))
raise "MessageBus::RUST_CORE missing" unless MessageBus::RUST_CORE

MessageBus.configure(backend: :memory)
got = Queue.new
MessageBus.subscribe("/smoke") { |m| got << m.data }
MessageBus.publish("/smoke", "round trip")
Timeout.timeout(10) { raise "subscriber got #{got.pop.inspect}" unless got.pop == "round trip" }

def free_port
  server = TCPServer.new("127.0.0.1", 0)
  server.addr[1]
ensure
  server&.close
end

def request(port, text)
  socket = TCPSocket.new("127.0.0.1", port)
  socket.write(text)
  socket
end

port = free_port
puma = Process.spawn(RbConfig.ruby, "-S", "puma", "-b", "tcp://127.0.0.1:#{port}", "-t", "2:2", ARGV.fetch(0),
                     out: File::NULL, err: File::NULL)
begin
  Timeout.timeout(30) do
    TCPSocket.new("127.0.0.1", port).close
  rescue SystemCallError
    sleep 0.05
    retry
  end
  # Last id 0: the poll gets what was published after 0 whenever it was published, so
  # it does not matter whether the publish below comes before or after it is parked.
  body = "/hello=0"
  poll = request(port, "POST /message-bus/smoke-client/poll HTTP/1.1\r\nHost: x\r\nDont-Chunk: 1\r\n" \
                       "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: #{body.bytesize}\r\n\r\n#{body}")
  published = request(port, "GET /?long+poll HTTP/1.0\r\n\r\n").read
  raise "the app answered #{published.inspect}" unless published.end_with?("published\n")

  answer = Timeout.timeout(30) { poll.read }
  raise "long poll answered #{answer.inspect}" unless answer.start_with?("HTTP/1.1 200") && answer.include?('"data":"long poll"')
ensure
  Process.kill("TERM", puma)
  Process.wait(puma)
end
puts "gem smoke test: message_bus #{MessageBus::VERSION} from #{File.dirname(native)}: " \
     "publish/subscribe and a long poll through Puma work"
