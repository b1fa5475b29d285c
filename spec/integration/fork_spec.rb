# frozen_string_literal: true

# Forked processes with real servers and real sockets (DESIGN "Fork
# safety"): a child holds none of its parent's hijacked client sockets (the
# fork hook closes them in the child only), the parent's clients keep getting
# their messages, clients of a process that exits see EOF, and a child that
# never calls MessageBus.after_fork still delivers to its subscribe blocks.
RSpec.describe "Forked and reforked processes", :integration do
  include ServerHelpers
  include ForkHelpers

  # Streaming long polls that have read their first chunk.
  def park_clients(port, count, prefix)
    Array.new(count) do |i|
      socket = open_request(port, poll_request("#{prefix}#{i}", form([["/held", ""]])))
      read_until(socket, /7\r\n\[\]\r\n\|\r\n\r\n/)
      socket
    end
  end

  def held_by(pid, inodes)
    (socket_inodes(pid) & inodes.to_set).size
  end

  def echoed_by(server, pid, mark, timeout: 20)
    wait_for(timeout: timeout, message: "#{mark.inspect} delivered to the subscription of worker #{pid}") do
      seen = JSON.parse(http(server.port, "GET", "/echoed")[2])
      seen["pid"] == pid && seen["data"].include?(mark)
    end
  end

  # A bus on the spec's store that does not empty it (the servers use it).
  def publisher
    @publisher ||= begin
      b = MessageBus::Instance.new
      b.configure(SpecHelpers.backend_config.merge(logger: Logger.new(log_output), keepalive_interval: 0))
      (@buses ||= []) << b
      b
    end
  end

  def shared_backend!
    skip "needs a backend shared by processes (Redis, PostgreSQL)" if SpecHelpers.backend_name == :memory
  end

  let(:env) { { "MB_LONG_POLLING_INTERVAL" => "40000", "MB_ECHO" => "1" } }

  it "a plain fork: the child holds none of the clients, delivers without after_fork; " \
     "the parent's clients get EOF when it exits", :aggregate_failures do
    server = start_server(threads: 4, env: env)
    clients = park_clients(server.port, 10, "plain")
    inodes = server_side_inodes(server.port, clients)
    expect(held_by(server.pid, inodes)).to eq(10)
    report = File.join(Dir.tmpdir, "mb-fork-probe-#{server.port}.json")
    # The forked child keeps a copy of this request's socket (Puma's, not a
    # hijacked one): read the answer by its length, not until EOF.
    probe_request = open_request(server.port, "GET /fork_probe?seconds=40&report=#{report} HTTP/1.1\r\nHost: x\r\n\r\n")
    child = read_until(probe_request, /\r\n\r\n\d+\z/)[/\d+\z/].to_i
    probe_request.close
    probe = wait_for(timeout: 20, message: "the forked child's report") { File.exist?(report) && JSON.parse(File.read(report)) }
    held = held_by(child, inodes)
    puts format("plain fork: parent holds %d client sockets, its forked child %d (%d sockets in all)",
                held_by(server.pid, inodes), held, socket_inodes(child).size)
    expect(held).to eq(0)
    expect(probe["delivered"]).to be(true), "the child's subscribe block ran without after_fork"
    publish_via(server, "/held", "after the fork")
    clients.each { |c| expect(read_until(c, /after the fork/)).to include("after the fork") }
    Process.kill(:TERM, server.pid) # the parent only: the child lives on
    eof = eof_count(clients, 15)
    puts format("plain fork: %d of 10 clients of the exiting parent saw EOF", eof)
    expect(eof).to eq(10)
  ensure
    begin
      Process.kill(:KILL, child) if child&.positive?
    rescue Errno::ESRCH
      nil
    end
    File.delete(report) if report && File.exist?(report)
  end

  it "Puma fork_worker, reforked with SIGURG: the new worker holds none of worker 0's clients, " \
     "and they see EOF when worker 0 exits", :aggregate_failures do
    shared_backend!
    new_bus # empties the store; the workers do not
    no_hooks = File.expand_path("../apps/puma_no_hooks.rb", __dir__)
    server = start_server(workers: 2, threads: 2, flags: ["--fork-worker=0", "-C", no_hooks],
                          env: env.merge("MB_RESET" => "0"))
    workers = wait_for(timeout: 20, message: "two workers") { (w = puma_workers(server.pid)).size == 2 && w }
    # Which worker accepts a connection is the kernel's choice: park more
    # until worker 0 holds some.
    of_worker0 = []
    5.times do |round|
      clients = park_clients(server.port, 30, "refork#{round}-")
      inodes = server_side_inodes(server.port, clients)
      of_worker0 += clients.zip(inodes).select { |_, inode| socket_inodes(workers[0]).include?(inode) }
      break unless of_worker0.empty?
    end
    expect(of_worker0).not_to be_empty
    expect(held_by(workers[1], of_worker0.map(&:last))).to eq(0)

    Process.kill(:URG, server.pid)
    reforked = wait_for(timeout: 30, message: "worker 1 reforked from worker 0") do
      (w = puma_workers(server.pid))[1] && w[1] != workers[1] && w[0] == workers[0] && w[1]
    end
    wait_for(timeout: 20, message: "the reforked worker answering") do
      Array.new(6) { http(server.port, "GET", "/pid")[2].to_i }.include?(reforked)
    end
    held = held_by(reforked, of_worker0.map(&:last))
    puts format("Puma fork_worker refork: worker 0 holds %d client sockets, the reforked worker 1 holds %d of them " \
                "(%d sockets in all)", of_worker0.size, held, socket_inodes(reforked).size)
    expect(held).to eq(0)

    # Worker 0's clients are served as before.
    publisher.publish("/held", "to worker 0's clients")
    of_worker0.each { |c, _| expect(read_until(c, /to worker 0's clients/)).to include("to worker 0's clients") }
    # When worker 0 exits, its clients see EOF: nobody else holds their sockets.
    Process.kill(:TERM, workers[0])
    eof = eof_count(of_worker0.map(&:first), 20)
    puts format("Puma fork_worker refork: %d of %d clients of the exiting worker 0 saw EOF", eof, of_worker0.size)
    expect(eof).to eq(of_worker0.size)
    # The reforked worker never called after_fork: its subscribe blocks still run.
    publisher.publish("/echo", "after the refork")
    echoed_by(server, reforked, "after the refork")
  end

  it "Unicorn with 2 workers and the app preloaded, without after_fork: both workers deliver" do
    shared_backend!
    new_bus
    server = start_server(kind: :unicorn, flags: ["-c", File.expand_path("../apps/unicorn_two_workers.rb", __dir__)],
                          env: env.merge("MB_RESET" => "0"))
    workers = wait_for(timeout: 20, message: "two Unicorn workers") { (w = descendants(server.pid)).size == 2 && w }
    publisher.publish("/echo", "to every worker")
    workers.each { |pid| echoed_by(server, pid, "to every worker") }
    clients = park_clients(server.port, 6, "unicorn")
    inodes = server_side_inodes(server.port, clients)
    holders = inodes.map { |inode| workers.select { |pid| socket_inodes(pid).include?(inode) } }
    expect(holders.map(&:size)).to all(eq(1))
    publisher.publish("/held", "to the unicorn clients")
    clients.each { |c| expect(read_until(c, /to the unicorn clients/)).to include("to the unicorn clients") }
    # A worker the master replaces holds none of the other worker's clients.
    Process.kill(:KILL, workers.first)
    respawned = wait_for(timeout: 20, message: "a respawned worker") { (descendants(server.pid) - workers).first }
    expect(held_by(respawned, inodes)).to eq(0)
    publisher.publish("/echo", "to the respawned worker")
    echoed_by(server, respawned, "to the respawned worker")
  end
end
