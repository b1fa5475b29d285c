# frozen_string_literal: true

require_relative "lib/message_bus/version"

Gem::Specification.new do |s|
  s.name = "message_bus"
  s.version = MessageBus::VERSION
  s.summary = "A reliable, robust messaging bus for Ruby processes and web clients, with a Rust core"
  s.description = "Drop-in replacement for the message_bus gem: server-to-server pub/sub with backlogs " \
                  "(memory, Redis, PostgreSQL) and long-polling web clients served from Rust."
  s.authors = ["message_bus contributors"]
  s.license = "MIT"
  s.required_ruby_version = ">= 3.1"
  s.files = Dir["lib/**/*.rb", "src/**/*.rs", "ext/message_bus/{extconf.rb,build_prerequisites.rb,build.rs,Cargo.toml}",
                "ext/message_bus/src/**/*.rs", "Cargo.toml", "Cargo.lock", "assets/*.{js,mjs}",
                # a workspace member: cargo needs its manifest to build the extension
                "bench/longpoll/Cargo.toml", "bench/longpoll/src/**/*.rs",
                "vendor/assets/javascripts/*.js", "README.md", "LICENSE", "docs/COMPATIBILITY.md"]
  s.extensions = ["ext/message_bus/extconf.rb"]
  s.require_paths = ["lib"]
  s.add_dependency "rack", ">= 1.1.3", "< 4"
  s.metadata["rubygems_mfa_required"] = "true"
end
