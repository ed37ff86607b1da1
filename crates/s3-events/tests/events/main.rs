//! Notification parsing: every captured fixture, malformed input named precisely, and no input
//! that panics (property tests).

mod fixtures;
mod malformed;
mod never_panics;
