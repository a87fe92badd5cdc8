//! The reference's training augmentation (reference-detector.md section 1.4): albumentations'
//! ShiftScaleRotate (p 0.8, shift ±4 % of the side, scale U(0.8, 1.2), rotation U(-15°, 15°),
//! bicubic, reflect-101 border, boxes through their rotated corners) and mmdetection's
//! horizontal RandomFlip.
//!
//! Both act on a [`NetworkInput`]'s resized image (the valid `height x width` region of every
//! slice; the padding stays zero). The reference warps the original image before resizing; the
//! transform is defined relative to the image's size and the resize is a uniform scale, so the
//! geometry is the same and only the resampling grid differs.
//!
//! Pixel convention: pixel `i` covers `[i - 0.5, i + 0.5]`, boxes are inclusive pixel indices
//! (`x2 - x1 + 1` wide). Rotation and scale are about the image's centre `((W - 1) / 2,
//! (H - 1) / 2)`, so a 90° rotation of a square image permutes its pixels exactly (albumentations
//! versions differ here by half a pixel: some use `W / 2`).

use a3d::rng::SplitMix64;
use a3d_ct::network::NetworkInput;

/// ShiftScaleRotate's ranges, the reference's by default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShiftScaleRotate {
    /// Probability of applying it (0.8).
    pub p: f64,
    /// Shift as a fraction of the width and height, drawn from `[-shift, shift]` (0.04).
    pub shift: f64,
    /// Scale drawn from `[1 - scale, 1 + scale]` (0.2).
    pub scale: f64,
    /// Rotation in degrees drawn from `[-rotate, rotate]` (15; positive is counter-clockwise on
    /// screen, as OpenCV).
    pub rotate_deg: f64,
}

impl Default for ShiftScaleRotate {
    fn default() -> Self {
        ShiftScaleRotate {
            p: 0.8,
            shift: 0.04,
            scale: 0.2,
            rotate_deg: 15.0,
        }
    }
}

/// One drawn transform: rotation (degrees), scale and shift (fractions of the width, height).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warp {
    /// Degrees, counter-clockwise on screen.
    pub angle_deg: f64,
    /// Zoom factor.
    pub scale: f64,
    /// Horizontal shift, fraction of the width.
    pub dx: f64,
    /// Vertical shift, fraction of the height.
    pub dy: f64,
}

impl ShiftScaleRotate {
    /// Draws whether to apply, then angle, scale, dx and dy (in that order, from `rng`).
    pub fn draw(&self, rng: &mut SplitMix64) -> Option<Warp> {
        if rng.next_f64() >= self.p {
            return None;
        }
        Some(Warp {
            angle_deg: rng.uniform(-self.rotate_deg, self.rotate_deg),
            scale: rng.uniform(1.0 - self.scale, 1.0 + self.scale),
            dx: rng.uniform(-self.shift, self.shift),
            dy: rng.uniform(-self.shift, self.shift),
        })
    }
}

impl Warp {
    /// The forward map (source pixel to destination pixel) for a `width x height` image, as
    /// OpenCV's `getRotationMatrix2D` about the centre plus the shift.
    fn matrix(&self, width: usize, height: usize) -> [[f64; 3]; 2] {
        let (cx, cy) = ((width as f64 - 1.0) / 2.0, (height as f64 - 1.0) / 2.0);
        let t = self.angle_deg.to_radians();
        let (a, b) = (self.scale * t.cos(), self.scale * t.sin());
        [
            [a, b, (1.0 - a) * cx - b * cy + self.dx * width as f64],
            [-b, a, b * cx + (1.0 - a) * cy + self.dy * height as f64],
        ]
    }

