//! The network's input from HU slices, as the reference builds it (reference-detector.md
//! sections 1.3-1.5): windowing `[-1024, 2050]` HU to `0..255` minus 50, then the keep-ratio
//! resize to 512 (bilinear, mmcv's `imrescale`), then zero padding to a multiple of 32.
//! [`NetworkInput::to_network`] and [`NetworkInput::to_original`] map boxes between the two
//! pixel grids.

use crate::deeplesion::MultiSlice;
use crate::{Error, Result};

/// The windowed value of `hu`: `clip((hu + 1024) / 3074, 0, 1) * 255 - 50`.
pub fn window(hu: f32) -> f32 {
    ((hu + 1024.0) / 3074.0).clamp(0.0, 1.0) * 255.0 - 50.0
}

/// How the input is sized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputConfig {
    /// The keep-ratio target (the reference: 512): the scale is
    /// `min(size / max(h, w), size / min(h, w))`.
    pub size: usize,
    /// Padded sizes are multiples of this (the reference: 32).
    pub pad_divisor: usize,
    /// Instead of `size`: scale so that one network pixel is this many mm (with the scan's
    /// pixel spacing given to [`NetworkInput::build`]).
    pub target_spacing_mm: Option<f32>,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            size: 512,
            pad_divisor: 32,
            target_spacing_mm: None,
        }
    }
}

/// The network's input: `[depth, padded_height, padded_width]` values, the resized image in the
/// top-left `height x width`, zeros elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkInput {
    /// The values.
    pub data: Vec<f32>,
    /// D.
    pub depth: usize,
    /// Rows of the resized image.
    pub height: usize,
    /// Columns of the resized image.
    pub width: usize,
    /// Rows after padding.
    pub padded_height: usize,
    /// Columns after padding.
    pub padded_width: usize,
    /// Network pixels per original pixel.
    pub scale: f32,
    /// The original `(height, width)`.
    pub original: (usize, usize),
}

impl NetworkInput {
    /// An input that needs no resizing: `data` holds `depth` planes of `padded` rows x columns
    /// with a `size` image at the top left of each (scale 1, original size `size`), as tests,
    /// benchmarks and inputs already at network resolution have it.
    pub fn unresized(
        data: Vec<f32>,
        depth: usize,
        size: (usize, usize),
        padded: (usize, usize),
    ) -> Result<NetworkInput> {
        let ((h, w), (ph, pw)) = (size, padded);
        if h == 0 || w == 0 || h > ph || w > pw || data.len() != depth * ph * pw {
            return Err(Error::Argument {
                arg: "data",
                problem: format!(
                    "{} values for {depth} planes of {ph} x {pw} holding {h} x {w}",
                    data.len()
                ),
            });
        }
        Ok(NetworkInput {
            data,
            depth,
            height: h,
            width: w,
            padded_height: ph,
            padded_width: pw,
            scale: 1.0,
            original: (h, w),
        })
    }

