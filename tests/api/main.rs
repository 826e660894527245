//! Black-box tests: the real server on 127.0.0.1:0, a real channel, a real
//! data dir per test.

mod concurrency;
mod failures;
mod helpers;
mod lifecycle;
mod processes;
mod reads;
mod round_trip;
mod security;
mod validation;
