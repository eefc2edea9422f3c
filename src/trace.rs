//! `tracing` events through one crate-internal macro, `emit!`.
//!
//! With the `tracing` feature, `emit!(LEVEL, fields…, "message")` is
//! `tracing::event!` at that level, with the calling module as its target.
//! Without it the macro expands to nothing: its arguments are not even
//! evaluated, so an event in the machines costs nothing when the feature is
//! off. Use it only as a statement, and only with values the code has
//! anyway.

#[cfg(feature = "tracing")]
macro_rules! emit {
    ($level:ident, $($arg:tt)+) => {
        ::tracing::event!(::tracing::Level::$level, $($arg)+)
    };
}

#[cfg(not(feature = "tracing"))]
macro_rules! emit {
    ($level:ident, $($arg:tt)+) => {};
}
