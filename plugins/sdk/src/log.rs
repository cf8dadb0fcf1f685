//! Leveled log messages. The host writes them to its `tracing` log tagged with the job id
//! and job type. Guest stdout is discarded (stderr only reaches a trap's message), so this
//! is the way to leave a trace.
//!
//! When the plugin traps, the job's error message starts with its last `error` message;
//! the SDK's panic hook uses [`error`] for exactly that.
//!
//! ```no_run
//! kiln_plugin::log::info(format!("splitting {} bytes", 42));
//! kiln_plugin::log::warn("the model's JSON did not parse; using text");
//! ```

use crate::bindings::kiln::plugin::log::Level;
use crate::host::log as write;

/// Writes a `trace` message.
pub fn trace(message: impl AsRef<str>) {
    write(Level::Trace, message.as_ref());
}

/// Writes a `debug` message.
pub fn debug(message: impl AsRef<str>) {
    write(Level::Debug, message.as_ref());
}

/// Writes an `info` message.
pub fn info(message: impl AsRef<str>) {
    write(Level::Info, message.as_ref());
}

/// Writes a `warn` message.
pub fn warn(message: impl AsRef<str>) {
    write(Level::Warn, message.as_ref());
}

/// Writes an `error` message; the job's error starts with the last one if the plugin then
/// traps.
pub fn error(message: impl AsRef<str>) {
    write(Level::Error, message.as_ref());
}
