//! Links the shipper binary with `link/startup.ld` on Linux: the code an idle shipper runs is
//! placed together, so that only it is resident (see `scripts/startup_order.py`). GNU ld and LLD
//! read the script; `SHIPPER_PLAIN_LINK=1` leaves it out (for a linker that cannot, such as mold).

use std::path::Path;

fn main() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/startup.ld");
    println!("cargo::rerun-if-changed={}", script.display());
    println!("cargo::rerun-if-env-changed=SHIPPER_PLAIN_LINK");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let plain = std::env::var("SHIPPER_PLAIN_LINK").is_ok_and(|v| v == "1");
    if linux && !plain && script.is_file() {
        // An INSERT script adds to the linker's default layout instead of replacing it.
        println!(
            "cargo::rustc-link-arg-bin=shipper=-Wl,-T,{}",
            script.display()
        );
    }
}
