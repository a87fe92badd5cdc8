//! RoIAlign and NMS through candle: the forward pass equals a3d's, candle's autograd reaches the
//! features with a3d's backward, strided inputs are read correctly, and bad RoIs are errors.
#![cfg(feature = "candle")]

use a3d::boxes::Nms;
use a3d::candle::{nms, roi_align};
use a3d::rng::SplitMix64;
use a3d::roi_align::RoiAlign;
use candle_core::{Device, Tensor, Var};

type R = candle_core::Result<()>;

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("tensor to vec")
}

#[test]
fn roi_align_forward_and_gradient_through_candle() -> R {
    let dev = Device::Cpu;
    let mut rng = SplitMix64::new(4);
    let shape = [2usize, 3, 11, 9];
    let data = rng.vec_f32(shape.iter().product(), -1.0, 1.0);
    let rois_v: Vec<f32> = vec![
        0.0, 2.0, 3.0, 20.0, 30.0, 1.0, -4.0, 0.5, 10.0, 12.0, 1.0, 30.0, 30.0, 29.0, 31.0,
    ];
    let features = Var::from_tensor(&Tensor::from_vec(data.clone(), &shape, &dev)?)?;
    let rois = Tensor::from_vec(rois_v.clone(), (3, 5), &dev)?;
    let op = RoiAlign::reference();
    let y = roi_align(features.as_tensor(), &rois, op)?;
    assert_eq!(y.dims(), &[3, 3, 7, 7]);

    let x = a3d::Tensor::from_vec(data, &shape).unwrap();
    let r: Vec<[f32; 5]> = rois_v
        .chunks(5)
        .map(|c| [c[0], c[1], c[2], c[3], c[4]])
        .collect();
    let want = op.forward(&x, &r).unwrap();
    assert_eq!(values(&y), want.to_f32_vec());

    // loss = sum(y * g): d loss / d features = RoIAlign^T(g).
    let g = rng.vec_f32(3 * 3 * 49, -1.0, 1.0);
    let gt = Tensor::from_vec(g.clone(), (3, 3, 7, 7), &dev)?;
    let grads = (y * &gt)?.sum_all()?.backward()?;
    let dx = grads.get(features.as_tensor()).expect("features gradient");
    let want = op
        .backward(
            &shape,
            &r,
            &a3d::Tensor::from_vec(g, &[3, 3, 7, 7]).unwrap(),
        )
        .unwrap();
    assert_eq!(values(dx), want.to_f32_vec());

    // A strided (transposed back) feature view gives the same result.
    let strided = features
        .as_tensor()
        .transpose(2, 3)?
        .contiguous()?
        .transpose(2, 3)?;
    assert_eq!(
        values(&roi_align(&strided, &rois, op)?),
        values(&roi_align(features.as_tensor(), &rois, op)?)
    );

    // Bad RoIs: a batch index out of range, the wrong width.
    let bad = Tensor::from_vec(vec![5.0f32, 0.0, 0.0, 4.0, 4.0], (1, 5), &dev)?;
    assert!(roi_align(features.as_tensor(), &bad, op).is_err());
    let bad = Tensor::from_vec(vec![0.0f32, 0.0, 0.0, 4.0], (1, 4), &dev)?;
    assert!(roi_align(features.as_tensor(), &bad, op).is_err());
    Ok(())
}

#[test]
fn nms_on_candle_tensors() -> R {
    let dev = Device::Cpu;
    let boxes = Tensor::from_vec(
        vec![0f32, 0., 9., 9., 1., 1., 9., 9., 30., 30., 40., 40.],
        (3, 4),
        &dev,
    )?;
    let scores = Tensor::from_vec(vec![0.5f32, 0.9, 0.1], 3, &dev)?;
    assert_eq!(nms(&boxes, &scores, &Nms::reference(0.5))?, vec![1, 2]);
    assert!(nms(&scores, &scores, &Nms::reference(0.5)).is_err());
    Ok(())
}
