//! The `causeway` binary: CLI → Config → run. Nothing else.

fn main() {
    println!("causeway {}", env!("CARGO_PKG_VERSION"));
}
