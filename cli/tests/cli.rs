//! The `a3d` binary as a user runs it: shapes too large for the machine are typed errors (exit
//! status 2 and a message naming the shape), never an abort; bad options are refused by name.

use std::process::Command;

fn a3d(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_a3d"))
        .args(args)
        .output()
        .expect("run the a3d binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn huge_shapes_are_out_of_memory_errors() {
    for op in ["fusion", "tsm", "alignshift", "depthconv"] {
        let (code, stderr) = a3d(&["bench", op, "--shape", "64,512,16,512,512", "--runs", "1"]);
        assert_eq!(code, Some(2), "{op}: exit {code:?} ({stderr})");
        assert!(stderr.contains("cannot allocate"), "{op}: {stderr}");
    }
    // An element count that overflows usize.
    let (code, stderr) = a3d(&[
        "bench",
        "tsm",
        "--shape",
        "4294967296,4294967296,16,512,512",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("overflows"), "{stderr}");
}

#[test]
fn options_of_other_ops_and_unknown_tiers_are_refused() {
    let (code, stderr) = a3d(&["bench", "tsm", "--kernel", "3"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--kernel"), "{stderr}");
    let (code, stderr) = a3d(&["bench", "tsm", "--isa", "avx1024"]);
    assert_ne!(code, Some(0), "{stderr}");
}
