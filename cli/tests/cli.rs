//! The `a3d` binary as a user runs it: shapes too large for the machine are typed errors (exit
//! status 2 and a message naming the shape), never an abort; bad options are refused by name.

use std::process::Command;

/// What one run of the binary returned.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run_a3d<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_a3d"))
        .args(args)
        .output()
        .expect("run the a3d binary");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The exit status and standard error.
fn a3d<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Option<i32>, String) {
    let r = run_a3d(args);
    (r.code, r.stderr)
}

/// Runs to success (or fails the test with the arguments and both outputs); the standard output.
fn a3d_ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let r = run_a3d(args);
    assert_eq!(r.code, Some(0), "{args:?}: {} {}", r.stdout, r.stderr);
    r.stdout
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

/// `a3d inspect` on a DeepLesion folder a3d-ct writes: the lesion, the neighbour plan and a
/// preview; a bad file is exit status 2 with the file named.
#[test]
fn inspect_reads_a_deeplesion_slice() {
    use a3d_ct::deeplesion::{Lesion, Split};
    use a3d_ct::write::{write_dl_info, write_hu_png};
    let dir = std::env::temp_dir().join(format!("a3d-inspect-{}", std::process::id()));
    let series = dir.join("Images_png/000002_01_01");
    for i in 40..=44 {
        write_hu_png(
            &series.join(format!("{i:03}.png")),
            9,
            7,
            &vec![i as f32 * 10.0; 63],
        )
        .unwrap();
    }
    let lesion = Lesion {
        file_name: "000002_01_01_042.png".into(),
        patient: 2,
        study: 1,
        series: 1,
        key_slice: 42,
        recist: [1.0, 1.0, 5.0, 5.0, 1.0, 5.0, 5.0, 1.0],
        bbox: [1.0, 1.0, 5.0, 5.0],
        diameters_px: [5.0, 5.0],
        location: [0.5, 0.5, 0.5],
        coarse_type: 2,
        noisy: false,
        slice_range: [40, 44],
        spacing: [0.7, 0.7, 1.0],
        image_size: [9, 7],
        dicom_window: [-175.0, 275.0],
        gender: "F".into(),
        age: None,
        split: Split::Test,
    };
    write_dl_info(&dir.join("DL_info.csv"), &[lesion]).unwrap();
    let preview = dir.join("preview.png");
    let stdout = a3d_ok(&[
        "inspect",
        series.join("042.png").to_str().unwrap(),
        "--png",
        preview.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("9 x 7 pixels") && stdout.contains("HU 420 .. 420"),
        "{stdout}"
    );
    // 1 mm slices: the neighbours at 2 mm are slices 40 and 44.
    assert!(
        stdout.contains("1.000 x slice 40") && stdout.contains("1.000 x slice 44"),
        "{stdout}"
    );
    assert!(preview.is_file());
    std::fs::write(series.join("043.png"), b"broken").unwrap();
    let (code, stderr) = a3d(&["inspect", series.join("043.png").to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("043.png"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `a3d inspect` on a NIfTI volume a3d-ct writes: orientation, spacing and a preview.
#[test]
fn inspect_reads_a_nifti_volume() {
    let dir = std::env::temp_dir().join(format!("a3d-inspect-nii-{}", std::process::id()));
    let hu: Vec<f32> = (0..5 * 6 * 7).map(|i| i as f32 - 100.0).collect();
    let v = a3d_ct::Volume::new(hu, [5, 6, 7], [1.25, 0.5, 0.5]).unwrap();
    let path = dir.join("v.nii.gz");
    a3d_ct::write::write_nifti(&path, &v).unwrap();
    let preview = dir.join("p.png");
    let stdout = a3d_ok(&[
        "inspect",
        path.to_str().unwrap(),
        "--png",
        preview.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("[Z, H, W] = [5, 6, 7]") && stdout.contains("(1.250, 0.500, 0.500)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("HU -100 .. 109") && preview.is_file(),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `a3d inspect` on DICOM folders a3d-ct writes: a series with a missing slice (the gap is
/// reported), and a folder of two series (listed, then chosen with `--series`).
#[test]
fn inspect_reads_dicom_folders() {
    use a3d_ct::write::{write_dicom_series, DicomWriteOptions};
    let dir = std::env::temp_dir().join(format!("a3d-inspect-dcm-{}", std::process::id()));
    let hu: Vec<f32> = (0..6 * 10 * 12).map(|i| (i % 700) as f32 - 200.0).collect();
    let v = a3d_ct::Volume::new(hu, [6, 10, 12], [2.5, 0.7, 0.7]).unwrap();
    let a = DicomWriteOptions {
        series_uid: "1.2.3.1".into(),
        ..DicomWriteOptions::default()
    };
    write_dicom_series(&dir.join("a"), &v, &a).unwrap();
    std::fs::remove_file(dir.join("a/slice_0002.dcm")).unwrap();
    let preview = dir.join("p.png");
    let run = |args: &[&str]| {
        let r = run_a3d(args);
        (r.code, r.stdout, r.stderr)
    };
    let folder_a = dir.join("a");
    let (code, stdout, stderr) = run(&[
        "inspect",
        folder_a.to_str().unwrap(),
        "--png",
        preview.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(stdout.contains("[Z, H, W] = [5, 10, 12]"), "{stdout}");
    assert!(
        stdout.contains("5.000 mm between slices 1 and 2"),
        "{stdout}"
    );
    assert!(preview.is_file());
    let b = DicomWriteOptions {
        series_uid: "1.2.3.2".into(),
        multi_frame: true,
        ..DicomWriteOptions::default()
    };
    write_dicom_series(&dir.join("b"), &v, &b).unwrap();
    let (code, _, stderr) = run(&["inspect", dir.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("2 CT series") && stderr.contains("1.2.3.2"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run(&["inspect", dir.to_str().unwrap(), "--series", "1.2.3.2"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("[Z, H, W] = [6, 10, 12]") && stdout.contains("also in the folder"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `a3d detect` with the tiny preset on a DICOM series a3d-ct writes (freshly initialised
/// weights): JSON per slice in the range, overlays, the feature dump; a bad checkpoint is
/// refused by name.
#[test]
fn detect_runs_on_a_dicom_series() {
    use a3d_ct::write::{write_dicom_series, DicomWriteOptions};
    let dir = std::env::temp_dir().join(format!("a3d-detect-{}", std::process::id()));
    let hu: Vec<f32> = (0..5 * 40 * 48)
        .map(|i| ((i * 37) % 1500) as f32 - 1000.0)
        .collect();
    let v = a3d_ct::Volume::new(hu, [5, 40, 48], [2.5, 0.7, 0.7]).unwrap();
    write_dicom_series(&dir.join("ct"), &v, &DicomWriteOptions::default()).unwrap();
    let out = dir.join("dets.json");
    let dump = dir.join("f.safetensors");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let run = |args: &[String]| a3d(args);
    let args: Vec<String> = [
        "detect",
        &path(&dir.join("ct")),
        "--init-seed",
        "3",
        "--preset",
        "tiny",
        "--range",
        "1:3",
        "--out",
        &path(&out),
        "--overlay",
        &path(&dir.join("ov")),
        "--dump-features",
        &path(&dump),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, stderr) = run(&args);
    assert_eq!(code, Some(0), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let slices = doc["slices"].as_array().unwrap();
    assert_eq!(slices.len(), 3);
    assert_eq!(slices[0]["index"], 1);
    for s in slices {
        for b in s["boxes"].as_array().unwrap() {
            let r: Vec<f64> = b["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            // Original pixels: inside the 48 x 40 scan.
            assert!(
                r[0] >= 0.0 && r[2] <= 47.0 + 1e-3 && r[3] <= 39.0 + 1e-3,
                "{r:?}"
            );
        }
    }
    assert!(dir.join("ov/slice_0002.png").is_file());
    let dumped = a3d_ct_dump_names(&dump);
    assert_eq!(dumped, vec!["fpn".to_string(), "input".to_string()]);
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, b"not safetensors").unwrap();
    let args: Vec<String> = [
        "detect",
        &path(&dir.join("ct")),
        "--weights",
        &path(&bad),
        "--out",
        &path(&out),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, stderr) = run(&args);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("bad.safetensors") && stderr.contains("safetensors"),
        "{stderr}"
    );
    // A GPU run where this build or machine has none: an error naming the option, no output.
    let cuda_out = dir.join("cuda.json");
    let args: Vec<String> = [
        "detect",
        &path(&dir.join("ct")),
        "--init-seed",
        "3",
        "--preset",
        "tiny",
        "--device",
        "cuda",
        "--out",
        &path(&cuda_out),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, stderr) = run(&args);
    if cfg!(feature = "candle-cuda") && code == Some(0) {
        assert!(cuda_out.is_file());
    } else {
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("--device cuda"), "{stderr}");
        assert!(!cuda_out.exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn a3d_ct_dump_names(path: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_keys()
        .collect();
    names.sort();
    names
}

/// `a3d eval` on a DL_info.csv and CSV detections made here: the sensitivities worked out by
/// hand (a duplicate that is neither hit nor FP, an FP on a lesion-free key slice of another
/// scan), JSON keys, and a detection on an image outside the split named.
#[test]
fn eval_computes_the_froc_of_a_detections_file() {
    use a3d_ct::deeplesion::{Lesion, Split};
    let dir = std::env::temp_dir().join(format!("a3d-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lesion = |file: &str, bbox: [f32; 4], interval: f32, kind: i32| Lesion {
        file_name: file.into(),
        patient: 1,
        study: 1,
        series: 1,
        key_slice: 10,
        recist: [0.0; 8],
        bbox,
        diameters_px: [5.0, 5.0],
        location: [0.5; 3],
        coarse_type: kind,
        noisy: false,
        slice_range: [5, 15],
        spacing: [0.8, 0.8, interval],
        image_size: [512, 512],
        dicom_window: [-175.0, 275.0],
        gender: "F".into(),
        age: Some(50.0),
        split: Split::Val,
    };
    let rows = vec![
        lesion("000001_01_01_010.png", [10.0, 10.0, 29.0, 29.0], 1.0, 4),
        lesion("000002_01_01_020.png", [50.0, 50.0, 59.0, 59.0], 5.0, 2),
    ];
    let csv_path = dir.join("DL_info.csv");
    a3d_ct::write::write_dl_info(&csv_path, &rows).unwrap();
    let dets = dir.join("dets.csv");
    std::fs::write(
        &dets,
        "File_name,x1,y1,x2,y2,score\n\
         000001_01_01_010.png,10,10,29,29,0.9\n\
         000001_01_01_010.png,11,11,29,29,0.8\n\
         000002_01_01_020.png,0,0,9,9,0.7\n\
         000002_01_01_020.png,50,50,59,59,0.6\n",
    )
    .unwrap();
    let stdout = a3d_ok(&[
        "eval",
        "--detections",
        dets.to_str().unwrap(),
        "--annotations",
        csv_path.to_str().unwrap(),
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let all = &lines[0];
    assert_eq!(all["subset"], "all");
    assert_eq!(
        (all["images"].as_u64(), all["lesions"].as_u64()),
        (Some(2), Some(2))
    );
    // Curve: (0, .5) (0, .5) (.5, .5) (.5, 1): at 0.5 FP/image the point where it got there.
    assert_eq!(all["sensitivity"]["0.5"].as_f64(), Some(0.5));
    assert_eq!(all["sensitivity"]["1"].as_f64(), Some(1.0));
    assert_eq!(all["mean_0.5_4"].as_f64(), Some(0.875));
    let plot = dir.join("froc.png");
    let out2 = run_a3d(&[
        "eval",
        "--detections",
        dets.to_str().unwrap(),
        "--annotations",
        csv_path.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let (text, err) = (&out2.stdout, &out2.stderr);
    // The plot needs a system font; without one the error says so.
    if err.contains("TrueType font") {
        eprintln!("no font here: {err}");
    } else {
        assert_eq!(out2.code, Some(0), "{err}");
        assert!(text.contains("type_4") && plot.is_file(), "{text}");
    }
    let thin = &lines[1];
    assert_eq!(thin["subset"], "slice_interval<=2mm");
    assert_eq!(thin["sensitivity"]["0.5"].as_f64(), Some(1.0));
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l["subset"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "all",
            "slice_interval<=2mm",
            "slice_interval>2mm",
            "type_2",
            "type_4"
        ]
    );
    std::fs::write(
        &dets,
        "File_name,x1,y1,x2,y2,score\n000009_01_01_001.png,1,1,5,5,0.5\n",
    )
    .unwrap();
    let (code, stderr) = a3d(&[
        "eval",
        "--detections",
        dets.to_str().unwrap(),
        "--annotations",
        csv_path.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("000009_01_01_001.png"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `a3d synth` then `a3d train` for one epoch of the tiny preset at 32 pixels: the checkpoint,
/// optimizer state, state and log are written, the loss is finite, and the checkpoint loads
/// into `a3d detect`.
#[test]
fn synth_then_train_one_epoch() {
    let dir = std::env::temp_dir().join(format!("a3d-train-{}", std::process::id()));
    let data = dir.join("data");
    let out = dir.join("run");
    let run = |args: &[&str]| {
        a3d_ok(args);
    };
    run(&[
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--scans",
        "5",
        "--size",
        "32",
        "--seed",
        "2",
    ]);
    run(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
        "--input-size",
        "32",
        "--warmup-iters",
        "2",
        "--lr",
        "0.005",
    ]);
    for f in [
        "epoch_00.safetensors",
        "optimizer_00.safetensors",
        "state.json",
        "best.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2);
    assert!(lines[0]["loss"].as_f64().unwrap().is_finite());
    assert!(lines.last().unwrap().get("val_mean_0.5_4").is_some());
    let key = std::fs::read_to_string(data.join("DL_info.csv")).unwrap();
    let first = key
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let (series, file) = first.rsplit_once('_').unwrap();
    let slice = data.join("Images_png").join(series).join(file);
    run(&[
        "detect",
        slice.to_str().unwrap(),
        "--weights",
        out.join("best.safetensors").to_str().unwrap(),
        "--preset",
        "tiny",
        "--out",
        dir.join("d.json").to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An interrupted run resumed with `--resume` reaches the same losses, image for image, as an
/// uninterrupted one; a resume with another operator is refused by name.
#[test]
fn resumed_training_matches_an_uninterrupted_run() {
    let dir = std::env::temp_dir().join(format!("a3d-resume-{}", std::process::id()));
    let data = dir.join("data");
    let run = |args: &[&str]| a3d(args);
    let ok = |args: &[&str]| {
        a3d_ok(args);
    };
    ok(&[
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--scans",
        "5",
        "--size",
        "32",
        "--seed",
        "4",
    ]);
    let train = |out: &std::path::Path, epochs: &str, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            epochs,
            "--input-size",
            "32",
            "--warmup-iters",
            "3",
            "--lr",
            "0.005",
            "--steps",
            "1",
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let (whole, parts) = (dir.join("whole"), dir.join("parts"));
    let args = train(&whole, "2", &[]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let args = train(&parts, "1", &[]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let resume = parts.to_str().unwrap().to_string();
    let args = train(&parts, "2", &["--resume", &resume]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let losses = |p: &std::path::Path| -> Vec<(String, f64)> {
        std::fs::read_to_string(p.join("log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("loss").is_some())
            .map(|v| {
                (
                    v["image"].as_str().unwrap().to_string(),
                    v["loss"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (a, b) = (losses(&whole), losses(&parts));
    assert!(a.len() >= 4);
    assert_eq!(a, b);
    let args = train(&parts, "3", &["--resume", &resume, "--fusion", "tsm"]);
    let (code, err) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, Some(2));
    assert!(
        err.contains("fusion") && err.contains("state.json"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_trains_evaluates_and_draws_then_reruns_in_its_own_folder_only() {
    let dir = std::env::temp_dir().join(format!("a3d-cli-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("demo");
    let args = [
        "demo",
        "--out",
        out.to_str().unwrap(),
        "--scans",
        "7",
        "--size",
        "32",
        "--epochs",
        "1",
        "--fusion",
        "a3d,2d",
    ];
    let stdout = a3d_ok(&args);
    assert!(
        stdout.contains("test-split FROC") && stdout.contains("mean 0.5-4"),
        "{stdout}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("demo.json")).unwrap()).unwrap();
    let test = summary["test"].as_array().unwrap();
    assert_eq!(test.len(), 2);
    // The 2D baseline is the model without fusion on the key slice alone.
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("2d/model.json")).unwrap()).unwrap();
    assert_eq!(
        (&model["fusion"], &model["slices"]),
        (&"none".into(), &1.into())
    );
    for (row, fusion) in test.iter().zip(["a3d", "2d"]) {
        assert_eq!(row["fusion"], fusion);
        assert!(row["lesions"].as_u64().unwrap() > 0);
        let s1 = row["sensitivity"]["1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s1));
        for f in [
            "best.safetensors",
            "training.png",
            "test_detections.json",
            "model.json",
        ] {
            assert!(out.join(fusion).join(f).is_file(), "{fusion}/{f}");
        }
        let overlays = std::fs::read_dir(out.join(fusion).join("overlays"))
            .unwrap()
            .count();
        assert!(overlays > 0);
    }
    // The detections file is a3d eval's input as it stands.
    let (code, err) = a3d(&[
        "eval",
        "--detections",
        out.join("a3d/test_detections.json").to_str().unwrap(),
        "--annotations",
        out.join("data/DL_info.csv").to_str().unwrap(),
        "--split",
        "test",
    ]);
    assert_eq!(code, Some(0), "{err}");
    // A rerun replaces its own folder; a folder of something else is refused, untouched.
    let (code, err) = a3d(&args);
    assert_eq!(code, Some(0), "{err}");
    let other = dir.join("mine");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep").unwrap();
    let mut args2 = args;
    let other_s = other.to_str().unwrap().to_string();
    args2[2] = &other_s;
    let (code, err) = a3d(&args2);
    assert_eq!(code, Some(2));
    assert!(err.contains("demo.json") && err.contains("mine"), "{err}");
    assert_eq!(
        std::fs::read_to_string(other.join("notes.txt")).unwrap(),
        "keep"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_train_step_times_a_training_iteration() {
    // The tiny preset only: the reference one's 51M-weight FC makes a debug build slow.
    let stdout = a3d_ok(&[
        "bench",
        "train-step",
        "--shape",
        "3,32,32",
        "--preset",
        "tiny",
        "--runs",
        "2",
        "--json",
    ]);
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    assert_eq!(rows[0]["preset"], "tiny");
    assert_eq!(rows[0]["shape"], serde_json::json!([1, 1, 3, 32, 32]));
    assert!(rows[0]["median_ms"].as_f64().unwrap() > 0.0);
    let (code, err) = a3d(&["bench", "train-step", "--dtype", "bf16"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("f32"), "{err}");
    let (code, err) = a3d(&["bench", "nms", "--preset", "tiny"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--preset"), "{err}");
}
