//! Any bytes on the WireGuard UDP port (and the same bytes as a TUN packet) must be dropped and
//! counted, never panic: see `causeway_gateway::fuzzing::datagram`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    causeway_gateway::fuzzing::datagram(data);
});
