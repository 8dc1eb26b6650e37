//! Test-only: loopback stand-ins for the providers (Twilio messages, voice and video, SMTP, the
//! payment provider), shared by the integration tests of `consult-reactors` and `consult`.
//! A dev-dependency only; nothing in the product depends on it.

pub mod payments;
pub mod smtp;
pub mod twilio;
pub mod video;
