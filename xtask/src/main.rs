//! `cargo xtask <verb>`: the project's build/boot/test automation, in Rust so it runs wherever cargo does.
//!
//! Each verb lives in its own module; this file only parses the command line and dispatches.

mod artefacts;
mod bench;
mod boot_disk;
mod cache_key;
mod cachebench;
mod client_vm;
mod demo;
mod docs_section;
mod hermit;
mod hermit_kernel;
mod hermit_tools;
mod host;
mod linux;
mod linux_appliance_vm;
mod linux_initramfs;
mod linux_kernel;
mod medians;
mod paths;
mod swapbench;
mod testing;
mod vmbench;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "tmem project automation")]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Build the appliance unikernel image (Hermit kernel + our loader + appliance ELF).
    Image(hermit::ImageArgs),
    /// Boot the appliance image in QEMU (TCG) with user networking forwarded to 127.0.0.1.
    RunAppliance(hermit::RunArgs),
    /// Build the client-side Linux kernel, the kclient module and the initramfs.
    ClientImage(linux::ClientImageArgs),
    /// Run your own program in the client VM, swapping to an appliance through kclient; prints
    /// kclient's counters afterwards.
    ClientVm(client_vm::ClientVmArgs),
    /// Run the whole test suite (what CI runs): format, lints, host tests, then VM tests.
    Test(testing::TestArgs),
    /// Build the VM images and run the QEMU tests (appliance VM, client VM with kclient).
    TestVm,
    /// Run the fuzz targets (protocol decoders, appliance server core) for a bounded time.
    Fuzz(testing::FuzzArgs),
    /// The main job end to end: appliance VM + client VM swapping to it, with a summary.
    Demo(demo::DemoArgs),
    /// Side-by-side benchmarks; results go to docs/benchmarks.md.
    Bench(bench::BenchArgs),
    /// Hermit appliance VM vs the same appliance as a Linux process in a Linux VM (QEMU TCG);
    /// results go to docs/benchmarks.md.
    VmBench(vmbench::VmBenchArgs),
}

fn main() -> Result<()> {
    match Cli::parse().verb {
        Verb::Image(args) => hermit::image(&args),
        Verb::RunAppliance(args) => hermit::run_appliance(&args),
        Verb::ClientImage(args) => linux::client_image(&args),
        Verb::ClientVm(args) => client_vm::client_vm(&args),
        Verb::Test(args) => testing::test(&args),
        Verb::TestVm => testing::test_vm(),
        Verb::Fuzz(args) => testing::fuzz(&args),
        Verb::Bench(args) => bench::bench(&args),
        Verb::VmBench(args) => vmbench::vm_bench(&args),
        Verb::Demo(args) => demo::demo(&args),
    }
}

#[cfg(test)]
mod tests {
    /// clap checks argument definitions (unique names, valid defaults) only when a command is
    /// built; do it here so a clash fails the fast suite, not a long benchmark run.
    #[test]
    fn command_line_definition_is_valid() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
