// Exposes Ruby's version and configuration to the compiler (cfg flags magnus needs).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rb_sys_env::activate()?;
    Ok(())
}