    /// Windows, resizes and pads `slices`. `pixel_spacing_mm` is needed only with
    /// [`InputConfig::target_spacing_mm`].
    pub fn build(
        slices: &MultiSlice,
        config: &InputConfig,
        pixel_spacing_mm: Option<f32>,
    ) -> Result<NetworkInput> {
        let (h, w) = (slices.height, slices.width);
        if h == 0 || w == 0 || config.size == 0 || config.pad_divisor == 0 {
            return Err(Error::Argument {
                arg: "slices",
                problem: format!(
                    "{h} x {w} image, size {}, pad divisor {}",
                    config.size, config.pad_divisor
                ),
            });
        }
        let scale = match (config.target_spacing_mm, pixel_spacing_mm) {
            (Some(t), Some(p)) if t.is_finite() && t > 0.0 && p.is_finite() && p > 0.0 => p / t,
            (Some(t), p) => {
                return Err(Error::Argument {
                    arg: "target_spacing_mm",
                    problem: format!(
                        "{t} mm per pixel needs a finite positive scan pixel spacing, got {p:?}"
                    ),
                })
            }
            (None, _) => {
                let s = config.size as f32;
                (s / h.max(w) as f32).min(s / h.min(w) as f32)
            }
        };
        // mmcv: int(w * s + 0.5).
        let (nw, nh) = (
            (w as f32 * scale + 0.5) as usize,
            (h as f32 * scale + 0.5) as usize,
        );
        if nw == 0 || nh == 0 || nw > 1 << 15 || nh > 1 << 15 {
            return Err(Error::Argument {
                arg: "scale",
                problem: format!("{w} x {h} scaled by {scale} is {nw} x {nh}"),
            });
        }
        let d = config.pad_divisor;
        let (ph, pw) = (nh.div_ceil(d) * d, nw.div_ceil(d) * d);
        let mut data = vec![0.0f32; slices.depth * ph * pw];
        let mut windowed = vec![0.0f32; h * w];
        for z in 0..slices.depth {
            let src = &slices.hu[z * h * w..(z + 1) * h * w];
            let dst = &mut data[z * ph * pw..(z + 1) * ph * pw];
            if (nw, nh) == (w, h) {
                // Scale 1 samples every pixel at its own centre: the resize is the identity.
                for (row, out) in src.chunks_exact(w).zip(dst.chunks_exact_mut(pw)) {
                    for (o, v) in out.iter_mut().zip(row) {
                        *o = window(*v);
                    }
                }
                continue;
            }
            for (o, v) in windowed.iter_mut().zip(src) {
                *o = window(*v);
            }
            resize_bilinear(&windowed, w, h, dst, nw, nh, pw);
        }
        Ok(NetworkInput {
            data,
            depth: slices.depth,
            height: nh,
            width: nw,
            padded_height: ph,
            padded_width: pw,
            scale,
            original: (h, w),
        })
    }

    /// The input of slice `z` of `volume` in one pass: the neighbour mix of
    /// [`MultiSlice::from_volume`] and the windowing written straight into the padded buffer
    /// when the resize is the identity (a volume already `size` pixels on its long side), else
    /// through [`NetworkInput::build`]. Equal to `build(&MultiSlice::from_volume(..))`; the
    /// fast path for running every slice of a scan.
    pub fn from_volume(
        volume: &crate::Volume,
        z: usize,
        depth: usize,
        rule: crate::deeplesion::WeightRule,
        config: &InputConfig,
    ) -> Result<NetworkInput> {
        let [nz, h, w] = volume.shape;
        let s = config.size as f32;
        let identity = config.target_spacing_mm.is_none()
            && h > 0
            && w > 0
            && config.pad_divisor > 0
            && (s / h.max(w) as f32).min(s / h.min(w) as f32) == 1.0
            && !depth.is_multiple_of(2)
            && z < nz;
        if !identity {
            let ms = MultiSlice::from_volume(volume, z, depth, rule)?;
            return NetworkInput::build(&ms, config, Some(volume.spacing[2] as f32));
        }
        let d = config.pad_divisor;
        let (ph, pw) = (h.div_ceil(d) * d, w.div_ceil(d) * d);
        let plane = h * w;
        let mut data = vec![0.0f32; depth * ph * pw];
        let mut mix = vec![0.0f32; w];
        for (k, terms) in crate::deeplesion::plan(depth, volume.spacing[0], rule)
            .iter()
            .enumerate()
        {
            let sources: Vec<(&[f32], f32)> = terms
                .iter()
                .map(|&(offset, weight)| {
                    let i = (z as i64 + offset).clamp(0, nz as i64 - 1) as usize;
                    (&volume.hu[i * plane..(i + 1) * plane], weight)
                })
                .collect();
            let out = &mut data[k * ph * pw..(k + 1) * ph * pw];
            for (y, row) in out.chunks_exact_mut(pw).take(h).enumerate() {
                // The same sum order as MultiSlice::from_volume (0 + w0 v0 + w1 v1 ...).
                mix.fill(0.0);
                for (src, weight) in &sources {
                    for (m, v) in mix.iter_mut().zip(&src[y * w..(y + 1) * w]) {
                        *m += weight * v;
                    }
                }
                for (o, m) in row.iter_mut().zip(&mix) {
                    *o = window(*m);
                }
            }
        }
        NetworkInput::unresized(data, depth, (h, w), (ph, pw))
    }