    /// Warps every slice of `input` and maps `boxes` (network pixels) through their corners'
    /// enclosing box, clipped to the image. Boxes moved wholly outside are dropped; if none is
    /// left the input is not changed and `false` comes back (the reference then draws another
    /// image: the caller keeps the unwarped one).
    pub fn apply(&self, input: &mut NetworkInput, boxes: &mut Vec<[f32; 4]>) -> bool {
        let (w, h) = (input.width, input.height);
        let m = self.matrix(w, h);
        let moved: Vec<[f32; 4]> = boxes.iter().filter_map(|b| map_box(&m, b, w, h)).collect();
        if moved.is_empty() && !boxes.is_empty() {
            return false;
        }
        *boxes = moved;
        let inverse = invert(&m);
        let plane = input.padded_height * input.padded_width;
        let mut src = vec![0.0f32; w * h];
        for slice in input.data.chunks_exact_mut(plane) {
            for y in 0..h {
                let row = &slice[y * input.padded_width..][..w];
                src[y * w..][..w].copy_from_slice(row);
            }
            for y in 0..h {
                let out = &mut slice[y * input.padded_width..][..w];
                for (x, o) in out.iter_mut().enumerate() {
                    let (xf, yf) = (x as f64, y as f64);
                    let sx = inverse[0][0] * xf + inverse[0][1] * yf + inverse[0][2];
                    let sy = inverse[1][0] * xf + inverse[1][1] * yf + inverse[1][2];
                    *o = bicubic(&src, w, h, sx, sy);
                }
            }
        }
        true
    }
}

/// The box's four corners through `m`, their enclosing box clipped to `[0, w - 1] x [0, h - 1]`;
/// `None` when it lies wholly outside.
fn map_box(m: &[[f64; 3]; 2], b: &[f32; 4], w: usize, h: usize) -> Option<[f32; 4]> {
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for (x, y) in [(b[0], b[1]), (b[2], b[1]), (b[2], b[3]), (b[0], b[3])] {
        let (x, y) = (x as f64, y as f64);
        let p = [
            m[0][0] * x + m[0][1] * y + m[0][2],
            m[1][0] * x + m[1][1] * y + m[1][2],
        ];
        for k in 0..2 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    let (wm, hm) = ((w - 1) as f64, (h - 1) as f64);
    if hi[0] < 0.0 || hi[1] < 0.0 || lo[0] > wm || lo[1] > hm {
        return None;
    }
    let out = [
        lo[0].clamp(0.0, wm),
        lo[1].clamp(0.0, hm),
        hi[0].clamp(0.0, wm),
        hi[1].clamp(0.0, hm),
    ];
    Some(out.map(|v| v as f32))
}

fn invert(m: &[[f64; 3]; 2]) -> [[f64; 3]; 2] {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let (a, b, c, d) = (m[1][1] / det, -m[0][1] / det, -m[1][0] / det, m[0][0] / det);
    [
        [a, b, -(a * m[0][2] + b * m[1][2])],
        [c, d, -(c * m[0][2] + d * m[1][2])],
    ]
}

/// OpenCV's reflect-101 border (`gfedcb|abcdefgh|gfedcba`).
fn reflect101(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let i = i.rem_euclid(period);
    (if i < n as isize { i } else { period - i }) as usize
}

/// Keys' cubic kernel with OpenCV's `a = -0.75`, the weights of taps `-1..=2` at offset `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(1.0 + t), near(t), near(1.0 - t), far(2.0 - t)]
}

fn bicubic(src: &[f32], w: usize, h: usize, sx: f64, sy: f64) -> f32 {
    let (fx, fy) = (sx.floor(), sy.floor());
    let (wx, wy) = (cubic_weights(sx - fx), cubic_weights(sy - fy));
    let (x0, y0) = (fx as isize - 1, fy as isize - 1);
    let mut acc = 0.0f64;
    for (j, wyj) in wy.iter().enumerate() {
        let row = &src[reflect101(y0 + j as isize, h) * w..][..w];
        let mut r = 0.0f64;
        for (i, wxi) in wx.iter().enumerate() {
            r += wxi * row[reflect101(x0 + i as isize, w)] as f64;
        }
        acc += wyj * r;
    }
    acc as f32
}

