//! The detector's structure and plumbing: the reference preset's parameter names and sizes,
//! test-time detection on the tiny preset for every context operator, checkpoints that round
//! trip, and checkpoint errors that name the tensors.

use a3d::candle::ContextFusion;
use a3d_ct::network::NetworkInput;
use a3d_detector::{Detector, DetectorConfig, Error, Preset};
use candle_core::{Device, Tensor};
use std::collections::HashMap;

fn input(depth: usize, h: usize, w: usize, seed: u64) -> NetworkInput {
    let mut s = seed;
    let data = (0..depth * h * w)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) % 255) as f32 - 50.0
        })
        .collect();
    NetworkInput::unresized(data, depth, (h - 5, w - 3), (h, w)).unwrap()
}

#[test]
fn reference_preset_has_the_reference_tensors() {
    let config = DetectorConfig::new(Preset::Reference, 3, ContextFusion::A3d);
    let (_, map) = Detector::init(config, 1, &Device::Cpu).unwrap();
    let data = map.data().lock().unwrap();
    let backbone: Vec<_> = data.keys().filter(|k| k.starts_with("backbone.")).collect();
    // 618 in a reference checkpoint, less the three unused fusion weights of conv0 and the
    // transitions.
    assert_eq!(backbone.len(), 615);
    let values: usize = data
        .iter()
        .filter(|(k, _)| k.starts_with("backbone.") && !k.ends_with("num_batches_tracked"))
        .map(|(_, v)| v.elem_count())
        .sum();
    // About 9.6 M values at D = 3 (reference-detector.md), without conv0's 9 and the
    // transitions' 3 * 3 * (256 + 512).
    assert!((9_500_000..9_700_000).contains(&values), "{values}");
    for (name, dims) in [
        ("backbone.conv0.weight", vec![64, 1, 7, 7]),
        (
            "backbone.denseblock3.denselayer24.conv1.adaptive_align_weights",
            vec![3, 3, 992],
        ),
        (
            "backbone.denseblock2.denselayer1.conv2.weight",
            vec![32, 128, 3, 3],
        ),
        (
            "backbone.reductionz3.reduction_z_conv.weight",
            vec![1024, 1024, 3, 1, 1],
        ),
        ("backbone.transition2.conv.weight", vec![256, 512, 1, 1]),
        ("backbone.lateral2.weight", vec![512, 256, 1, 1]),
        ("rpn_head.rpn_reg.weight", vec![72, 512, 1, 1]),
        ("bbox_head.shared_fcs.0.weight", vec![2048, 25088]),
        ("bbox_head.fc_reg.weight", vec![8, 2048]),
        ("backbone.norm0.num_batches_tracked", vec![]),
    ] {
        assert_eq!(
            data.get(name).map(|v| v.dims().to_vec()),
            Some(dims),
            "{name}"
        );
    }
    let fusion = &data["backbone.denseblock1.denselayer1.conv1.adaptive_align_weights"];
    let w = fusion.as_tensor().to_vec3::<f32>().unwrap();
    // Identity plus U(-0.1, 0.1).
    assert!((w[1][1][0] - 1.0).abs() <= 0.1 && w[0][1][0].abs() <= 0.1);
}

#[test]
fn tiny_detects_with_every_operator() {
    for (name, depth) in [
        ("a3d", 3),
        ("tsm", 3),
        ("alignshift", 5),
        ("depthconv", 3),
        ("none", 3),
        ("a3d", 7),
    ] {
        let fusion = ContextFusion::from_name(name).unwrap();
        let mut config = DetectorConfig::new(Preset::Tiny, depth, fusion);
        // An untrained head scores ~0.5 everywhere: keep everything, let NMS thin it.
        config.score_threshold = 0.0;
        let (model, _) = Detector::init(config, 7, &Device::Cpu).unwrap();
        let x = input(depth, 64, 96, 3);
        let dets = model.detect(&x, Some(5.0)).unwrap();
        assert_eq!(dets.features.dims(), &[1, 32, 16, 24], "{name}");
        assert!(
            !dets.proposals.is_empty() && dets.proposals.len() <= 300,
            "{name}"
        );
        assert!(dets.boxes.len() <= 50 && !dets.boxes.is_empty(), "{name}");
        for w in dets.scores.windows(2) {
            assert!(w[0] >= w[1], "{name}: scores not sorted");
        }
        for b in dets.boxes.iter().chain(&dets.proposals) {
            assert!(
                b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 92.0 && b[3] <= 58.0,
                "{name}: {b:?}"
            );
            // The +1 convention lets a box narrower than a pixel have x1 > x2 by under 1.
            assert!(b[0] <= b[2] + 1.0 && b[1] <= b[3] + 1.0);
        }
    }
}

