//! Loopback stand-ins for the providers, shared by the integration tests.
//!
//! Each test file that needs them declares `mod fakes;`; not every file uses every item.
#![allow(dead_code)]

pub mod payments;
pub mod smtp;
pub mod twilio;
pub mod video;
