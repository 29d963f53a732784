//! One link option for the server binary: `-z pack-relative-relocs` (DT_RELR).
//!
//! A position-independent binary carries one relocation per pointer in its read-only
//! data (about 15 000 here). As RELA entries they take 363 KiB, which the loader reads in
//! full at every start and which then stays resident. DT_RELR packs the same relocations
//! into a few KiB, so each process has that much less idle RSS (benches/memory.sh).
//! Only glibc 2.36 and later can load such a binary, while a plain build runs on 2.34
//! (RHEL 9, Amazon Linux 2023), so it is opt-in: `AUTH_SIDECAR_RELR=1`, set by the
//! container image (whose runtime is Debian 12, glibc 2.36) and by the benchmarks, which
//! measure what the image ships. It is skipped, with a warning, when this machine's glibc
//! is older or the build is for another target.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=AUTH_SIDECAR_RELR");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if std::env::var("AUTH_SIDECAR_RELR").as_deref() != Ok("1") {
        return;
    }
    if target == host && target.ends_with("-linux-gnu") && glibc_version() >= Some((2, 36)) {
        println!("cargo:rustc-link-arg-bin=auth-sidecar=-Wl,-z,pack-relative-relocs");
    } else {
        println!("cargo:warning=AUTH_SIDECAR_RELR=1 needs a native build on glibc >= 2.36; linking without DT_RELR");
    }
}

/// This machine's glibc, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn glibc_version() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let (major, minor) = text.split_whitespace().nth(1)?.split_once('.')?;
    let minor = minor.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