#[test]
fn frozen_model_detects_the_same_without_a_graph_and_follows_its_variables() {
    let config = DetectorConfig::new(Preset::Tiny, 3, ContextFusion::A3d);
    let (model, map) = Detector::init(config, 5, &Device::Cpu).unwrap();
    let frozen = Detector::frozen(config, &map, &Device::Cpu).unwrap();
    let x = input(3, 64, 96, 4);
    let (a, b) = (
        model.detect(&x, None).unwrap(),
        frozen.detect(&x, None).unwrap(),
    );
    // The variable model records a graph (its intermediates live as long as the output); the
    // frozen one does not.
    assert!(a.features.track_op());
    assert!(!b.features.track_op());
    assert_eq!(a.boxes, b.boxes);
    assert_eq!(a.scores, b.scores);
    let diff = |p: &Tensor, q: &Tensor| {
        (p - q)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    // Setting a weight (as SGD and resuming do) shows in the frozen model; running statistics
    // (a training forward's update) show in one built after it.
    let vars = map.data().lock().unwrap().clone();
    let conv0 = &vars["backbone.conv0.weight"];
    conv0.set(&(conv0.as_tensor() * 0.5).unwrap()).unwrap();
    let shifted = frozen.detect(&x, None).unwrap().features;
    assert!(diff(&shifted, &b.features) > 1e-3);
    let mean = &vars["backbone.denseblock1.denselayer1.norm2.running_mean"];
    mean.set(&(mean.as_tensor() + 0.25).unwrap()).unwrap();
    assert_eq!(
        diff(&frozen.detect(&x, None).unwrap().features, &shifted),
        0.0
    );
    let frozen = Detector::frozen(config, &map, &Device::Cpu).unwrap();
    let after = frozen.detect(&x, None).unwrap().features;
    assert!(diff(&after, &shifted) > 1e-4);
    assert_eq!(diff(&after, &model.detect(&x, None).unwrap().features), 0.0);
}

#[test]
fn checkpoints_round_trip_and_errors_name_tensors() {
    let config = DetectorConfig::new(Preset::Tiny, 3, ContextFusion::A3d);
    let (model, map) = Detector::init(config, 11, &Device::Cpu).unwrap();
    let dir = std::env::temp_dir().join(format!("a3d-detector-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.safetensors");
    map.save(&path).unwrap();
    let loaded = Detector::load(config, &path, &Device::Cpu).unwrap();
    let x = input(3, 64, 64, 5);
    let (a, b) = (
        model.detect(&x, None).unwrap(),
        loaded.detect(&x, None).unwrap(),
    );
    assert_eq!(a.boxes, b.boxes);
    assert_eq!(a.scores, b.scores);

    let mut tensors: HashMap<String, Tensor> = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    tensors.remove("backbone.denseblock2.denselayer1.norm1.running_var");
    tensors.insert(
        "backbone.lateral3.bias".into(),
        Tensor::zeros(7, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "backbone.extra.weight".into(),
        Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    // What a reference checkpoint carries and the model ignores.
    tensors.insert(
        "mask_head.conv_logits.weight".into(),
        Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "backbone.conv0.adaptive_align_weights".into(),
        Tensor::zeros((3, 3, 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let err = Detector::from_tensors(config, tensors, "ckpt.safetensors".as_ref(), &Device::Cpu)
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Weights { .. }));
    assert!(text.contains("3 problem(s)"), "{text}");
    assert!(
        text.contains("missing tensor backbone.denseblock2.denselayer1.norm1.running_var"),
        "{text}"
    );
    assert!(
        text.contains("backbone.lateral3.bias is [7], the model needs [32]"),
        "{text}"
    );
    assert!(
        text.contains("unexpected tensor backbone.extra.weight"),
        "{text}"
    );
    // A checkpoint of other slices is refused by name.
    let d7 = DetectorConfig::new(Preset::Tiny, 7, ContextFusion::A3d);
    let err = Detector::load(d7, &path, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("adaptive_align_weights is [3, 3,"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// ImageNet initialisation from torchvision names (old `norm.1` spellings included): conv0
/// keeps input channel 1, dense layers and transitions are copied, the rest keeps the
/// reference initialisation; the model uses the copied values; a missing tensor is named.
#[test]
fn imagenet_initialisation_maps_torchvision_names() {
    let config = DetectorConfig::new(Preset::Tiny, 3, ContextFusion::A3d);
    // A "torchvision" file shaped like the tiny backbone, values from another seed.
    let (_, other) = Detector::init(config, 99, &Device::Cpu).unwrap();
    let mut tv: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in other.data().lock().unwrap().iter() {
        let Some(rest) = k.strip_prefix("backbone.") else {
            continue;
        };
        if rest.starts_with("reductionz")
            || rest.starts_with("lateral")
            || k.ends_with("adaptive_align_weights")
        {
            continue;
        }
        let mut t = v.as_tensor().copy().unwrap();
        let mut name = format!("features.{rest}");
        if name == "features.conv0.weight" {
            // Three input channels; channel 1 is the one kept.
            let c = t.clone();
            t = Tensor::cat(&[&(&c * 7.0).unwrap(), &c, &(&c * -3.0).unwrap()], 1).unwrap();
        }
        if name.contains("denselayer1.norm1.") {
            name = name.replace("norm1.", "norm.1.");
        }
        tv.insert(name, t);
    }
    tv.insert(
        "features.norm5.weight".into(),
        Tensor::zeros(8, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    tv.insert(
        "classifier.weight".into(),
        Tensor::zeros((2, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let dir = std::env::temp_dir().join(format!("a3d-imagenet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("densenet.safetensors");
    candle_core::safetensors::save(&tv, &path).unwrap();
    let (model, map) = Detector::init_imagenet(config, &path, 5, &Device::Cpu).unwrap();
    let (_, fresh) = Detector::init(config, 5, &Device::Cpu).unwrap();
    let get = |m: &candle_nn::VarMap, k: &str| {
        m.data().lock().unwrap()[k]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let o = |k: &str| get(&other, k);
    assert_eq!(
        get(&map, "backbone.conv0.weight"),
        o("backbone.conv0.weight")
    );
    for k in [
        "backbone.denseblock1.denselayer1.norm1.weight",
        "backbone.denseblock2.denselayer2.conv2.weight",
        "backbone.transition1.conv.weight",
        "backbone.norm0.running_var",
    ] {
        assert_eq!(get(&map, k), o(k), "{k}");
    }
    for k in [
        "backbone.denseblock1.denselayer1.conv1.adaptive_align_weights",
        "backbone.reductionz2.reduction_z_conv.weight",
        "backbone.lateral3.weight",
        "rpn_head.rpn_conv.weight",
    ] {
        assert_eq!(get(&map, k), get(&fresh, k), "{k}");
    }
    // The returned model runs on the copied values.
    let tensors: HashMap<String, Tensor> = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    let rebuilt = Detector::from_tensors(config, tensors, "m".as_ref(), &Device::Cpu).unwrap();
    let x = input(3, 32, 32, 9);
    let (a, b) = (
        model.detect(&x, None).unwrap(),
        rebuilt.detect(&x, None).unwrap(),
    );
    let fa = a.features.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let fb = b.features.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(fa, fb);
    // A missing tensor is named.
    tv.remove("features.denseblock3.denselayer2.conv2.weight");
    candle_core::safetensors::save(&tv, &path).unwrap();
    let err = match Detector::init_imagenet(config, &path, 5, &Device::Cpu) {
        Ok(_) => panic!("a missing tensor must be an error"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("missing backbone.denseblock3.denselayer2.conv2.weight"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
