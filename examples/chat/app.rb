# frozen_string_literal: true

# A small chat on message_bus, as a plain Rack app.
#
# Everything goes through the gem's public API:
#   * MessageBus.configure / MessageBus.user_id_lookup  (below)
#   * MessageBus::Rack::Middleware                       (config.ru)
#   * MessageBus.publish, MessageBus.backlog, MessageBus.last_id (the routes)
#
# Channels:
#   /chat/<room>  room messages, everyone
#   /private      direct messages, published with user_ids: [addressee]
#   /presence     the list of users seen, re-published when it changes

require "json"
require "time"
require "rack"
require "message_bus"

MessageBus.configure(backend: :memory)

# The web client's identity for user_ids targeting: the name chosen at login,
# kept in a cookie (an X-Chat-User header also works, handy with curl).
MessageBus.user_id_lookup do |env|
  Chat.current_user(env)
end

module Chat
  ROOMS = %w[general random ruby].freeze
  NAME = /\A[A-Za-z0-9_-]{1,24}\z/
  ROOM = /\A[a-z0-9_-]{1,32}\z/
  COOKIE = "chat_user"
  HISTORY = 50
  MAX_TEXT = 1000
  PUBLIC = File.expand_path("public", __dir__)

  def self.current_user(env)
    req = Rack::Request.new(env)
    name = req.cookies[COOKIE] || env["HTTP_X_CHAT_USER"]
    name if name.is_a?(String) && NAME.match?(name)
  end

  class App
    def initialize
      @users = {} # name => last seen (Time)
      @lock = Mutex.new
    end

    def call(env)
      req = Rack::Request.new(env)
      user = Chat.current_user(env)
      case [req.request_method, req.path_info]
      when ["GET", "/"], ["GET", "/index.html"] then file("index.html", "text/html; charset=utf-8")
      when ["GET", "/session"] then session(user)
      when ["POST", "/login"] then login(req)
      when ["POST", "/logout"] then logout
      when ["GET", "/users"] then json(users: users)
      when ["GET", "/history"] then user ? history(req, user) : forbidden
      when ["POST", "/message"] then user ? post_message(req, user) : forbidden
      when ["POST", "/private"] then user ? post_private(req, user) : forbidden
      else [404, { "content-type" => "text/plain" }, ["not found"]]
      end
    end

    private

    def session(user)
      seen(user) if user # e.g. a returning user after a server restart
      json(user: user, rooms: ROOMS, users: users)
    end

    def login(req)
      name = req.params["name"].to_s.strip
      return error(422, "a name is 1-24 letters, digits, _ or -") unless NAME.match?(name)

      seen(name)
      status, headers, body = json(user: name)
      Rack::Utils.set_cookie_header!(headers, COOKIE, value: name, path: "/", same_site: :lax, http_only: true)
      [status, headers, body]
    end

    def logout
      status, headers, body = json(user: nil)
      Rack::Utils.delete_cookie_header!(headers, COOKIE, path: "/")
      [status, headers, body]
    end

    # Recent messages of a room (or the user's private messages, room "@private"),
    # plus the id to subscribe from so that nothing published meanwhile is missed.
    def history(req, user)
      room = req.params["room"].to_s
      if room == "@private"
        channel = "/private"
        last_id = MessageBus.last_id(channel)
        messages = MessageBus.backlog(channel).select { |m| Array(m.user_ids).include?(user) }
      else
        return error(422, "bad room name") unless ROOM.match?(room)

        channel = "/chat/#{room}"
        last_id = MessageBus.last_id(channel)
        messages = MessageBus.backlog(channel)
      end
      messages = messages.last(HISTORY)
      last_id = messages.last.message_id if messages.any?
      json(channel: channel, last_id: last_id,
           messages: messages.map { |m| m.data.merge("id" => m.message_id) })
    end

    def post_message(req, user)
      room = req.params["room"].to_s
      text = req.params["text"].to_s.strip
      return error(422, "bad room name") unless ROOM.match?(room)
      return error(422, "empty or too long") if text.empty? || text.length > MAX_TEXT

      seen(user)
      id = MessageBus.publish("/chat/#{room}", { "user" => user, "text" => text, "at" => now })
      json(id: id)
    end

    # Only the addressee's web clients receive it (user_ids targeting); the
    # sender's page shows its own copy from this response.
    def post_private(req, user)
      to = req.params["to"].to_s
      text = req.params["text"].to_s.strip
      return error(422, "unknown user") unless NAME.match?(to)
      return error(422, "empty or too long") if text.empty? || text.length > MAX_TEXT

      seen(user)
      message = { "from" => user, "to" => to, "text" => text, "at" => now }
      id = MessageBus.publish("/private", message, user_ids: [to])
      json(message.merge("id" => id))
    end

    def seen(name)
      changed = @lock.synchronize do
        fresh = !@users.key?(name)
        @users[name] = Time.now
        fresh
      end
      MessageBus.publish("/presence", { "users" => users }) if changed
    end

    def users
      @lock.synchronize { @users.keys.sort }
    end

    def now
      Time.now.utc.iso8601
    end

    def file(name, type)
      [200, { "content-type" => type, "cache-control" => "no-cache" }, [File.read(File.join(PUBLIC, name))]]
    end

    def json(obj, status = 200)
      [status, { "content-type" => "application/json; charset=utf-8", "cache-control" => "no-store" },
       [JSON.generate(obj)]]
    end

    def error(status, message)
      json({ error: message }, status)
    end

    def forbidden
      error(403, "log in first")
    end
  end
end
