//! Black-box tests of the engine through HTTP, each on SQLite and on PostgreSQL.

mod helpers;

mod audit;
mod bad_input;
mod concurrency;
mod contract;
mod delivery;
mod export;
mod faults;
mod hardening;
mod lifecycle;
mod limits;
mod media;
mod notifications;
mod payments;
mod privacy;
mod reads;
mod recording;
mod scaleout;
mod sqlite_load;
mod subscriptions;
