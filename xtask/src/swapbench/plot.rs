//! `docs/swap-bench.png`: drawn by matplotlib from the results CSV (the script is `plot.py`).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Result;

use crate::host::{run, step};

/// The plotting script, kept as a Python file next to this one.
const PLOT_PY: &str = include_str!("plot.py");

/// Draws `png` from `work/results.csv` with matplotlib (installed with pip if missing).
pub(super) fn plot(work: &Path, png: &Path, vm_mib: u64) -> Result<()> {
    let python = "python3";
    let has_mpl = Command::new(python)
        .args(["-c", "import matplotlib"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_mpl {
        step("installing matplotlib (pip)");
        run(Command::new(python).args(["-m", "pip", "install", "-q", "matplotlib"]))?;
    }
    let script = work.join("plot.py");
    std::fs::write(&script, PLOT_PY)?;
    run(Command::new(python)
        .arg(&script)
        .arg(work.join("results.csv"))
        .arg(png)
        .arg(vm_mib.to_string()))
}
