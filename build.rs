//! Links the shipper binary with `link/startup.ld` on Linux: the code an idle shipper runs is
//! placed together, so that only it is resident (see `scripts/startup_order.py`).

use std::path::Path;

fn main() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/startup.ld");
    println!("cargo::rerun-if-changed={}", script.display());
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && script.is_file() {
        // An INSERT script adds to the linker's default layout (GNU ld and LLD alike).
        println!(
            "cargo::rustc-link-arg-bin=shipper=-Wl,-T,{}",
            script.display()
        );
    }
}
