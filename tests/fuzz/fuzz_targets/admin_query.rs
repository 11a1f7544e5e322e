//! The admin API's explain query string: see `causeway::fuzzing::admin_query`. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    causeway::fuzzing::admin_query(data);
});
