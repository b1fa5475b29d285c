# frozen_string_literal: true

RSpec.describe "Other app servers", :integration do
  include ServerHelpers

  let(:interval) { { "MB_LONG_POLLING_INTERVAL" => "3000" } }

  def stream_one_message(server, client_id)
    socket = open_request(server.port, poll_request(client_id, form([["/srv", ""]])))
    read_until(socket, /7\r\n\[\]\r\n\|\r\n\r\n/)
    publish_via(server, "/srv", "hello #{client_id}")
    read_until(socket, /hello #{client_id}/)
  ensure
    socket&.close
  end

  it "long-polls with streaming under Unicorn (rack hijack)" do
    server = start_server(kind: :unicorn, env: interval)
    expect(stream_one_message(server, "unicorn")).to include(%("data":"hello unicorn"))
  end

  it "long-polls with streaming under Thin (its connection detached from EventMachine and handed to Rust)" do
    server = start_server(kind: :thin, env: interval)
    expect(stream_one_message(server, "thin")).to include(%("data":"hello thin"))
    publish_via(server, "/srv", "stored")
    raw = read_all(open_request(server.port, poll_request("thin2", form([["/srv", "0"]]), headers: { "Dont-Chunk" => "1" })))
    expect(JSON.parse(raw.split("\r\n\r\n", 2)[1]).map { |m| m["data"] }).to eq(["hello thin", "stored"])
    # waiting clients do not block Thin's single reactor thread
    waiting = Array.new(5) { |i| open_request(server.port, poll_request("wait#{i}", form([["/srv", ""]]))) }
    waiting.each { |s| read_until(s, /7\r\n\[\]/) }
    expect(http(server.port, "GET", "/elsewhere")[2]).to eq("app")
    waiting.each(&:close)
  end

  it "delivers across Puma cluster workers with the README's on_worker_boot, app not preloaded" do
    skip "the memory backend is per process; this runs on Redis and PostgreSQL" if SpecHelpers.backend_name == :memory

    server = start_server(workers: 2, threads: 2, env: interval.merge("MB_ECHO" => "1"))
    cluster_roundtrip(server)
    expect(File.read(server.log)).not_to match(/hook .* failed|NameError/)
  end

  it "delivers across Puma cluster workers with the app preloaded and no hook at all (the fork hook does after_fork's work)" do
    skip "the memory backend is per process; this runs on Redis and PostgreSQL" if SpecHelpers.backend_name == :memory

    new_bus
    no_hooks = File.expand_path("../apps/puma_no_hooks.rb", __dir__)
    server = start_server(workers: 2, threads: 2, flags: ["--preload", "-C", no_hooks],
                          env: interval.merge("MB_ECHO" => "1", "MB_RESET" => "0"))
    pids = cluster_roundtrip(server)
    # The app subscribed when it loaded, in the master: every worker's
    # subscription must deliver, though no worker called after_fork.
    publisher = MessageBus::Instance.new
    publisher.configure(SpecHelpers.backend_config.merge(logger: Logger.new(log_output), keepalive_interval: 0))
    (@buses ||= []) << publisher
    publisher.publish("/echo", "to every worker")
    pids.each do |pid|
      wait_for(timeout: 20, message: "the subscription of worker #{pid} delivering") do
        seen = JSON.parse(http(server.port, "GET", "/echoed")[2])
        seen["pid"] == pid && seen["data"].include?("to every worker")
      end
    end
  end

  def cluster_roundtrip(server)
    pids = wait_for(timeout: 20, message: "two distinct workers answering") do
      seen = Array.new(10) { http(server.port, "GET", "/pid")[2].to_i }.uniq
      seen if seen.length >= 2
    end
    expect(pids.length).to eq(2)
    3.times { |i| expect(stream_one_message(server, "cluster#{i}")).to include("hello cluster#{i}") }
    pids
  end
end
