//! The release binary is of a sane size: no DWARF debug info (with
//! `debug = 1` it was 102 MB). Runs in CI's release block
//! (`cargo test --release -- --ignored`); in a debug build there is nothing
//! to check.

/// Section names of a 64-bit little-endian ELF file (enough for Linux
/// x86_64/aarch64), or None when it is not one.
fn elf_sections(bytes: &[u8]) -> Option<Vec<String>> {
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |o: usize| -> Option<usize> {
        Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?) as usize)
    };
    let u32_at = |o: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?) as usize)
    };
    let u64_at = |o: usize| -> Option<usize> {
        Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?) as usize)
    };
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18)?;
    let mut names = Vec::new();
    for i in 0..shnum {
        let start = strtab + u32_at(header(i))?;
        let len = bytes.get(start..)?.iter().position(|b| *b == 0)?;
        names.push(String::from_utf8_lossy(&bytes[start..start + len]).into_owned());
    }
    Some(names)
}

#[test]
#[ignore = "checks the release profile: cargo test --release -- --ignored"]
fn release_binary_has_no_debug_info_and_a_sane_size() {
    if cfg!(debug_assertions) {
        eprintln!("a debug build: run with --release to check the release profile");
        return;
    }
    let exe = env!("CARGO_BIN_EXE_callhook");
    let bytes = std::fs::read(exe).unwrap();
    let mb = bytes.len() as f64 / (1024.0 * 1024.0);
    eprintln!("{exe}: {mb:.1} MiB");
    assert!(mb < 40.0, "release binary is {mb:.1} MiB");
    if let Some(sections) = elf_sections(&bytes) {
        let debug: Vec<&String> = sections
            .iter()
            .filter(|s| s.starts_with(".debug_"))
            .collect();
        assert!(debug.is_empty(), "debug sections left: {debug:?}");
        // Symbol names stay: backtraces and `perf` still name functions.
        assert!(sections.iter().any(|s| s == ".symtab"), "{sections:?}");
    }
}

#[test]
fn elf_reader_reads_this_test_binary() {
    let me = std::env::current_exe().unwrap();
    let bytes = std::fs::read(me).unwrap();
    if let Some(sections) = elf_sections(&bytes) {
        assert!(sections.iter().any(|s| s == ".text"), "{sections:?}");
    }
    assert_eq!(elf_sections(b"not an elf"), None);
}