    /// A box in original pixels to network pixels (times the scale, clipped to the resized
    /// image, as mmdetection's Resize does).
    pub fn to_network(&self, b: [f32; 4]) -> [f32; 4] {
        let (xm, ym) = ((self.width - 1) as f32, (self.height - 1) as f32);
        [
            (b[0] * self.scale).clamp(0.0, xm),
            (b[1] * self.scale).clamp(0.0, ym),
            (b[2] * self.scale).clamp(0.0, xm),
            (b[3] * self.scale).clamp(0.0, ym),
        ]
    }

    /// A box in network pixels back to original pixels (divided by the scale, clipped to the
    /// original image: x to `[0, width - 1]`, y to `[0, height - 1]`).
    pub fn to_original(&self, b: [f32; 4]) -> [f32; 4] {
        let (h, w) = self.original;
        let (xm, ym) = ((w as f32 - 1.0).max(0.0), (h as f32 - 1.0).max(0.0));
        let s = b.map(|v| v / self.scale);
        [
            s[0].clamp(0.0, xm),
            s[1].clamp(0.0, ym),
            s[2].clamp(0.0, xm),
            s[3].clamp(0.0, ym),
        ]
    }
}

/// OpenCV's `INTER_LINEAR` resize (the sampling mmcv's `imrescale` uses): destination pixel `x`
/// reads source position `(x + 0.5) * sw / dw - 0.5`, clamped to the image. Rows of `dst` are
/// `dst_stride` apart.
fn resize_bilinear(
    src: &[f32],
    sw: usize,
    sh: usize,
    dst: &mut [f32],
    dw: usize,
    dh: usize,
    dst_stride: usize,
) {
    let taps = |dn: usize, sn: usize| -> Vec<(usize, usize, f32)> {
        let ratio = sn as f32 / dn as f32;
        (0..dn)
            .map(|i| {
                let pos = ((i as f32 + 0.5) * ratio - 0.5).max(0.0);
                let lo = (pos as usize).min(sn - 1);
                let hi = (lo + 1).min(sn - 1);
                (lo, hi, if lo == hi { 0.0 } else { pos - lo as f32 })
            })
            .collect()
    };
    let (xs, ys) = (taps(dw, sw), taps(dh, sh));
    for (y, &(y0, y1, fy)) in ys.iter().enumerate() {
        let (r0, r1) = (&src[y0 * sw..(y0 + 1) * sw], &src[y1 * sw..(y1 + 1) * sw]);
        let out = &mut dst[y * dst_stride..y * dst_stride + dw];
        for (o, &(x0, x1, fx)) in out.iter_mut().zip(&xs) {
            let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
            let bottom = r1[x0] + (r1[x1] - r1[x0]) * fx;
            *o = top + (bottom - top) * fy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_maps_the_reference_range() {
        assert_eq!(window(-1024.0), -50.0);
        assert_eq!(window(2050.0), 205.0);
        assert_eq!(window(-3000.0), -50.0);
        assert!((window(513.0) - (0.5 * 255.0 - 50.0)).abs() < 1e-4);
    }

    #[test]
    fn unresized_inputs_check_their_sizes() {
        let n = NetworkInput::unresized(vec![0.5; 2 * 4 * 6], 2, (3, 5), (4, 6)).unwrap();
        assert_eq!(
            (n.height, n.width, n.scale, n.original),
            (3, 5, 1.0, (3, 5))
        );
        assert_eq!(n.to_original([1.0, 1.0, 9.0, 9.0]), [1.0, 1.0, 4.0, 2.0]);
        for (len, size, padded) in [
            (47, (3, 5), (4, 6)),
            (48, (5, 5), (4, 6)),
            (48, (0, 5), (4, 6)),
        ] {
            let e = NetworkInput::unresized(vec![0.0; len], 2, size, padded).unwrap_err();
            assert!(e.to_string().contains("planes"), "{e}");
        }
    }

    #[test]
    fn resize_pad_and_box_maps() {
        // 300 x 200 (w x h): scale = min(512/300, 512/200) = 1.7067 -> 512 x 341, padded 512 x 352.
        let ms = MultiSlice {
            hu: vec![0.0; 3 * 200 * 300],
            depth: 3,
            height: 200,
            width: 300,
        };
        let n = NetworkInput::build(&ms, &InputConfig::default(), None).unwrap();
        assert_eq!(
            (n.width, n.height, n.padded_width, n.padded_height),
            (512, 341, 512, 352)
        );
        assert_eq!(n.data.len(), 3 * 352 * 512);
        let w = window(0.0);
        assert!((n.data[0] - w).abs() < 1e-4 && n.data[340 * 512 + 511] - w < 1e-4);
        assert_eq!(n.data[345 * 512], 0.0); // padding
        let b = n.to_network([10.0, 20.0, 100.0, 150.0]);
        assert!((b[2] - 100.0 * n.scale).abs() < 1e-3);
        let back = n.to_original(b);
        assert!((back[1] - 20.0).abs() < 1e-3);
        // Target spacing: 0.8 mm pixels at 1.6 mm per network pixel halve the size.
        let cfg = InputConfig {
            target_spacing_mm: Some(1.6),
            ..InputConfig::default()
        };
        let n = NetworkInput::build(&ms, &cfg, Some(0.8)).unwrap();
        assert_eq!((n.width, n.height), (150, 100));
        assert!(NetworkInput::build(&ms, &cfg, None).is_err());
    }

    #[test]
    fn scale_one_is_the_identity_of_the_resize() {
        // 512 x 512: no resize; the fast path must equal the bilinear one at scale 1.
        let (w, h) = (512, 512);
        let hu: Vec<f32> = (0..w * h)
            .map(|i| ((i * 37) % 3000) as f32 - 1024.0)
            .collect();
        let ms = MultiSlice {
            hu: hu.clone(),
            depth: 1,
            height: h,
            width: w,
        };
        let n = NetworkInput::build(&ms, &InputConfig::default(), None).unwrap();
        assert_eq!((n.width, n.height, n.scale), (512, 512, 1.0));
        let windowed: Vec<f32> = hu.iter().map(|v| window(*v)).collect();
        let mut slow = vec![0.0; w * h];
        resize_bilinear(&windowed, w, h, &mut slow, w, h, w);
        assert_eq!(n.data, slow);
    }

    #[test]
    fn from_volume_equals_mixing_then_building() {
        use crate::deeplesion::WeightRule;
        for (shape, spacing) in [
            ([9, 512, 500], 1.25),
            ([5, 80, 96], 2.5),
            ([4, 512, 512], 0.7),
        ] {
            let n = shape.iter().product::<usize>();
            let hu: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 3100) as f32 - 1030.0)
                .collect();
            let v = crate::Volume::new(hu, shape, [spacing, 0.7, 0.7]).unwrap();
            for (z, depth) in [(0, 3), (shape[0] / 2, 7), (shape[0] - 1, 5)] {
                let cfg = InputConfig::default();
                let fast = NetworkInput::from_volume(&v, z, depth, WeightRule::PerNeighbour, &cfg)
                    .unwrap();
                let ms = MultiSlice::from_volume(&v, z, depth, WeightRule::PerNeighbour).unwrap();
                let slow = NetworkInput::build(&ms, &cfg, None).unwrap();
                assert_eq!(fast, slow, "{shape:?} z {z} depth {depth}");
            }
        }
    }

    #[test]
    fn bilinear_matches_opencv_sampling() {
        // 2 -> 4 upscale of [0, 1]: positions -0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped).
        let mut dst = vec![0.0; 4];
        resize_bilinear(&[0.0, 1.0], 2, 1, &mut dst, 4, 1, 4);
        assert_eq!(dst, vec![0.0, 0.25, 0.75, 1.0]);
    }
}
