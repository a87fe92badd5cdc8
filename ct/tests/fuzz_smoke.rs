//! A short run of each fuzz target (the long campaigns: `ct/examples/fuzz.rs`): no input
//! panics, and the seeds themselves are accepted (so the mutations start from valid files).

use a3d_ct::fuzzing::{run, seeds, Target};

#[test]
fn readers_survive_mutated_inputs() {
    for target in [
        Target::PngSlice,
        Target::DlInfoCsv,
        Target::Nifti,
        Target::Dicom,
    ] {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target.name());
        let seeds = seeds(target, Some(&corpus)).unwrap();
        assert!(
            seeds.iter().take(1).all(|s| target.exec(s)),
            "{}: a seed is refused",
            target.name()
        );
        let execs = if matches!(target, Target::Nifti | Target::Dicom) {
            2_000
        } else {
            20_000
        };
        let report = run(target, &seeds, execs, 1, None);
        assert_eq!(report.execs, execs);
        assert!(
            report.panics.is_empty(),
            "{}: {:?}",
            target.name(),
            report.panics
        );
        println!(
            "{}: {} executions, {} accepted",
            target.name(),
            report.execs,
            report.accepted
        );
    }
}
