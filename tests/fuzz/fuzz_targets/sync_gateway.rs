//! A broker's frames at the gateway: see `causeway::fuzzing::sync_gateway`. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    causeway::fuzzing::sync_gateway(data);
});
