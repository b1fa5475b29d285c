# frozen_string_literal: true

# Writes a Makefile that builds the Rust extension with cargo (the rb_sys gem
# is not needed). `make` builds, `make install` copies the library to
# $(sitearchdir)/message_bus/, where `require "message_bus/message_bus_native"`
# finds it.

require "rbconfig"

root = File.expand_path("../..", __dir__)
dlext = RbConfig::CONFIG["DLEXT"]
lib_name = "libmessage_bus_native.#{RbConfig::CONFIG['host_os'] =~ /darwin/ ? 'dylib' : 'so'}"
target_dir = ENV.fetch("CARGO_TARGET_DIR", File.join(root, "target"))
profile = ENV.fetch("MESSAGE_BUS_CARGO_PROFILE", "release")
profile_dir = profile == "dev" ? "debug" : profile
cargo = ENV.fetch("CARGO", "cargo")

require_relative "build_prerequisites"

missing = MessageBusBuild.missing_prerequisites(cargo: cargo)
unless missing.empty?
  abort "message_bus: cannot build the native extension from source; missing:\n" \
        "#{missing.map { |line| "  * #{line}\n" }.join}" \
        "Or install the precompiled gem for your platform, which needs none of these (see the README)."
end

File.write("Makefile", <<~MAKE)
  CARGO = #{cargo}
  RUBY = #{RbConfig.ruby}
  TARGET_DIR = #{target_dir}
  BUILT = $(TARGET_DIR)/#{profile_dir}/#{lib_name}
  DLLIB = message_bus_native.#{dlext}
  sitearchdir ?= #{RbConfig::CONFIG['sitearchdir']}

  all: $(DLLIB)

  $(DLLIB): FORCE
  \tRUBY=$(RUBY) $(CARGO) build --profile #{profile} --manifest-path #{root}/Cargo.toml -p message_bus_native --target-dir $(TARGET_DIR)
  \tcp $(BUILT) $(DLLIB)

  install: $(DLLIB)
  \tmkdir -p $(sitearchdir)/message_bus
  \tcp $(DLLIB) $(sitearchdir)/message_bus/$(DLLIB)

  clean:
  \trm -f $(DLLIB)

  FORCE:

  .PHONY: all install clean FORCE
MAKE
