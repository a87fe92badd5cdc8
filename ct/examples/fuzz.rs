//! A fuzzing campaign of a3d-ct's readers (see `a3d_ct::fuzzing`):
//!
//!     cargo run --release -p a3d-ct --example fuzz -- png 1000000 [minutes]
//!     cargo run --release -p a3d-ct --example fuzz -- csv 1000000 [minutes]
//!     cargo run --release -p a3d-ct --example fuzz -- nifti 1000000 [minutes]
//!
//!     cargo run --release -p a3d-ct --example fuzz -- dicom 1000000 [minutes]
//!     cargo run --release -p a3d-ct --example fuzz -- dicom replay FILE   # one input
//!
//! Prints the executions, accepted inputs and panics (hex); exits 1 on any panic.

use a3d_ct::fuzzing::{run, seeds, Target};

fn main() {
    let mut args = std::env::args().skip(1);
    let target = match args.next().as_deref() {
        Some("png") => Target::PngSlice,
        Some("csv") => Target::DlInfoCsv,
        Some("nifti") => Target::Nifti,
        Some("dicom") => Target::Dicom,
        _ => {
            eprintln!("usage: fuzz png|csv|nifti|dicom EXECS [MINUTES]");
            std::process::exit(2);
        }
    };
    let count = args.next();
    if count.as_deref() == Some("replay") {
        // `fuzz TARGET replay FILE`: runs one input with the panic message shown.
        let path = args.next().unwrap_or_default();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        println!("{}: accepted = {}", target.name(), target.exec(&bytes));
        return;
    }
    let execs: u64 = count.and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let minutes: Option<u64> = args.next().and_then(|v| v.parse().ok());
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target.name());
    let seeds = seeds(target, Some(&corpus)).expect("seeds");
    let start = std::time::Instant::now();
    let deadline = minutes.map(|m| start + std::time::Duration::from_secs(60 * m));
    let report = run(target, &seeds, execs, 0x5eed ^ execs, deadline);
    println!(
        "{}: {} executions in {:.0} s, {} accepted, {} panics ({} seeds)",
        target.name(),
        report.execs,
        start.elapsed().as_secs_f64(),
        report.accepted,
        report.panics.len(),
        seeds.len()
    );
    for p in &report.panics {
        println!("panic input (hex): {p}");
    }
    if !report.panics.is_empty() {
        std::process::exit(1);
    }
}
