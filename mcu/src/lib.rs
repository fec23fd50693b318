//! Sans-IO core of the MCU: multi-picture layouts, composition (scaling, placeholders,
//! speaking border, CJK name labels), mixing modes (voice-activated, host-fixed, roll
//! call 点名, polling 轮询), per-meeting video engine with encoders shared between
//! terminals of equal settings, and the audio mixer.
//!
//! Nothing here reads a clock or spawns a thread: `now` is an argument, so a shell decides
//! when to tick and tests run on virtual time. [`participant`] is the MCU as a client of
//! the SFU (signalling + two str0m peer connections, still sans-IO); [`shell`] is the
//! one place that owns sockets and reads the clock.

pub mod audio;
pub mod compose;
pub mod engine;
pub mod error;
pub mod layout;
pub mod mode;
pub mod participant;
pub mod picture;
pub mod shell;
pub mod text;

pub use error::Error;
