//! A gateway's frames at the broker: see `causeway::fuzzing::sync_broker`. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    causeway::fuzzing::sync_broker(data);
});
