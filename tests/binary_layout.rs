//! The shipper binary is linked with `link/startup.ld` on Linux (see `build.rs`): the functions an
//! idle shipper runs sit together in their own section, before the rest of the code.
#![cfg(target_os = "linux")]

use std::path::Path;

/// Name, file offset and size of every section of a 64-bit little-endian ELF file.
fn sections(elf: &[u8]) -> Vec<(String, u64, u64)> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(
        (elf[4], elf[5]),
        (2, 1),
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let (table, entry, count, names) = (
        u64_at(0x28) as usize,
        u16_at(0x3a),
        u16_at(0x3c),
        u16_at(0x3e),
    );
    let header = |index: usize| table + index * entry;
    let strings = u64_at(header(names) + 0x18) as usize;
    (0..count)
        .map(|index| {
            let at = header(index);
            let name = &elf[strings + u32_at(at)..];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap()];
            (
                String::from_utf8_lossy(name).into_owned(),
                u64_at(at + 0x18),
                u64_at(at + 0x20),
            )
        })
        .collect()
}

#[test]
fn the_code_an_idle_shipper_runs_is_linked_together_before_the_rest() {
    let elf = std::fs::read(Path::new(env!("CARGO_BIN_EXE_shipper"))).unwrap();
    let sections = sections(&elf);
    if option_env!("SHIPPER_PLAIN_LINK") == Some("1") {
        // Built without the script on purpose: then nothing is placed.
        assert!(
            sections
                .iter()
                .all(|(name, _, _)| name != ".text.startup_first")
        );
        return;
    }
    let find = |wanted: &str| {
        sections
            .iter()
            .find(|(name, _, _)| name == wanted)
            .unwrap_or_else(|| panic!("no {wanted} section among {sections:?}"))
    };
    let (_, first_at, first_size) = find(".text.startup_first");
    let (_, text_at, _) = find(".text");
    assert!(first_at < text_at, "the start-up code comes before .text");
    // The patterns match: hundreds of functions, not a stray few (in any build profile).
    assert!(*first_size > 512 * 1024, "only {first_size} bytes placed");
}

/// The shared libraries the binary asks the loader for (its `DT_NEEDED` entries).
fn needed_libraries(elf: &[u8]) -> Vec<String> {
    let sections = sections(elf);
    let find = |wanted: &str| {
        let (_, at, size) = sections
            .iter()
            .find(|(name, _, _)| name == wanted)
            .unwrap_or_else(|| panic!("no {wanted} section"));
        &elf[*at as usize..(*at + *size) as usize]
    };
    let (dynamic, strings) = (find(".dynamic"), find(".dynstr"));
    dynamic
        .chunks_exact(16)
        .map(|entry| {
            let word = |at: usize| u64::from_le_bytes(entry[at..at + 8].try_into().unwrap());
            (word(0), word(8) as usize)
        })
        .take_while(|&(tag, _)| tag != 0)
        .filter(|&(tag, _)| tag == 1)
        .map(|(_, name)| {
            let name = &strings[name..];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap()];
            String::from_utf8_lossy(name).into_owned()
        })
        .collect()
}

#[test]
fn the_binary_does_not_load_libm() {
    // `pow`, the one libm function the process calls, is defined in the binary (src/main.rs).
    let elf = std::fs::read(Path::new(env!("CARGO_BIN_EXE_shipper"))).unwrap();
    let needed = needed_libraries(&elf);
    assert!(
        needed.iter().any(|name| name.starts_with("libc.so")),
        "{needed:?}"
    );
    assert!(
        !needed.iter().any(|name| name.starts_with("libm.so")),
        "{needed:?}"
    );
}
