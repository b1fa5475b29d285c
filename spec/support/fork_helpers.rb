# frozen_string_literal: true

require "set"

# Who holds which TCP connection, read from /proc (as `ss -tnp` does): the
# server-side socket of a client connection, found by its ports in
# /proc/net/tcp, and the sockets in a process's descriptor table.
module ForkHelpers
  # Socket inodes in /proc/<pid>/fd.
  def socket_inodes(pid)
    Dir.glob("/proc/#{pid}/fd/*").filter_map do |fd|
      File.readlink(fd)[/\Asocket:\[(\d+)\]\z/, 1]&.to_i
    rescue SystemCallError
      nil
    end.to_set
  end

  # Inodes of the server side of each client socket (connected to `port`).
  def server_side_inodes(port, clients)
    wanted = clients.to_h { |c| [c.local_address.ip_port, c] }
    found = {}
    %w[/proc/net/tcp /proc/net/tcp6].each do |table|
      next unless File.exist?(table)

      File.readlines(table).drop(1).each do |line|
        fields = line.split
        local_port = fields[1].split(":").last.to_i(16)
        remote_port = fields[2].split(":").last.to_i(16)
        inode = fields[9].to_i
        next unless local_port == port && wanted.key?(remote_port) && inode.positive?

        found[wanted[remote_port]] = inode
      end
    end
    clients.map { |c| found.fetch(c) { raise "no server-side socket for client port #{c.local_address.ip_port}" } }
  end

  def descendants(pid)
    children = Dir.glob("/proc/[0-9]*/stat").filter_map do |stat|
      fields = File.read(stat).split(") ").last.split
      stat[%r{/proc/(\d+)/}, 1].to_i if fields[1].to_i == pid
    rescue SystemCallError
      nil
    end
    children + children.flat_map { |c| descendants(c) }
  end

  # Puma cluster workers: index → pid (from their process titles).
  def puma_workers(master)
    descendants(master).filter_map do |pid|
      title = File.read("/proc/#{pid}/cmdline").tr("\0", " ")
      index = title[/cluster worker (\d+):/, 1]
      [index.to_i, pid] if index
    rescue SystemCallError
      nil
    end.to_h
  end

  # How many of `sockets` see EOF (their peer closed) within `timeout`.
  def eof_count(sockets, timeout)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    open = sockets.dup
    count = 0
    until open.empty?
      remaining = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      break if remaining <= 0

      ready, = IO.select(open, nil, nil, remaining)
      (ready || []).each do |socket|
        chunk = begin
          socket.read_nonblock(65_536, exception: false)
        rescue SystemCallError, IOError
          nil
        end
        next if chunk.is_a?(String) || chunk == :wait_readable

        count += 1
        open.delete(socket)
      end
    end
    count
  end
end