/// The reference's RandomFlip: the resized image mirrored left-right (the padding stays on the
/// right) and boxes `x1' = W - x2 - 1`, `x2' = W - x1 - 1`.
pub fn flip_horizontal(input: &mut NetworkInput, boxes: &mut [[f32; 4]]) {
    let (w, pw) = (input.width, input.padded_width);
    for row in input.data.chunks_exact_mut(pw) {
        row[..w].reverse();
    }
    for b in boxes.iter_mut() {
        let (x1, x2) = (b[0], b[2]);
        b[0] = w as f32 - x2 - 1.0;
        b[2] = w as f32 - x1 - 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `depth` slices of `h x w` in a buffer padded to `ph x pw` (padding zero).
    fn input(
        depth: usize,
        h: usize,
        w: usize,
        ph: usize,
        pw: usize,
        f: impl Fn(usize, usize, usize) -> f32,
    ) -> NetworkInput {
        let mut data = vec![0.0f32; depth * ph * pw];
        for d in 0..depth {
            for y in 0..h {
                for x in 0..w {
                    data[(d * ph + y) * pw + x] = f(d, y, x);
                }
            }
        }
        NetworkInput::unresized(data, depth, (h, w), (ph, pw)).unwrap()
    }

    fn at(n: &NetworkInput, d: usize, y: usize, x: usize) -> f32 {
        n.data[(d * n.padded_height + y) * n.padded_width + x]
    }

    #[test]
    fn identity_leaves_everything_as_it_was() {
        let mut rng = SplitMix64::new(3);
        let vals = rng.vec_f32(2 * 13 * 11, -1000.0, 1000.0);
        let mut n = input(2, 13, 11, 16, 16, |d, y, x| vals[(d * 13 + y) * 11 + x]);
        let before = n.data.clone();
        let mut boxes = vec![[2.0f32, 3.0, 7.0, 9.0]];
        let id = Warp {
            angle_deg: 0.0,
            scale: 1.0,
            dx: 0.0,
            dy: 0.0,
        };
        assert!(id.apply(&mut n, &mut boxes));
        assert_eq!(n.data, before);
        assert_eq!(boxes, vec![[2.0, 3.0, 7.0, 9.0]]);
    }

    #[test]
    fn a_quarter_turn_permutes_pixels_and_boxes() {
        // 9 x 9 (odd, so the centre is a pixel) in a 16 x 16 buffer, three slices.
        let mut rng = SplitMix64::new(5);
        let vals = rng.vec_f32(3 * 81, 0.0, 1.0);
        let mut n = input(3, 9, 9, 16, 16, |d, y, x| vals[(d * 9 + y) * 9 + x]);
        let orig = n.clone();
        let mut boxes = vec![[1.0f32, 2.0, 4.0, 6.0]];
        let turn = Warp {
            angle_deg: 90.0,
            scale: 1.0,
            dx: 0.0,
            dy: 0.0,
        };
        assert!(turn.apply(&mut n, &mut boxes));
        // Counter-clockwise on screen: source (x, y) lands at (y, W - 1 - x).
        for d in 0..3 {
            for y in 0..9 {
                for x in 0..9 {
                    let got = at(&n, d, 8 - x, y);
                    assert!((got - at(&orig, d, y, x)).abs() < 1e-5, "{d} {y} {x}");
                }
            }
        }
        let b = boxes[0];
        for (g, e) in b.iter().zip([2.0, 4.0, 6.0, 7.0]) {
            assert!((g - e).abs() < 1e-4, "{b:?}");
        }
        // The padding is untouched.
        assert!(n
            .data
            .iter()
            .enumerate()
            .all(|(i, v)| (i % 16 < 9 && (i / 16) % 16 < 9) || *v == 0.0));
    }

    #[test]
    fn smooth_images_warp_to_the_analytic_values() {
        // A smooth pattern sampled through a random transform: the bicubic value at each
        // interior pixel equals the pattern at the inverse-mapped point to interpolation error
        // (OpenCV's a = -0.75 is exact for linear functions only: in 1D it is off by up to 1.33
        // on the x term and 0.6 on the y term; a mapping half a pixel off would be 17).
        let f = |y: f64, x: f64| (x * 0.11).sin() * 300.0 + (y * 0.09).cos() * 200.0 + x * 2.0;
        let (h, w) = (37, 45);
        let mut n = input(1, h, w, 48, 48, |_, y, x| f(y as f64, x as f64) as f32);
        let warp = Warp {
            angle_deg: 11.0,
            scale: 1.13,
            dx: 0.03,
            dy: -0.02,
        };
        let mut boxes = vec![[10.0f32, 10.0, 30.0, 25.0]];
        assert!(warp.apply(&mut n, &mut boxes));
        let inv = invert(&warp.matrix(w, h));
        let mut checked = 0;
        for y in 0..h {
            for x in 0..w {
                let sx = inv[0][0] * x as f64 + inv[0][1] * y as f64 + inv[0][2];
                let sy = inv[1][0] * x as f64 + inv[1][1] * y as f64 + inv[1][2];
                if sx < 2.0 || sy < 2.0 || sx > (w - 3) as f64 || sy > (h - 3) as f64 {
                    continue;
                }
                let want = f(sy, sx);
                let got = at(&n, 0, y, x) as f64;
                assert!((got - want).abs() < 2.5, "({y}, {x}): {got} vs {want}");
                checked += 1;
            }
        }
        assert!(checked > 1000);
    }

    #[test]
    fn boxes_follow_a_bright_square() {
        // A bright square; after the warp every pixel above half its value lies inside the
        // mapped box, and the box is no larger than the rotated corners' enclosing box allows.
        let (h, w) = (64, 64);
        let mut n = input(1, h, w, 64, 64, |_, y, x| {
            if (20..=35).contains(&x) && (24..=33).contains(&y) {
                1000.0
            } else {
                0.0
            }
        });
        let warp = Warp {
            angle_deg: -13.0,
            scale: 0.87,
            dx: -0.04,
            dy: 0.035,
        };
        let mut boxes = vec![[20.0f32, 24.0, 35.0, 33.0]];
        assert!(warp.apply(&mut n, &mut boxes));
        let b = boxes[0];
        let mut any = false;
        for y in 0..h {
            for x in 0..w {
                if at(&n, 0, y, x) > 500.0 {
                    any = true;
                    let (xf, yf) = (x as f32, y as f32);
                    assert!(
                        xf >= b[0] - 1.0
                            && xf <= b[2] + 1.0
                            && yf >= b[1] - 1.0
                            && yf <= b[3] + 1.0,
                        "({y}, {x}) outside {b:?}"
                    );
                }
            }
        }
        assert!(any);
    }

    #[test]
    fn borders_reflect_101_and_lost_boxes_drop() {
        assert_eq!(
            (0..7).map(|i| reflect101(i - 3, 4)).collect::<Vec<_>>(),
            [3, 2, 1, 0, 1, 2, 3]
        );
        assert_eq!(reflect101(4, 4), 2);
        assert_eq!(reflect101(-5, 1), 0);
        // Shifted right by a quarter: the left columns mirror column 1.., a box near the right
        // edge leaves, one in the middle stays; with only the leaving one nothing changes.
        let mut n = input(1, 8, 8, 8, 8, |_, _, x| x as f32);
        let shift = Warp {
            angle_deg: 0.0,
            scale: 1.0,
            dx: 0.25,
            dy: 0.0,
        };
        let mut lost = vec![[6.0f32, 1.0, 7.0, 3.0]];
        assert!(!shift.apply(&mut n, &mut lost));
        assert_eq!(lost.len(), 1);
        let mut boxes = vec![[6.0f32, 1.0, 7.0, 3.0], [2.0, 2.0, 3.0, 4.0]];
        assert!(shift.apply(&mut n, &mut boxes));
        assert_eq!(boxes, vec![[4.0, 2.0, 5.0, 4.0]]);
        let row: Vec<f32> = (0..8).map(|x| at(&n, 0, 0, x)).collect();
        assert_eq!(row, [2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn draws_stay_in_range_and_apply_at_rate_p() {
        let ssr = ShiftScaleRotate::default();
        let mut rng = SplitMix64::new(9);
        let mut applied = 0;
        for _ in 0..4000 {
            if let Some(w) = ssr.draw(&mut rng) {
                applied += 1;
                assert!(w.angle_deg.abs() <= 15.0 && (0.8..=1.2).contains(&w.scale));
                assert!(w.dx.abs() <= 0.04 && w.dy.abs() <= 0.04);
            }
        }
        assert!((3050..3350).contains(&applied), "{applied}");
    }

    #[test]
    fn flip_mirrors_the_image_and_the_boxes() {
        let mut n = input(2, 3, 5, 3, 8, |d, y, x| (d * 24 + y * 8 + x) as f32);
        let data = n.data.clone();
        let mut boxes = [[0.0f32, 0.0, 1.0, 2.0]];
        flip_horizontal(&mut n, &mut boxes);
        assert_eq!(boxes[0], [3.0, 0.0, 4.0, 2.0]);
        assert_eq!(&n.data[..8], &[4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        flip_horizontal(&mut n, &mut boxes);
        assert_eq!(n.data, data);
        assert_eq!(boxes[0], [0.0, 0.0, 1.0, 2.0]);
    }
}
