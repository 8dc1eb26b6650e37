//! Black-box tests of the engine through HTTP, each on SQLite and on PostgreSQL.

mod helpers;

mod audit;
mod bad_input;
mod concurrency;
mod delivery;
mod export;
mod faults;
mod hardening;
mod lifecycle;
mod media;
mod notifications;
mod payments;
mod privacy;
mod reads;
mod scaleout;
mod subscriptions;
