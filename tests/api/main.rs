//! Black-box tests: the real server on 127.0.0.1:0, a real channel, a real
//! data dir per test.

mod compression;
mod concurrency;
mod crash;
mod deadlines;
mod failures;
mod faults;
mod held_storage;
mod helpers;
mod lifecycle;
mod overload;
mod processes;
mod reads;
mod round_trip;
mod security;
mod server_process;
mod shutdown_load;
mod validation;
