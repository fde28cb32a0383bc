//! Links the prebuilt Hermit kernel (`libhermit.a`, made by `cargo xtask image`) into the app when it
//! is built for Hermit. `TMEM_HERMIT_LIBDIR` names the directory holding the archive.

fn main() {
    println!("cargo:rerun-if-env-changed=TMEM_HERMIT_LIBDIR");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("hermit") {
        let dir = std::env::var("TMEM_HERMIT_LIBDIR").expect(
            "TMEM_HERMIT_LIBDIR must name the directory of libhermit.a (cargo xtask image sets it)",
        );
        println!("cargo:rerun-if-changed={dir}/libhermit.a");
        println!("cargo:rustc-link-search=native={dir}");
        println!("cargo:rustc-link-lib=static=hermit");
    }
}
