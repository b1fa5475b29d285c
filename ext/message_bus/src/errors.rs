//! The one place where core errors become Ruby exceptions. The exception
//! classes are defined in Ruby (lib/message_bus/errors.rb).

use magnus::{prelude::*, ExceptionClass, RModule, Ruby};
use message_bus_core::Error;

fn exception_class(ruby: &Ruby, path: &[&str]) -> Option<ExceptionClass> {
    let mut module: RModule = ruby.class_object().const_get(path[0]).ok()?;
    for name in &path[1..path.len() - 1] {
        module = module.const_get(*name).ok()?;
    }
    module.const_get(path[path.len() - 1]).ok()
}

pub fn to_ruby(ruby: &Ruby, error: Error) -> magnus::Error {
    let (path, fallback): (&[&str], ExceptionClass) = match &error {
        Error::InvalidMessage(_) => (&["MessageBus", "InvalidMessage"], ruby.exception_arg_error()),
        Error::Argument(_) => (&["ArgumentError"], ruby.exception_arg_error()),
        Error::Connection(_) => (&["MessageBus", "ConnectionError"], ruby.exception_runtime_error()),
        Error::Backend(_) => (&["MessageBus", "BackendError"], ruby.exception_runtime_error()),
        Error::Destroyed => (&["MessageBus", "BusDestroyed"], ruby.exception_runtime_error()),
        Error::Interrupted => (&["Interrupt"], ruby.exception_interrupt()),
    };
    let class = exception_class(ruby, path).unwrap_or(fallback);
    magnus::Error::new(class, error.to_string())
}
